// Reading worklist: open studies, most urgent first, with AI flags and SLA.
import { get } from "../api.js";
import { badge, fill, h, pageHead, panel, phiHidden, when } from "../dom.js";
import { sortableTable } from "../sortable.js";

function aiFlag(item) {
  if (item.ai_critical) return badge("AI critical", "err");
  if (item.ai_score !== null && item.ai_score !== undefined) return badge(`AI ${item.ai_score.toFixed(2)}`, "info");
  return h("span", { class: "muted", text: "—" });
}

function findings(item) {
  const names = Object.keys(item.ai_findings || {});
  return names.length ? names.join(", ") : "—";
}

function sla(item) {
  if (!item.sla_due_at) return "—";
  const overdue = new Date(item.sla_due_at).getTime() < Date.now();
  return overdue ? h("span", { class: "error-text", text: `${when(item.sla_due_at)} (overdue)` }) : when(item.sla_due_at);
}

function priority(item) {
  const text = item.order_priority || "—";
  return badge(text, text === "STAT" ? "err" : text === "URGENT" || text === "ASAP" || text === "HIGH" ? "warn" : "idle");
}

function columns(phi) {
  return [
    { label: "Score", value: (i) => i.priority_score, render: (i) => i.priority_score.toFixed(1), cls: "num" },
    { label: "Order priority", value: (i) => i.order_priority, render: priority },
    { label: "AI", value: (i) => (i.ai_critical ? 2 : 0) + (i.ai_score ?? 0), render: aiFlag },
    { label: "AI findings", value: findings },
    { label: "Modality", value: (i) => i.modality },
    { label: "Body part", value: (i) => i.body_part },
    { label: "Description", value: (i) => i.description },
    { label: "Accession", value: (i) => i.accession_number },
    { label: "Patient ID", value: (i) => (phi ? i.patient_id : null), render: phi ? null : () => phiHidden() },
    { label: "Received", value: (i) => i.received_at, render: (i) => when(i.received_at), cls: "nowrap" },
    { label: "SLA due", value: (i) => i.sla_due_at, render: sla, cls: "nowrap" },
    { label: "Status", value: (i) => i.status, render: (i) => badge(i.status) },
    { label: "Assigned to", value: (i) => i.assigned_to },
    { label: "Subspecialty", value: (i) => i.subspecialty },
  ];
}

export async function render(root, _route, app) {
  const body = h("div", {});
  const load = async () => {
    const items = await get("/api/reading-worklist?limit=500");
    fill(body, panel(`Open studies (${items.length})`, sortableTable(columns(app.session.can_view_phi), items, {
      sortBy: 0, desc: true, empty: "Nothing to read.", rowClass: (i) => (i.ai_critical ? "row-critical" : null),
    })));
  };
  const refresh = h("button", { class: "btn btn-small", type: "button", on: { click: load } }, "Refresh");
  root.append(pageHead("Reading worklist", "Open studies, most urgent first (AI critical findings raise priority).", refresh), body);
  await load();
}
