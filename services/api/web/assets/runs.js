// Runs: a live page of runs, newest first, filtered on the server (runViews), 50 at a time;
// waiting runs show their place in their cluster's queue and why (utilization).

import { gql } from "./api.js";
import { age, errorBox, every, h, replace, row, runLink, status, table } from "./ui.js";

const PAGE = 50;
const REFRESH_MS = 2000;
const QUERY = `query Runs($selection: JSON!) { runViews(selection: $selection) utilization }`;

// Filters and the page stack outlive a visit to a run, so "back" finds the list as it was.
const state = { name: "", status: "", cluster: "", user: "", cursors: [null] };

export async function render(root, me) {
  const admin = me.role === "admin";
  const body = h("div", { id: "runs" });
  const pager = h("div", { class: "pager" });
  const problem = h("div");
  const input = (key, label, attrs = {}) =>
    h("input", {
      name: key,
      value: state[key],
      placeholder: label,
      "aria-label": label,
      ...attrs,
      onchange: (event) => {
        state[key] = event.target.value.trim();
        state.cursors = [null];
        refresh();
      },
    });
  const statuses = h(
    "select",
    {
      name: "status",
      "aria-label": "Status",
      onchange: (event) => {
        state.status = event.target.value;
        state.cursors = [null];
        refresh();
      },
    },
    h("option", { value: "" }, "Any status"),
    me.statuses.map((s) => h("option", { value: s.name, selected: s.name === state.status }, s.name)),
  );
  const filters = h(
    "form",
    { class: "filters", onsubmit: (event) => event.preventDefault() },
    input("name", "Name (glob: *bert*)"),
    statuses,
    input("cluster", "Cluster"),
    admin ? input("user", "User (everyone when empty)") : null,
  );
  replace(root, h("h1", {}, "Runs"), filters, problem, body, pager);

  let latest = 0;
  async function refresh() {
    const asked = ++latest;
    const cursor = state.cursors[state.cursors.length - 1];
    const selection = {
      names: state.name ? [state.name.includes("*") || state.name.includes("?") ? state.name : `*${state.name}*`] : [],
      statuses: state.status ? [state.status] : null,
      cluster: state.cluster || null,
      user: admin ? state.user || null : null,
      all_users: admin && !state.user,
      limit: PAGE + 1,
      cursor,
    };
    let data;
    try {
      data = await gql(QUERY, { selection });
    } catch (error) {
      if (error.code === 401) window.dispatchEvent(new Event("runplane:unauthenticated"));
      replace(problem, errorBox(error));
      return;
    }
    if (asked !== latest) return; // a newer refresh went out meanwhile
    replace(problem);
    const queued = new Map();
    for (const cluster of data.utilization) {
      for (const waiting of cluster.queued_runs) queued.set(waiting.run.run_id, { ...waiting, cluster: cluster.cluster });
    }
    const views = data.runViews.slice(0, PAGE);
    const rows = views.map(({ row: run, attempts }) => {
      const place = queued.get(run.run_uid);
      const latest = attempts[attempts.length - 1];
      const why = place
        ? `#${place.position} in ${place.cluster}${place.run.reason ? `: ${place.run.reason}` : ""}`
        : (latest && latest.reason_text) || "";
      const cells = [
        runLink(run.name),
        run.created_by,
        status(run.status),
        String(Math.max(attempts.length - 1, 0)),
        `${run.gpus}${run.gpu_type ? ` x ${run.gpu_type}` : ""}`,
        run.cluster,
        age(run.created_at),
        why,
      ];
      if (!admin) cells.splice(1, 1);
      return row(...cells);
    });
    const headers = ["Name", "User", "Status", "Resumption", "GPUs", "Cluster", "Age", "Queue / reason"];
    if (!admin) headers.splice(1, 1);
    replace(body, table(headers, rows, { class: "runs" }));
    const more = data.runViews.length > PAGE;
    const last = views[views.length - 1];
    replace(
      pager,
      h("button", { disabled: state.cursors.length === 1, onclick: () => { state.cursors.pop(); refresh(); } }, "Newer"),
      h("span", {}, `Page ${state.cursors.length}`),
      h("button", {
        disabled: !more,
        onclick: () => {
          state.cursors.push(`${last.row.created_at}:${last.row.run_uid}`);
          refresh();
        },
      }, "Older"),
    );
  }

  await refresh();
  return every(REFRESH_MS, refresh);
}
