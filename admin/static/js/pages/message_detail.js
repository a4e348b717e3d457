// One message: facts, reprocess, and every stage side by side (raw, transformed, response,
// each destination's payload and response), HL7 shown segment by segment with field names.
import { get, post } from "../api.js";
import { badge, busy, describe, facts, fill, flash, h, pageHead, panel, phiHidden, show, when } from "../dom.js";
import { contentView } from "../hl7view.js";
import { channelLink } from "./common.js";

function messageFacts(m) {
  return facts([
    ["Status", badge(m.status)],
    ["Channel", channelLink(m.channel)],
    ["Type", show(m.message_type)],
    ["Control ID", h("span", { class: "mono", text: show(m.control_id) })],
    ["Sender", show(m.sender)],
    ["Origin", show(m.origin)],
    ["Patient ID", m.phi_hidden ? phiHidden() : show(m.patient_id)],
    ["Accession", show(m.accession)],
    ["Received", when(m.received_at)],
    ["Updated", when(m.updated_at)],
  ]);
}

/** The stored content, or undefined when withheld (no PHI access). */
function content(m, value) {
  return m.phi_hidden ? undefined : value;
}

function stage(title, view, ...extra) {
  return h("section", { class: "stage", data: { stage: title } },
    h("div", { class: "stage-head" }, h("h2", { text: title }), view.toggle),
    h("div", { class: "stage-body" }, extra, view.body));
}

function destinationStage(m, entry) {
  const base = `/api/messages/${m.id}/segments?queue_entry=${entry.id}`;
  const payload = contentView(content(m, entry.payload), `${base}&part=payload`);
  const response = contentView(content(m, entry.response), `${base}&part=response`, "No response yet.");
  const meta = h("div", { class: "result-row" }, badge(entry.status),
    h("span", { class: "muted", text: `attempts ${entry.attempts} · updated ${when(entry.updated_at)}` }));
  const error = entry.error ? h("p", { class: "notice notice-error", text: entry.error }) : null;
  return h("section", { class: "stage", data: { stage: `destination ${entry.destination}` } },
    h("div", { class: "stage-head" }, h("h2", { text: `→ ${entry.destination}` }), meta),
    h("div", { class: "stage-body" }, error,
      h("div", { class: "result-row" }, h("h3", { text: "Payload" }), h("span", { class: "spacer" }), payload.toggle),
      payload.body,
      h("div", { class: "result-row" }, h("h3", { text: "Response" }), h("span", { class: "spacer" }), response.toggle),
      response.body));
}

function stages(m) {
  const url = (name) => `/api/messages/${m.id}/segments?stage=${name}`;
  return h("div", { class: "stages" },
    stage("Raw", contentView(content(m, m.raw), url("raw"))),
    stage("Transformed", contentView(content(m, m.transformed), url("transformed"), "No transform output.")),
    stage("Response", contentView(content(m, m.response), url("response"), "No response sent.")),
    m.queue.map((entry) => destinationStage(m, entry)));
}

export async function render(root, route, app) {
  const id = Number(route.id);
  const m = await get(`/api/messages/${id}`);
  const result = h("div", { data: { role: "reprocess-result" } });
  const actions = [h("a", { class: "btn btn-small", href: `#/messages?channel=${encodeURIComponent(m.channel)}` }, "Back to list")];
  if (app.can("analyst")) {
    actions.push(h("a", { class: "btn btn-small", href: `#/testbench?channel=${encodeURIComponent(m.channel)}&message_id=${id}` }, "Open in test bench"));
    const btn = h("button", { class: "btn btn-small btn-primary", type: "button", data: { role: "reprocess" } }, "Reprocess");
    btn.addEventListener("click", () => busy(btn, async () => {
      try {
        const answer = await post(`/api/messages/${id}/reprocess`);
        const text = answer.requeued
          ? `Reprocessed: ${answer.requeued} queue entr${answer.requeued === 1 ? "y" : "ies"} requeued.`
          : answer.resubmitted_as && answer.resubmit_error
            ? `Reprocessed: run again as message #${answer.resubmitted_as}, which failed again: ${answer.resubmit_error}`
            : answer.resubmitted_as
            ? `Reprocessed: run again through the channel as message #${answer.resubmitted_as} (${answer.status || "already accepted earlier"}).`
            : answer.error
              ? `Not reprocessed: ${answer.error}`
              : "Reprocessed: nothing to requeue (no sent or errored destination).";
        fill(result, h("p", { class: "notice notice-ok", text }));
        flash(text);
      } catch (error) {
        fill(result, h("p", { class: "notice notice-error", text: `Reprocess failed: ${describe(error)}` }));
      }
    }));
    actions.push(btn);
  }
  root.append(pageHead(`Message #${m.id}`, `${show(m.message_type)} on ${m.channel}`, ...actions), result);
  if (m.error) root.append(h("p", { class: "notice notice-error", text: m.error }));
  if (m.phi_hidden) {
    root.append(h("p", { class: "notice notice-info", text: "Message content is hidden: no PHI access." }));
  }
  root.append(panel("Message", h("div", { class: "panel-body" }, messageFacts(m))), stages(m));
}
