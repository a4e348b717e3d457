// Message browser: search, select, reprocess many, export.
import { ApiError, get, post, query } from "../api.js";
import { badge, busy, describe, errorBox, fill, flash, h, pageHead, panel, phiHidden, show, table, when } from "../dom.js";
import { channelLink, messageLink } from "./common.js";

const STATUSES = ["", "RECEIVED", "FILTERED", "TRANSFORMED", "QUEUED", "SENT", "ERROR"];
const FIELDS = ["channel", "status", "since", "until", "text", "patient_id", "accession"];
const PAGE = 50;

/** The API's filters from the form's (hash) values: local date-times become ISO instants. */
function apiFilters(params) {
  const filters = {};
  for (const name of FIELDS) {
    const value = params.get(name);
    if (!value) continue;
    filters[name] = name === "since" || name === "until" ? new Date(value).toISOString() : value;
  }
  return filters;
}

function searchForm(params, channels, app) {
  const phi = app.session.can_view_phi;
  const input = (name, label, attrs = {}) => h("label", {}, label,
    h("input", { name, value: params.get(name) || "", ...attrs }));
  const channel = h("select", { name: "channel" }, h("option", { value: "", text: "All channels" }),
    channels.map((c) => h("option", { value: c.name, text: c.name, selected: params.get("channel") === c.name })));
  const status = h("select", { name: "status" }, STATUSES.map((s) => h("option", {
    value: s, text: s || "Any status", selected: (params.get("status") || "") === s })));
  const phiNote = phi ? null : "needs PHI access";
  const form = h("form", { class: "toolbar", role: "search" },
    h("label", {}, "Channel", channel),
    h("label", {}, "Status", status),
    input("since", "From", { type: "datetime-local" }),
    input("until", "To", { type: "datetime-local" }),
    input("text", "Text in message", { placeholder: phiNote || "e.g. CTHEAD", disabled: !phi, class: "grow" }),
    input("patient_id", "Patient ID", { placeholder: phiNote || "", disabled: !phi }),
    input("accession", "Accession"),
    h("button", { class: "btn btn-primary", type: "submit" }, "Search"),
    h("a", { class: "btn", href: "#/messages" }, "Clear"));
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const next = new URLSearchParams();
    for (const [key, value] of new FormData(form)) if (value) next.set(key, String(value));
    app.go(`#/messages?${next}`);
  });
  return form;
}

/** Reprocess many at once; an older hub without the bulk endpoint gets one call per message. */
async function reprocessMany(ids) {
  try {
    return (await post("/api/messages/reprocess", { ids })).results;
  } catch (error) {
    if (!(error instanceof ApiError) || (error.status !== 404 && error.status !== 405)) throw error;
  }
  const results = [];
  for (const id of ids) {
    try {
      const one = await post(`/api/messages/${id}/reprocess`);
      results.push({ error: null, ...one });
    } catch (err) {
      results.push({ message_id: id, requeued: 0, error: describe(err) });
    }
  }
  return results;
}

function summary(results) {
  const failed = results.filter((r) => r.error);
  const requeued = results.reduce((sum, r) => sum + (r.requeued || 0), 0);
  const rerun = results.filter((r) => r.resubmitted_as).length;
  const again = rerun ? ` ${rerun} run again through the channel as new message(s).` : "";
  let text = `Reprocessed ${results.length - failed.length} message(s): ${requeued} queue entr${requeued === 1 ? "y" : "ies"} requeued.${again}`;
  const againFailed = results.filter((r) => r.resubmit_error);
  const still = againFailed.length
    ? ` Failed again: ${againFailed.map((r) => `#${r.message_id} as #${r.resubmitted_as} (${r.resubmit_error})`).join(", ")}.`
    : "";
  text += still;
  return failed.length ? `${text} Failed: ${failed.map((r) => `#${r.message_id} (${r.error})`).join(", ")}` : text;
}

function exportLinks(filters, app) {
  if (!app.session.can_view_phi) return [];
  return ["ndjson", "hl7"].map((format) => h("a", {
    class: "btn btn-small", href: `/api/messages/export${query({ ...filters, format })}`, download: `messages.${format}`,
  }, `Export ${format.toUpperCase()}`));
}

export async function render(root, route, app) {
  const params = route.params;
  const offset = Number(params.get("offset") || 0);
  const filters = apiFilters(params);
  let channels = [];
  try {
    channels = await get("/api/channels");
  } catch {
    // The search still works without the channel list.
  }
  root.append(pageHead("Messages", "Search stored messages; open one to see every stage."),
    panel("Search", searchForm(params, channels, app)));
  const results = h("div", {});
  root.append(results);
  let page;
  try {
    page = await get(`/api/messages${query({ ...filters, limit: PAGE, offset, count: true })}`);
  } catch (error) {
    results.append(errorBox(error));
    return;
  }
  const selected = new Set();
  const canWrite = app.can("analyst");
  const reprocessBtn = canWrite ? h("button", { class: "btn btn-small btn-primary", type: "button",
    disabled: true, data: { role: "reprocess-selected" } }, "Reprocess selected") : null;
  const refresh = () => {
    reprocessBtn.disabled = selected.size === 0;
    reprocessBtn.textContent = selected.size ? `Reprocess selected (${selected.size})` : "Reprocess selected";
  };
  const rows = page.items.map((m) => {
    const box = canWrite ? h("input", { type: "checkbox", "aria-label": `Select message ${m.id}` }) : null;
    const row = h("tr", {},
      canWrite ? h("td", {}, box) : null,
      h("td", {}, messageLink(m.id)), h("td", { class: "nowrap", text: when(m.received_at) }),
      h("td", {}, channelLink(m.channel)), h("td", {}, badge(m.status)),
      h("td", { text: show(m.message_type) }), h("td", { text: show(m.sender) }),
      h("td", { class: "mono", text: show(m.control_id) }),
      h("td", {}, app.session.can_view_phi ? show(m.patient_id) : phiHidden()),
      h("td", { text: show(m.accession) }));
    box?.addEventListener("change", () => {
      if (box.checked) selected.add(m.id);
      else selected.delete(m.id);
      row.classList.toggle("row-selected", box.checked);
      refresh();
    });
    return row;
  });
  reprocessBtn?.addEventListener("click", () => busy(reprocessBtn, async () => {
    try {
      flash(summary(await reprocessMany([...selected])));
      window.setTimeout(() => render(fill(root), route, app), 300);
    } catch (error) {
      flash(`Reprocess failed: ${describe(error)}`, "error");
    }
  }));
  const columns = [canWrite ? { label: "" } : null, { label: "ID" }, { label: "Received" },
    { label: "Channel" }, { label: "Status" }, { label: "Type" }, { label: "Sender" },
    { label: "Control ID" }, { label: "Patient ID" }, { label: "Accession" }].filter(Boolean);
  const total = page.total ?? null;
  const title = total === null ? "Results" : `Results (${total})`;
  results.append(panel(title, h("div", {}, table(columns, rows, "No message matches."), pager(params, offset, page, total, app)),
    ...exportLinks(filters, app), reprocessBtn));
}

function pager(params, offset, page, total, app) {
  const go = (to) => {
    const next = new URLSearchParams(params);
    next.set("offset", String(Math.max(0, to)));
    app.go(`#/messages?${next}`);
  };
  const more = total === null ? page.items.length === PAGE : offset + PAGE < total;
  const last = offset + page.items.length;
  return h("div", { class: "pager" },
    h("span", { class: "muted", text: page.items.length ? `${offset + 1}–${last}${total === null ? "" : ` of ${total}`}` : "" }),
    h("button", { class: "btn btn-small", type: "button", disabled: offset === 0, on: { click: () => go(offset - PAGE) } }, "Previous"),
    h("button", { class: "btn btn-small", type: "button", disabled: !more, on: { click: () => go(offset + PAGE) } }, "Next"));
}
