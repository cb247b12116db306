// Billing (admins): GPU-hours by user, cluster, GPU type, run and day over a date range, as
// charts and tables, each downloadable as CSV: the rows of `mcli billing --output csv`,
// made by the same code on the server (projections.billing.Report.rows).

import { gql } from "./api.js";
import { download, csv, errorBox, h, replace, row, s, table } from "./ui.js";

const DIMENSIONS = [
  ["user", "User"],
  ["cluster", "Cluster"],
  ["gpu_type", "GPU type"],
  ["run", "Run"],
  ["day", "Day"],
];
const QUERY = `query Billing($since: Float, $until: Float, $now: Float!) {
  ${DIMENSIONS.map(([by]) => `${by}: billing(by: "${by}", since: $since, until: $until, now: $now)`).join("\n  ")}
}`;
const CHART_LINES = 15;

function day(date) {
  const pad = (n) => String(n).padStart(2, "0");
  return `${date.getFullYear()}-${pad(date.getMonth() + 1)}-${pad(date.getDate())}`;
}

export async function render(root) {
  const today = new Date();
  const from = h("input", { type: "date", name: "from", "aria-label": "From", value: day(new Date(today.getFullYear(), today.getMonth(), 1)) });
  const to = h("input", { type: "date", name: "to", "aria-label": "To", value: day(today) });
  const body = h("div", { id: "billing" });
  const form = h(
    "form",
    { class: "filters", onsubmit: (event) => { event.preventDefault(); load(); } },
    h("label", {}, "From ", from),
    h("label", {}, "to ", to),
    h("button", { type: "submit" }, "Show"),
  );
  replace(root, h("h1", {}, "Billing"), form, body);

  async function load() {
    const since = from.value ? new Date(`${from.value}T00:00:00`).getTime() : null;
    const until = to.value ? new Date(`${to.value}T00:00:00`).getTime() + 86_400_000 : null;
    let data;
    try {
      data = await gql(QUERY, { since, until, now: Date.now() });
    } catch (error) {
      replace(body, errorBox(error));
      return;
    }
    const range = `${from.value || "start"}_${to.value || "now"}`;
    replace(
      body,
      h("p", { class: "total", id: "billing-total" }, `Total: ${data.user.total.gpu_hours} GPU-hours${data.user.total.open ? " *" : ""}`),
      data.user.total.open ? h("p", { class: "note" }, "* includes runs still holding GPUs, counted up to now") : null,
      DIMENSIONS.map(([by, title]) => section(by, title, data[by], range)),
    );
  }

  await load();
  return () => {};
}

function section(by, title, answer, range) {
  const rows = answer.rows;
  const fields = rows.length ? Object.keys(rows[0]) : [by, "gpu_hours"];
  const save = h(
    "button",
    { class: "link", onclick: () => download(`runplane-billing-${by}-${range}.csv`, csv([fields, ...rows.map((r) => fields.map((f) => r[f]))])) },
    "Download CSV",
  );
  const priced = rows.some((r) => r.cost !== null);
  // One line: the group's name, then its GPU-hours, cost (when any line is priced) and GPU util.
  const line = (name, r) =>
    row(name, `${r.gpu_hours}${r.open ? " *" : ""}`, ...(priced ? [r.cost ?? "-"] : []), r.gpu_utilization === null ? "-" : `${r.gpu_utilization}%`);
  const lines = [...rows.map((r) => line(r[by], r)), line(h("strong", {}, "TOTAL"), answer.total)];
  const headers = [title, "GPU-hours", ...(priced ? ["Cost"] : []), "GPU util"];
  return h(
    "section",
    { class: "billing", "data-by": by },
    h("h2", {}, `By ${title.toLowerCase()}`, " ", save),
    chart(rows, by),
    table(headers, lines, { class: "billing-table" }),
  );
}

// Horizontal bars of the largest lines (by day: in date order).
function chart(rows, by) {
  const chosen = by === "day" ? rows.slice(-CHART_LINES) : [...rows].sort((a, b) => b.gpu_ms - a.gpu_ms).slice(0, CHART_LINES);
  if (!chosen.length) return h("p", { class: "empty" }, "No GPU usage in this range.");
  const most = Math.max(...chosen.map((r) => r.gpu_ms), 1);
  const width = 720;
  const label = 200;
  const bar = 18;
  const svg = s("svg", { viewBox: `0 0 ${width} ${chosen.length * (bar + 6)}`, width: "100%", class: "chart", role: "img", "aria-label": `GPU-hours by ${by}` });
  chosen.forEach((r, i) => {
    const y = i * (bar + 6);
    const length = ((width - label - 90) * r.gpu_ms) / most;
    svg.append(
      s("text", { x: label - 8, y: y + bar * 0.75, "text-anchor": "end", class: "chart-label" }, String(r[by]).slice(0, 28)),
      s("rect", { x: label, y, width: Math.max(length, 1), height: bar, class: "chart-bar" }, s("title", {}, `${r[by]}: ${r.gpu_hours} GPU-hours`)),
      s("text", { x: label + length + 6, y: y + bar * 0.75, class: "chart-value" }, r.gpu_hours),
    );
  });
  return svg;
}
