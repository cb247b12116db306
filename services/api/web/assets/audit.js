// Audit (admins): who did what to which run, newest last, filtered by actor, run and time:
// what `mcli audit` shows.

import { gql } from "./api.js";
import { errorBox, h, replace, row, runLink, table, when } from "./ui.js";

const QUERY = `query Audit($user: String, $run: String, $since: Float, $until: Float, $limit: Int) {
  audit(user: $user, run: $run, since: $since, until: $until, limit: $limit)
}`;
const LIMIT = 500;

export async function render(root, _me, { params }) {
  const field = (name, label, type = "text") =>
    h("input", { name, type, value: params.get(name) || "", placeholder: label, "aria-label": label });
  const actor = field("user", "Actor");
  const run = field("run", "Run");
  const since = field("since", "Since", "datetime-local");
  const until = field("until", "Until", "datetime-local");
  const body = h("div", { id: "audit" });
  const form = h(
    "form",
    { class: "filters", onsubmit: (event) => { event.preventDefault(); load(); } },
    actor,
    run,
    h("label", {}, "From ", since),
    h("label", {}, "to ", until),
    h("button", { type: "submit" }, "Filter"),
  );
  replace(root, h("h1", {}, "Audit"), form, body);

  async function load() {
    const moment = (input) => (input.value ? new Date(input.value).getTime() : null);
    let entries;
    try {
      entries = (
        await gql(QUERY, {
          user: actor.value.trim() || null,
          run: run.value.trim() || null,
          since: moment(since),
          until: moment(until),
          limit: LIMIT,
        })
      ).audit;
    } catch (error) {
      replace(body, errorBox(error));
      return;
    }
    const rows = entries.map((entry) =>
      row(
        when(entry.time),
        entry.via ? `${entry.actor} (${entry.via})` : entry.actor,
        entry.action,
        entry.run_name ? runLink(entry.run_name) : entry.node || entry.user || "",
        entry.attempt === undefined || entry.attempt === null ? "" : String(entry.attempt),
        entry.detail || "",
      ),
    );
    replace(
      body,
      table(["Time", "Actor", "Action", "Run", "Resumption", "Detail"], rows, { class: "audit" }),
      entries.length === LIMIT ? h("p", { class: "note" }, `The first ${LIMIT} entries: narrow the filters to see others.`) : null,
    );
  }

  await load();
  return () => {};
}
