// Run: its details, every attempt as a Gantt bar (one segment per phase), per-rank logs with
// follow and "first failed rank", its recorded events, the submitted YAML, and stop and restart
// for its owner and admins. What the page shows is refreshed while the page is open.

import { gql, subscribe } from "./api.js";
import { dump } from "./vendor/js-yaml.mjs";
import { duration, errorBox, every, h, replace, row, s, status, table, when } from "./ui.js";

const REFRESH_MS = 2000;
const QUERY = `query Run($selection: JSON!, $name: String!) {
  runViews(selection: $selection)
  runHistory(name: $name, action: "EVENTS", allUsers: true)
}`;
const LOGS = `subscription Logs($input: GetRunLogsInput!) {
  getRunLogsV2(getRunLogsInput: $input) { chunk endOffset }
}`;
const MAX_LOG_CHARS = 2_000_000;

export async function render(root, me, { name }) {
  const terminal = new Set(me.statuses.filter((s) => s.terminal).map((s) => s.name));
  const header = h("div", { class: "run-header" });
  const problem = h("div");
  const details = h("section", { id: "details" });
  const timeline = h("section", { id: "timeline" });
  const attemptsBox = h("section", { id: "attempts" });
  const logs = h("section", { id: "logs" });
  const eventsBox = h("section", { id: "events" });
  const yaml = h("section", { id: "yaml" });
  replace(root, header, problem, details, timeline, attemptsBox, logs, eventsBox, yaml);

  let view = null;
  let shown = "";
  let follow = null;

  async function load() {
    const data = await gql(QUERY, { selection: { names: [name], all_users: true, limit: 1 }, name });
    return { view: data.runViews[0], records: data.runHistory };
  }

  async function refresh() {
    let found;
    try {
      found = await load();
    } catch (error) {
      if (error.code === 401) window.dispatchEvent(new Event("runplane:unauthenticated"));
      replace(problem, errorBox(error));
      return;
    }
    replace(problem);
    const fingerprint = JSON.stringify(found);
    if (fingerprint === shown) {
      drawTimeline(timeline, view); // open phases grow with the clock
      return;
    }
    const first = view === null;
    shown = fingerprint;
    view = found.view;
    drawHeader();
    drawDetails(details, view.row);
    drawTimeline(timeline, view);
    drawAttempts(attemptsBox, view.attempts);
    drawEvents(eventsBox, found.records);
    if (first) {
      replace(yaml, h("h2", {}, "Submitted YAML"), h("pre", { class: "yaml" }, dump(view.row.submitted_config, { lineWidth: 100 })));
      drawLogs();
    }
  }

  function drawHeader() {
    const run = view.row;
    const mayAct = run.created_by === me.user || me.role === "admin";
    const entity = run.created_by === me.user ? null : { organizationIds: ["runplane"] };
    const act = (label, field) =>
      confirming(label, async () => {
        const data = { filters: { name: { in: [run.name] } }, entity };
        try {
          await gql(`mutation Act($data: GetRunsInput!) { ${field}(getRunsData: $data) { name status } }`, { data });
          shown = "";
          await refresh();
        } catch (error) {
          replace(problem, errorBox(error));
        }
      });
    const buttons = !mayAct
      ? []
      : terminal.has(run.status)
        ? [act("Restart", "startRuns")]
        : [act("Stop", "stopRuns")];
    replace(header, h("h1", {}, run.name, " ", status(run.status)), h("div", { class: "actions" }, buttons));
  }

  function drawLogs() {
    const attemptSelect = h("select", { name: "attempt", "aria-label": "Attempt" });
    const rankSelect = h("select", { name: "rank", "aria-label": "Node rank" });
    const failed = h("input", { type: "checkbox", name: "failed", id: "log-failed" });
    const following = h("input", { type: "checkbox", name: "follow", id: "log-follow", checked: true });
    const output = h("pre", { class: "log", id: "log-output" });
    const note = h("p", { class: "note" });
    const attempts = view.attempts;
    for (const attempt of attempts) attemptSelect.append(h("option", { value: attempt.index }, `Attempt ${attempt.index}`));
    attemptSelect.value = String(attempts.length ? attempts[attempts.length - 1].index : 0);
    const ranks = () => {
      const attempt = view.attempts.find((a) => String(a.index) === attemptSelect.value);
      replace(rankSelect, (attempt ? attempt.ranks : []).map((r) => h("option", { value: r.rank }, `Rank ${r.rank} (${r.node})`)));
      if (!rankSelect.options.length) rankSelect.append(h("option", { value: 0 }, "Rank 0"));
    };
    ranks();
    const start = () => {
      if (follow) follow();
      output.textContent = "";
      const decoder = new TextDecoder();
      const input = { name: view.row.name, follow: following.checked, attemptIndex: Number(attemptSelect.value) };
      if (failed.checked) input.failed = true;
      else input.nodeRank = Number(rankSelect.value);
      rankSelect.disabled = failed.checked;
      note.textContent = following.checked ? "Following…" : "";
      follow = subscribe(LOGS, { input }, {
        next: (data) => {
          const bytes = Uint8Array.from(atob(data.getRunLogsV2.chunk), (c) => c.charCodeAt(0));
          output.append(decoder.decode(bytes, { stream: true }));
          if (output.textContent.length > MAX_LOG_CHARS) output.textContent = output.textContent.slice(-MAX_LOG_CHARS);
          output.scrollTop = output.scrollHeight;
        },
        error: (error) => {
          note.textContent = error.message;
        },
        complete: () => {
          note.textContent = "End of output.";
        },
      });
    };
    attemptSelect.addEventListener("change", () => {
      ranks();
      start();
    });
    for (const control of [rankSelect, failed, following]) control.addEventListener("change", start);
    replace(
      logs,
      h("h2", {}, "Logs"),
      h(
        "div",
        { class: "log-controls" },
        attemptSelect,
        rankSelect,
        h("label", { for: "log-failed" }, failed, " First failed rank"),
        h("label", { for: "log-follow" }, following, " Follow"),
      ),
      note,
      output,
    );
    start();
  }

  await refresh();
  const stopPolling = every(REFRESH_MS, refresh);
  return () => {
    stopPolling();
    if (follow) follow();
  };
}

// A button that asks for a second click within 5 s before it acts.
function confirming(label, action) {
  let armed = null;
  const button = h("button", {
    class: `action action-${label.toLowerCase()}`,
    onclick: async () => {
      if (!armed) {
        button.textContent = `Confirm ${label.toLowerCase()}`;
        armed = setTimeout(() => {
          armed = null;
          button.textContent = label;
        }, 5000);
        return;
      }
      clearTimeout(armed);
      armed = null;
      button.disabled = true;
      await action();
    },
  }, label);
  return button;
}

function drawDetails(root, run) {
  const item = (term, value) => [h("dt", {}, term), h("dd", {}, value === null || value === undefined || value === "" ? "-" : String(value))];
  replace(
    root,
    h(
      "dl",
      { class: "details" },
      item("User", run.created_by),
      item("Created", when(run.created_at)),
      item("Cluster", run.cluster),
      item("GPUs", `${run.gpus}${run.gpu_type ? ` x ${run.gpu_type}` : ""} on ${run.node_count} node(s)`),
      item("Image", run.image),
      item("Priority", run.priority),
      item("Preemptible", run.preemptible ? "yes" : "no"),
      item("Retries", `${run.max_retries}${run.retry_on_system_failure ? ", and on system failure" : ""}`),
      item("Resumptions", Math.max(run.resumption_count - 1, 0)),
    ),
  );
}

// One bar per attempt, one segment per phase; an open phase runs to now.
function drawTimeline(root, view) {
  const attempts = view.attempts;
  const now = Date.now();
  const spans = attempts.flatMap((a) => a.phases.map((p) => [p.entered_at, p.left_at ?? (a.ended_at ?? now)]));
  replace(root, h("h2", {}, "Timeline"));
  if (!spans.length) {
    root.append(h("p", { class: "empty" }, "No attempt yet."));
    return;
  }
  const start = Math.min(...spans.map((span) => span[0]));
  const end = Math.max(start + 1000, ...spans.map((span) => span[1]));
  const width = 960;
  const left = 90;
  const right = 220;
  const bar = 22;
  const gap = 12;
  const top = 24;
  const height = top + attempts.length * (bar + gap) + 4;
  const x = (t) => left + ((t - start) / (end - start)) * (width - left - right);
  const svg = s("svg", { viewBox: `0 0 ${width} ${height}`, width: "100%", role: "img", "aria-label": "Attempts timeline", class: "timeline" });
  for (let i = 0; i <= 4; i++) {
    const t = start + ((end - start) * i) / 4;
    svg.append(
      s("line", { x1: x(t), x2: x(t), y1: top - 6, y2: height, class: "tick" }),
      s("text", { x: x(t), y: 12, class: "tick-label", "text-anchor": i === 0 ? "start" : i === 4 ? "end" : "middle" }, when(t).slice(11)),
    );
  }
  attempts.forEach((attempt, i) => {
    const y = top + i * (bar + gap);
    const group = s("g", { class: "attempt", "data-attempt": attempt.index });
    group.append(s("text", { x: 0, y: y + bar * 0.7, class: "attempt-label" }, `Attempt ${attempt.index}`));
    for (const phase of attempt.phases) {
      const from = phase.entered_at;
      const to = phase.left_at ?? (attempt.ended_at ?? now);
      const rect = s("rect", {
        x: x(from),
        y,
        width: Math.max(x(to) - x(from), 1.5),
        height: bar,
        class: `seg seg-${phase.status.toLowerCase()}`,
        "data-status": phase.status,
      });
      rect.append(s("title", {}, `${phase.status}: ${when(from)} for ${duration(to - from)}`));
      group.append(rect);
    }
    const last = attempt.phases[attempt.phases.length - 1];
    const to = last ? last.left_at ?? (attempt.ended_at ?? now) : start;
    group.append(
      s("text", { x: x(to) + 6, y: y + bar * 0.7, class: "attempt-reason" }, `${attempt.status}${attempt.reason_text ? `: ${attempt.reason_text}` : ""}`),
    );
    svg.append(group);
  });
  const legend = h(
    "div",
    { class: "legend" },
    [...new Set(attempts.flatMap((a) => a.phases.map((p) => p.status)))].map((name) => h("span", { class: `key seg-${name.toLowerCase()}` }, name)),
  );
  root.append(svg, legend);
}

function drawAttempts(root, attempts) {
  const rows = attempts.map((a) =>
    row(
      String(a.index),
      a.opened_how + (a.retry_cause ? ` (${a.retry_cause})` : ""),
      status(a.status),
      when(a.started_at),
      when(a.ended_at),
      a.ranks.map((r) => `${r.rank}@${r.node}`).join(" "),
      a.reason_text || "",
    ),
  );
  const human = attempts.flatMap((a) => a.events).sort((x, y) => x[0] - y[0] || x[1] - y[1]);
  replace(
    root,
    h("h2", {}, "Attempts"),
    table(["Attempt", "How", "Status", "Started", "Ended", "Ranks", "Reason"], rows),
    h("h3", {}, "What happened"),
    table(["Time", "Attempt", "Event", "By"], human.map(([time, attempt, text, actor]) => row(when(time), String(attempt), text, actor))),
  );
}

function drawEvents(root, records) {
  const rows = records.map((record) => {
    let body = {};
    try {
      body = JSON.parse(record.body);
    } catch {
      body = {};
    }
    const time = body.time || Number(record.position.split("-")[0]); // the log stamps its entries
    return row(record.position, body.type || record.kind, when(time), body.actor || "", String(body.attempt ?? 0) /* omitted when 0 */);
  });
  replace(root, h("h2", {}, "Events"), table(["Position", "Event", "Time", "Actor", "Attempt"], rows, { class: "events" }));
}
