// Alerts: open ones first; an analyst acknowledges them.
import { get, post, query } from "../api.js";
import { badge, busy, describe, fill, flash, h, pageHead, panel, show, table, when } from "../dom.js";

export async function render(root, route, app) {
  const openOnly = route.params.get("all") !== "1";
  const body = h("div", {});
  const toggle = h("a", { class: "btn btn-small", href: openOnly ? "#/alerts?all=1" : "#/alerts" },
    openOnly ? "Show acknowledged too" : "Open alerts only");
  root.append(pageHead("Alerts", "Problems the hub noticed: failing destinations, stuck queues, AI timeouts.", toggle), body);

  async function load() {
    const alerts = await get(`/api/alerts${query({ open_only: openOnly, limit: 200 })}`);
    const rows = alerts.map((a) => [
      { cls: "nowrap", value: when(a.created_at) }, badge(a.severity), show(a.kind), show(a.message),
      a.acknowledged || a.acknowledged_at ? acknowledged(a) : acknowledgeButton(a),
    ]);
    fill(body, panel(`${openOnly ? "Open alerts" : "All alerts"} (${alerts.length})`, table([{ label: "Raised" },
      { label: "Severity" }, { label: "Kind" }, { label: "Message" }, { label: "Acknowledged" }], rows,
    openOnly ? "No open alerts." : "No alerts.")));
  }

  function acknowledged(alert) {
    if (!alert.acknowledged_at) return h("span", { class: "muted", text: "yes" });
    const by = alert.acknowledged_by ? ` by ${alert.acknowledged_by}` : "";
    return h("span", { class: "muted", text: `${when(alert.acknowledged_at)}${by}` });
  }

  function acknowledgeButton(alert) {
    if (!app.can("analyst")) return h("span", { class: "badge badge-warn", text: "open" });
    const btn = h("button", { class: "btn btn-small", type: "button", data: { role: "acknowledge" } }, "Acknowledge");
    btn.addEventListener("click", () => busy(btn, async () => {
      try {
        await post(`/api/alerts/${alert.id}/acknowledge`);
        flash("Alert acknowledged");
        await Promise.all([load(), app.refreshAlerts()]);
      } catch (error) {
        flash(`Could not acknowledge: ${describe(error)}`, "error");
      }
    }));
    return btn;
  }

  await load();
}
