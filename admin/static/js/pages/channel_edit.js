// One channel: state and actions, its YAML in an editor validated as you type, diff against Git.
import { get, post, put } from "../api.js";
import { busy, debounce, describe, facts, fill, flash, h, pageHead, panel, show } from "../dom.js";
import { createEditor, renderDiff, renderErrors } from "../editor.js";
import { actionButtons } from "./channel_actions.js";
import { countChips, destinationList, stateBadge } from "./common.js";

const VALIDATE_DELAY_MS = 400;

function channelFacts(info, file) {
  return facts([
    ["State", stateBadge(info)],
    ["File", file ? h("span", { class: "mono", text: file.file }) : "—"],
    ["Source", show(info.source_type)],
    ["Enabled in file", info.enabled ? "yes" : "no"],
    ["Git", file ? gitState(file) : "—"],
    ["Messages", countChips(info.counts)],
    ["Destinations", destinationList(info.destinations)],
  ]);
}

function gitState(file) {
  if (!file.tracked_in_git) return h("span", { class: "muted", text: "not tracked" });
  return file.modified ? h("span", { class: "badge badge-warn", text: "modified since commit" })
    : h("span", { class: "badge badge-ok", text: "as committed" });
}

/** Validate-as-you-type: only the answer to the latest text is shown. */
function validator(name, file, editor, box, status) {
  let sequence = 0;
  return async () => {
    const mine = (sequence += 1);
    status.textContent = "Validating…";
    try {
      const result = await post("/api/channels/validate", { text: editor.value, file });
      if (mine !== sequence) return;
      editor.setErrors(result.errors);
      renderErrors(box, result.errors, editor, `Valid channel file for ${name}.`);
      status.textContent = result.valid ? "Valid" : "Invalid";
    } catch (error) {
      if (mine === sequence) status.textContent = `Could not validate: ${describe(error)}`;
    }
  };
}

export async function render(root, route, app) {
  const name = route.id;
  const info = await get(`/api/channels/${encodeURIComponent(name)}`);
  const head = h("div", {});
  const drawHead = (current) => fill(head, pageHead(`Channel ${current.name}`, current.description,
    ...actionButtons(current, app, (next) => drawHead(next)),
    h("a", { class: "btn btn-small", href: `#/testbench?channel=${encodeURIComponent(current.name)}` }, "Test bench"),
    h("a", { class: "btn btn-small", href: `#/messages?channel=${encodeURIComponent(current.name)}` }, "Messages")),
  panel("Overview", h("div", { class: "panel-body" }, channelFacts(current, fileInfo))));
  let fileInfo = null;
  if (!info.file) {
    drawHead(info);
    root.append(head, h("p", { class: "notice notice-info",
      text: "This channel is known only from stored messages: there is no file to edit." }));
    return;
  }
  fileInfo = await get(`/api/channels/${encodeURIComponent(name)}/file`);
  drawHead(info);
  root.append(head, editorPanel(name, fileInfo, app));
}

function editorPanel(name, fileInfo, app) {
  const writable = app.can("analyst");
  const editor = createEditor({ value: fileInfo.text, readOnly: !writable, label: `${fileInfo.file} YAML` });
  const box = h("div", { class: "validation" });
  const status = h("span", { class: "muted", "data-role": "validation-status" });
  const diffBox = h("div", {});
  const validate = validator(name, fileInfo.file, editor, box, status);
  editor.onInput(debounce(validate, VALIDATE_DELAY_MS));
  const path = `/api/channels/${encodeURIComponent(name)}`;

  const showDiff = (btn) => busy(btn, async () => {
    try {
      const result = await post(`${path}/diff`, { text: editor.value });
      fill(diffBox, result.tracked_in_git
        ? panel(`Changes against Git (HEAD → ${writable ? "editor" : "file"})`, h("div", { class: "panel-body" }, renderDiff(result.diff)))
        : h("p", { class: "notice notice-info", text: "This file is not tracked in Git." }));
    } catch (error) {
      fill(diffBox, h("p", { class: "notice notice-error", text: describe(error) }));
    }
  });
  const save = (btn) => busy(btn, async () => {
    try {
      const result = await put(`${path}/file`, { text: editor.value });
      editor.setErrors([]);
      renderErrors(box, [], editor, `Saved ${result.file}. Deploy the channel to apply it.`);
      flash(`Saved ${result.file}`);
    } catch (error) {
      editor.setErrors(error.channelErrors);
      if (error.channelErrors.length) renderErrors(box, error.channelErrors, editor);
      flash(`Not saved: ${describe(error)}`, "error");
    }
  });
  const revert = () => {
    editor.value = fileInfo.text;
    validate();
  };

  const buttons = [
    h("span", {}, status),
    h("button", { class: "btn btn-small", type: "button", on: { click: (e) => showDiff(e.currentTarget) } }, "Diff against Git"),
    writable ? h("button", { class: "btn btn-small", type: "button", on: { click: revert } }, "Revert") : null,
    writable ? h("button", { class: "btn btn-small btn-primary", type: "button", data: { role: "save" },
      on: { click: (e) => save(e.currentTarget) } }, "Save") : null,
  ];
  validate();
  return h("div", {},
    panel(`${fileInfo.file}${writable ? "" : " (read only)"}`, h("div", { class: "panel-body" }, editor.element, box), ...buttons),
    diffBox);
}
