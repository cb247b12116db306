// Utilization: per cluster, its GPUs by instance type, the runs holding them and the queue;
// for admins, every node with its GPUs and the run that holds each one.

import { gql } from "./api.js";
import { age, errorBox, every, h, replace, row, runLink, table } from "./ui.js";

const REFRESH_MS = 3000;

export async function render(root, me) {
  const admin = me.role === "admin";
  const holding = me.statuses.filter((s) => s.holdsGpus).map((s) => s.name);
  const query = admin
    ? `query Util($active: JSON!) { utilization nodes runViews(selection: $active) }`
    : `query Util { utilization }`;
  const variables = admin ? { active: { statuses: holding, all_users: true, limit: null } } : {};
  const body = h("div", { id: "utilization" });
  replace(root, h("h1", {}, "Utilization"), body);

  async function refresh() {
    let data;
    try {
      data = await gql(query, variables);
    } catch (error) {
      if (error.code === 401) window.dispatchEvent(new Event("runplane:unauthenticated"));
      replace(body, errorBox(error));
      return;
    }
    const sections = data.utilization.map((cluster) =>
      h(
        "section",
        { class: "cluster", "data-cluster": cluster.cluster },
        h("h2", {}, cluster.cluster),
        table(
          ["Instance", "GPU type", "Nodes", "GPUs", "Used", "Available", "Cordoned", "Failed"],
          cluster.instances.map((i) =>
            row(i.name, i.gpu_type || "-", String(i.nodes), String(i.gpus_total), String(i.gpus_used), String(i.gpus_available), String(i.gpus_cordoned), String(i.gpus_failed)),
          ),
        ),
        h("h3", {}, "Active runs"),
        table(
          ["Run", "User", "GPUs", "Priority", "Running for"],
          cluster.active_runs.map((r) => row(runLink(r.run_name), r.user, String(r.gpus), r.priority, age(r.since))),
        ),
        h("h3", {}, "Queue"),
        table(
          ["#", "Run", "User", "GPUs", "Priority", "Waiting for", "Why"],
          cluster.queued_runs.map((q) =>
            row(String(q.position), runLink(q.run.run_name), q.run.user, String(q.run.gpus), q.run.priority, age(q.run.since), q.run.reason),
          ),
        ),
      ),
    );
    const nodes = admin ? nodeGrid(data.nodes, data.runViews) : null;
    replace(body, sections.length ? sections : h("p", { class: "empty" }, "No nodes have registered yet."), nodes);
  }

  await refresh();
  return every(REFRESH_MS, refresh);
}

function nodeGrid(nodes, active) {
  const holder = new Map(); // "node/gpu" -> run name
  for (const { row: run, attempts } of active) {
    const latest = attempts[attempts.length - 1];
    if (!latest) continue;
    for (const rank of latest.ranks) for (const gpu of rank.gpus) holder.set(`${rank.node}/${gpu}`, run.name);
  }
  return h(
    "section",
    { id: "nodes" },
    h("h2", {}, "Nodes"),
    table(
      ["Node", "Cluster", "State", "Service", "GPUs"],
      nodes.map((node) =>
        row(
          node.name,
          node.cluster,
          node.state,
          node.service + (node.reason ? `: ${node.reason}` : ""),
          h(
            "div",
            { class: "gpus" },
            Array.from({ length: node.gpus }, (_, gpu) => {
              const run = holder.get(`${node.name}/${gpu}`);
              return h(
                "span",
                { class: run ? "gpu held" : "gpu", title: run ? `GPU ${gpu}: ${run}` : `GPU ${gpu}: free`, "data-gpu": gpu },
                run ? runLink(run) : String(gpu),
              );
            }),
          ),
        ),
      ),
    ),
  );
}
