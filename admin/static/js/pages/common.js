// Bits several pages share: channel state/count cells, destination summaries.
import { badge, h } from "../dom.js";

const ORDER = ["RECEIVED", "TRANSFORMED", "QUEUED", "SENT", "FILTERED", "ERROR"];

/** Per-status message counts as small chips ("SENT 12", "ERROR 1"). */
export function countChips(counts) {
  const names = Object.keys(counts || {}).sort((a, b) => ORDER.indexOf(a) - ORDER.indexOf(b));
  if (!names.length) return h("span", { class: "muted", text: "no messages" });
  return h("div", { class: "counts" }, names.map((name) => h("span", {
    class: `count${name === "ERROR" ? " err" : name === "SENT" ? " ok" : ""}`,
    text: `${name} ${counts[name]}`,
  })));
}

/** A channel's state badge (the old /api/channels had no state: show enabled/disabled). */
export function stateBadge(channel) {
  if (channel.state) return badge(channel.state);
  return badge(channel.enabled ? "enabled" : "disabled", channel.enabled ? "ok" : "idle");
}

/** Destinations with their queue depth and errors, one line each. */
export function destinationList(destinations) {
  if (!destinations || !destinations.length) return h("span", { class: "muted", text: "—" });
  return h("div", {}, destinations.map((d) => h("div", { class: "nowrap" },
    h("span", { text: d.name }),
    h("span", { class: "muted", text: ` (${d.type})` }),
    d.enabled === false ? h("span", { class: "muted", text: " · disabled" }) : null,
    d.queue_depth ? h("span", { class: "count", text: ` queue ${d.queue_depth}` }) : null,
    d.errored ? h("span", { class: "count err", text: ` errors ${d.errored}` }) : null)));
}

/** A link to a channel's page. */
export function channelLink(name) {
  return h("a", { href: `#/channels/${encodeURIComponent(name)}`, text: name });
}

/** A link to a message's page. */
export function messageLink(id, text) {
  return h("a", { href: `#/messages/${id}`, text: text || `#${id}` });
}
