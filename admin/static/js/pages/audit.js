// Audit log: routing, AI and worklist decisions (never patient data), filterable.
import { get, query } from "../api.js";
import { badge, fill, h, pageHead, panel, show, table, when } from "../dom.js";

const KINDS = ["", "routed", "ai_requested", "ai_result", "ai_timeout", "worklist_added",
  "worklist_reprioritized", "worklist_untouched_shadow"];

function filterForm(params, app) {
  const input = (name, label) => h("label", {}, label, h("input", { name, value: params.get(name) || "" }));
  const kind = h("select", { name: "kind" }, KINDS.map((k) => h("option", {
    value: k, text: k || "Any kind", selected: (params.get("kind") || "") === k })));
  const form = h("form", { class: "toolbar" },
    h("label", {}, "Kind", kind), input("study", "Study Instance UID"), input("model", "AI model"),
    h("button", { class: "btn btn-primary", type: "submit" }, "Filter"),
    h("a", { class: "btn", href: "#/audit" }, "Clear"));
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const next = new URLSearchParams();
    for (const [key, value] of new FormData(form)) if (value) next.set(key, String(value));
    app.go(`#/audit?${next}`);
  });
  return form;
}

function detail(event) {
  const entries = Object.entries(event.detail || {});
  if (!entries.length) return "—";
  return h("code", { text: entries.map(([k, v]) => `${k}=${typeof v === "object" ? JSON.stringify(v) : v}`).join("  ") });
}

export async function render(root, route, app) {
  const params = route.params;
  root.append(pageHead("Audit log", "Routing, AI and worklist decisions, newest first."),
    panel("Filter", filterForm(params, app)));
  const filters = { kind: params.get("kind"), study: params.get("study"), model: params.get("model"), limit: 500 };
  const events = await get(`/api/audit${query(filters)}`);
  const rows = events.map((e) => [
    { cls: "nowrap", value: when(e.at) }, badge(e.kind, "info"), show(e.channel), show(e.destination),
    h("span", { class: "mono", text: show(e.study_instance_uid) }), show(e.accession_number), show(e.rule),
    e.model ? `${e.model}${e.model_version ? ` ${e.model_version}` : ""}` : "—", detail(e),
  ]);
  root.append(fill(h("div", {}), panel(`Events (${events.length})`, table([{ label: "At" }, { label: "Kind" },
    { label: "Channel" }, { label: "Destination" }, { label: "Study" }, { label: "Accession" },
    { label: "Rule" }, { label: "Model" }, { label: "Detail" }], rows, "No audit events."))));
}
