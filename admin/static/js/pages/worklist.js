// Modality Worklist: scheduled procedure steps, sortable, with priorities.
import { get, query } from "../api.js";
import { badge, fill, h, pageHead, panel, phiHidden } from "../dom.js";
import { sortableTable } from "../sortable.js";

/** A DICOM JSON value (first value; PN as its alphabetic form), looking one sequence level deep. */
function dicom(attrs, tag, sequence) {
  let element = attrs?.[tag];
  if (!element && sequence) element = attrs?.[sequence]?.Value?.[0]?.[tag];
  const value = element?.Value?.[0];
  if (value && typeof value === "object") return value.Alphabetic ?? null;
  return value ?? null;
}

const SPS = "00400100";

function when(item) {
  const date = item.sps_start_date || "";
  const time = (item.sps_start_time || "").slice(0, 4);
  if (!date) return "";
  return `${date.slice(0, 4)}-${date.slice(4, 6)}-${date.slice(6, 8)}${time ? ` ${time.slice(0, 2)}:${time.slice(2, 4)}` : ""}`;
}

const PRIORITY_RANK = { STAT: 0, HIGH: 1, ROUTINE: 2, MEDIUM: 2, LOW: 3 };

function priority(item) {
  return dicom(item.attributes, "00401003") || "";
}

function columns(phi) {
  const hidden = () => phiHidden();
  return [
    { label: "Scheduled", value: when, cls: "nowrap" },
    { label: "Status", value: (i) => i.status, render: (i) => badge(i.status || "—") },
    { label: "Priority", value: (i) => PRIORITY_RANK[priority(i)] ?? 9,
      render: (i) => (priority(i) ? badge(priority(i), priority(i) === "STAT" ? "err" : priority(i) === "HIGH" ? "warn" : "idle") : "—") },
    { label: "Modality", value: (i) => i.modality },
    { label: "Station AE", value: (i) => i.station_ae },
    { label: "Accession", value: (i) => i.accession_number },
    { label: "Patient ID", value: (i) => (phi ? i.patient_id : null), render: phi ? null : hidden },
    { label: "Patient name", value: (i) => (phi ? String(i.patient_name || "").replaceAll("^", " ").trim() : null), render: phi ? null : hidden },
    { label: "Procedure", value: (i) => (phi ? dicom(i.attributes, "00321060") ?? dicom(i.attributes, "00400007", SPS) : null), render: phi ? null : hidden },
    { label: "Requested procedure", value: (i) => i.requested_procedure_id },
    { label: "SPS ID", value: (i) => i.sps_id },
  ];
}

export async function render(root, route, app) {
  const activeOnly = route.params.get("all") !== "1";
  const toggle = h("a", { class: "btn btn-small", href: activeOnly ? "#/worklist?all=1" : "#/worklist" },
    activeOnly ? "Show ended items too" : "Active items only");
  const body = h("div", {});
  root.append(pageHead("Modality worklist", "What modalities find by C-FIND, in schedule order.", toggle), body);
  const items = await get(`/api/worklist${query({ active_only: activeOnly, limit: 500 })}`);
  fill(body, panel(`${activeOnly ? "Active items" : "All items"} (${items.length})`,
    sortableTable(columns(app.session.can_view_phi), items, { empty: "The worklist is empty." })));
}
