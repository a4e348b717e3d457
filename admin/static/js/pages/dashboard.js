// Dashboard: totals, per-channel counts and state, queue depths, recent errors; polled live.
import { get } from "../api.js";
import { age, badge, describe, fill, h, pageHead, panel, show, table, when } from "../dom.js";
import { channelLink, countChips, destinationList, messageLink, stateBadge } from "./common.js";

const POLL_MS = 5000;

function card(label, value, tone) {
  return h("div", { class: `card${tone ? ` ${tone}` : ""}` },
    h("div", { class: "label", text: label }), h("div", { class: "value", text: show(value) }));
}

function cards(dash) {
  if (!dash) return null;
  return h("div", { class: "cards" },
    card("Received · last hour", dash.received_last_hour),
    card("Errors · last hour", dash.errored_last_hour, dash.errored_last_hour ? "bad" : "good"),
    card("Open alerts", dash.open_alerts, dash.open_alerts ? "bad" : "good"),
    card("Store", dash.store, dash.store === "ok" ? "good" : "bad"));
}

function channelsTable(channels) {
  const rows = channels.map((c) => [
    channelLink(c.name), stateBadge(c), show(c.source_type), destinationList(c.destinations),
    countChips(c.counts),
  ]);
  return table([{ label: "Channel" }, { label: "State" }, { label: "Source" },
    { label: "Destinations" }, { label: "Messages" }], rows, "No channels.");
}

function queuesTable(queues) {
  const rows = queues.map((q) => [
    channelLink(q.channel), q.destination, { cls: "num", value: String(q.depth) },
    { cls: "num", value: age(q.oldest_age_seconds) },
    { cls: "num", value: q.errored ? badge(String(q.errored), "err") : "0" },
  ]);
  return table([{ label: "Channel" }, { label: "Destination" }, { label: "Depth", cls: "num" },
    { label: "Oldest", cls: "num" }, { label: "Errored", cls: "num" }], rows, "No queues.");
}

function errorsTable(items) {
  const rows = items.map((m) => [messageLink(m.id), channelLink(m.channel), when(m.received_at),
    show(m.message_type), show(m.control_id)]);
  return table([{ label: "Message" }, { label: "Channel" }, { label: "Received" },
    { label: "Type" }, { label: "Control ID" }], rows, "No errored messages.");
}

/** Nodes sharing the PostgreSQL store: only shown when there is a cluster to show. */
function clusterPanel(view) {
  if (!view || view.store !== "postgresql") return null;
  const claims = Object.fromEntries((view.claims || []).map((c) => [c.node, c]));
  const live = new Set(view.nodes.map((n) => n.node));
  const rows = view.nodes.map((n) => [
    n.node === view.this_node ? `${n.node} (this node)` : n.node,
    n.leader ? badge("leader", "ok") : "",
    { cls: "num", value: String(n.connections) },
    when(n.connected_since),
    { cls: "num", value: String(claims[n.node] ? claims[n.node].entries : 0) },
  ]);
  // Claims of a node that is gone: delivered by the others once the lease runs out.
  for (const c of view.claims || []) {
    if (!live.has(c.node)) {
      rows.push([c.node, badge(c.expired ? "gone · lease over" : "gone · lease running", "err"),
        { cls: "num", value: "0" }, "", { cls: "num", value: String(c.entries) }]);
    }
  }
  return panel("Nodes", table([{ label: "Node" }, { label: "Role" },
    { label: "Connections", cls: "num" }, { label: "Connected since" },
    { label: "Claimed entries", cls: "num" }], rows, "No nodes."));
}

/** Each part loads on its own: one failing endpoint must not blank the whole dashboard. */
async function attempt(promise) {
  try {
    return { value: await promise };
  } catch (error) {
    return { error };
  }
}

export async function render(root, _route, app) {
  const stamp = h("span", { class: "sub" });
  const body = h("div", {});
  root.append(pageHead("Dashboard", null, stamp), body);
  app.every(POLL_MS, async () => {
    const [dash, channels, errors, cluster] = await Promise.all([
      attempt(get("/api/dashboard")),
      attempt(get("/api/channels")),
      attempt(get("/api/messages?status=ERROR&limit=8")),
      attempt(get("/api/cluster")),
    ]);
    const failed = (part) => h("p", { class: "notice notice-error", text: describe(part.error) });
    fill(body,
      dash.error ? failed(dash) : cards(dash.value),
      panel("Channels", channels.error ? failed(channels) : channelsTable(channels.value)),
      cluster.error ? failed(cluster) : clusterPanel(cluster.value),
      h("div", { class: "split" },
        panel("Queues", dash.error ? failed(dash) : queuesTable(dash.value.queues || [])),
        panel("Recent errors", errors.error ? failed(errors) : errorsTable(errors.value.items),
          h("a", { href: "#/messages?status=ERROR", text: "All errors" }))));
    stamp.textContent = `Updated ${when(new Date().toISOString())} · every ${POLL_MS / 1000} s`;
  });
}
