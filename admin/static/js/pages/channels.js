// Channels: every channel with state, counts and the deploy/start/stop/pause actions.
import { get, post } from "../api.js";
import { busy, fill, flash, h, pageHead, panel, show, table } from "../dom.js";
import { actionButtons } from "./channel_actions.js";
import { channelLink, countChips, destinationList, stateBadge } from "./common.js";

const NEW_CHANNEL = (name) => `name: ${name}
description: ""
enabled: false

inbound:
  data_type: hl7v2

source:
  type: mllp
  host: 127.0.0.1
  port: 2600

destinations:
  - name: downstream
    type: mllp
    host: 127.0.0.1
    port: 2700
`;

function newChannelForm(app) {
  const input = h("input", { name: "file", placeholder: "my-channel.yaml", required: true, pattern: "[A-Za-z0-9._-]+\\.ya?ml" });
  const problems = h("div", {});
  const form = h("form", { class: "inline-form" },
    h("label", {}, "File name", input),
    h("button", { class: "btn btn-primary", type: "submit" }, "Create channel"), problems);
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const file = input.value.trim();
    const name = file.replace(/\.ya?ml$/, "");
    busy(form.querySelector("button"), async () => {
      try {
        const info = await post("/api/channels", { file, text: NEW_CHANNEL(name) });
        flash(`Created ${info.name} (not deployed). Edit it, then deploy.`);
        app.go(`#/channels/${encodeURIComponent(info.name)}`);
      } catch (error) {
        const lines = error.channelErrors.map((e) => `line ${e.line}: ${e.message}`);
        fill(problems, h("span", { class: "error-text", text: [error.message, ...lines].join("; ") }));
      }
    });
  });
  return panel("New channel", h("div", { class: "panel-body" }, form));
}

export async function render(root, _route, app) {
  const body = h("div", {});
  const reload = async () => {
    const channels = await get("/api/channels");
    const rows = channels.map((c) => [
      h("div", {}, channelLink(c.name), c.description ? h("div", { class: "muted", text: c.description }) : null),
      stateBadge(c),
      c.file ? h("span", { class: "mono", text: c.file }) : h("span", { class: "muted", text: "no file" }),
      show(c.source_type),
      destinationList(c.destinations),
      countChips(c.counts),
      h("div", { class: "row-actions" }, actionButtons(c, app, reload)),
    ]);
    fill(body, panel(`Channels (${channels.length})`, table([{ label: "Channel" }, { label: "State" },
      { label: "File" }, { label: "Source" }, { label: "Destinations" }, { label: "Messages" },
      { label: "Actions" }], rows, "No channels.")));
  };
  root.append(pageHead("Channels", "Deploy, start, stop and pause channels; open one to edit its YAML."),
    body, app.can("analyst") ? newChannelForm(app) : null);
  await reload();
}
