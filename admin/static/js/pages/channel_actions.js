// Deploy / undeploy / start / stop / pause buttons for a channel, by its state.
import { post } from "../api.js";
import { busy, flash, h } from "../dom.js";

/** Which actions make sense in each state (the API answers 409 to the others). */
const ACTIONS = {
  undeployed: ["deploy"],
  started: ["pause", "stop", "deploy", "undeploy"],
  paused: ["start", "stop", "deploy", "undeploy"],
  stopped: ["start", "deploy", "undeploy"],
};

const LABELS = {
  deploy: "Deploy", undeploy: "Undeploy", start: "Start", stop: "Stop", pause: "Pause",
};

/** Buttons for an analyst; nothing for a viewer or a channel without a file. */
export function actionButtons(channel, app, onDone) {
  if (!app.can("analyst") || !channel.file || !channel.state) return [];
  return (ACTIONS[channel.state] || []).map((action) => {
    const label = action === "deploy" && channel.state !== "undeployed" ? "Redeploy" : LABELS[action];
    const danger = action === "stop" || action === "undeploy";
    const btn = h("button", {
      class: `btn btn-small${danger ? " btn-danger" : ""}`,
      type: "button",
      data: { action },
    }, label);
    btn.addEventListener("click", () => busy(btn, async () => {
      try {
        const info = await post(`/api/channels/${encodeURIComponent(channel.name)}/${action}`);
        flash(`${channel.name}: ${info.state}`);
        onDone(info);
      } catch (error) {
        const lines = error.channelErrors.map((e) => `line ${e.line}: ${e.message}`);
        flash(`${LABELS[action]} ${channel.name} failed: ${[error.message, ...lines].join("; ")}`, "error");
      }
    }));
    return btn;
  });
}
