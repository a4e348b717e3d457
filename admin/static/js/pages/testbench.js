// Test bench: run a channel's filters and transform on a pasted or stored message, live,
// optionally with unsaved channel YAML and template text. Nothing is stored or sent.
import { get, post } from "../api.js";
import { badge, busy, debounce, describe, fill, h, pageHead, panel } from "../dom.js";
import { createEditor, renderErrors } from "../editor.js";
import { pretty, textView } from "../hl7view.js";

const LIVE_DELAY_MS = 700;

function filterRows(filters) {
  if (!filters.length) return h("p", { class: "muted", text: "No filters." });
  return h("div", {}, filters.map((f) => h("div", { class: "result-row" },
    f.error ? badge("error", "err") : badge(f.passed ? "passed" : "failed", f.passed ? "ok" : "warn"),
    h("span", { text: f.name }), f.error ? h("span", { class: "error-text", text: f.error }) : null)));
}

function output(value, error, role) {
  if (error) return h("p", { class: "notice notice-error", data: { role: `${role}-error` }, text: error });
  if (value === null || value === undefined) return h("p", { class: "muted", text: "No output." });
  const node = textView(pretty(value));
  node.dataset.role = `${role}-output`;
  return node;
}

function section(title, ...children) {
  return h("div", { class: "tb-section" }, h("h3", { text: title }), children);
}

function results(r) {
  const read = r.read.ok
    ? h("div", { class: "result-row" }, badge("read", "ok"), h("span", { text: r.read.message_type || "" }))
    : h("p", { class: "notice notice-error", text: `Could not read the message: ${r.read.error}` });
  return h("div", { data: { role: "testbench-results" } },
    section("Read", read),
    section("Channel filters", filterRows(r.filters),
      r.filtered ? h("p", { class: "notice notice-warn", text: "Filtered: the channel would stop here." }) : null),
    section("Transform output", output(r.transform.output, r.transform.error, "transform")),
    r.destinations.map((d) => section(`→ ${d.name} (${d.type})`,
      d.enabled ? null : h("p", { class: "muted", text: "Disabled in the channel: would not receive it." }),
      d.filters.length ? filterRows(d.filters) : null,
      d.filtered ? h("p", { class: "notice notice-warn", text: "Filtered out for this destination." }) : null,
      d.enabled ? output(d.output, d.error, `destination-${d.name}`) : null)));
}

async function channelText(name) {
  try {
    return (await get(`/api/channels/${encodeURIComponent(name)}/file`)).text;
  } catch {
    return "";
  }
}

export async function render(root, route, app) {
  root.append(pageHead("Test bench", "Run filters and transform on a message; no deploy, nothing stored or sent."));
  if (!app.can("analyst")) {
    root.append(h("p", { class: "notice notice-info", text: "The test bench needs the analyst role." }));
    return;
  }
  const [channels, templates] = await Promise.all([
    get("/api/channels"), get("/api/testbench/templates").catch(() => []),
  ]);
  const params = route.params;
  const channel = h("select", { name: "channel" }, channels.filter((c) => c.file !== null).map((c) =>
    h("option", { value: c.name, text: c.name, selected: params.get("channel") === c.name })));
  const message = createEditor({ short: true, label: "Message" });
  const messageId = h("input", { type: "number", min: "1", placeholder: "ID", value: params.get("message_id") || "", class: "short-input" });
  const loadNote = h("span", { class: "muted" });
  const yamlOn = h("input", { type: "checkbox" });
  const yaml = createEditor({ label: "Channel YAML" });
  const yamlErrors = h("div", { class: "validation" });
  const yamlBox = h("div", { hidden: true }, yaml.element, yamlErrors);
  const template = h("select", {}, h("option", { value: "", text: "— use the files —" }),
    templates.map((t) => h("option", { value: t.name, text: t.name })));
  const templateEditor = createEditor({ label: "Template" });
  const templateBox = h("div", { hidden: true }, templateEditor.element);
  const live = h("input", { type: "checkbox", checked: true });
  const out = h("div", {}, h("p", { class: "muted", text: "Run to see the output." }));
  const runBtn = h("button", { class: "btn btn-primary", type: "button", data: { role: "run" } }, "Run");

  async function loadStored() {
    const id = Number(messageId.value);
    if (!id) return;
    try {
      const m = await get(`/api/messages/${id}`);
      if (m.phi_hidden) {
        loadNote.textContent = "hidden: no PHI access";
        return;
      }
      message.value = m.raw.replace(/\r\n?/g, "\n");
      loadNote.textContent = `Loaded message #${id} (${m.message_type || "?"} on ${m.channel}).`;
      if ([...channel.options].some((o) => o.value === m.channel) && !params.get("channel")) channel.value = m.channel;
      trigger();
    } catch (error) {
      loadNote.textContent = describe(error);
    }
  }

  async function run() {
    const body = { channel: channel.value, message: message.value.replace(/\n/g, "\r") };
    if (yamlOn.checked) body.channel_yaml = yaml.value;
    if (template.value) body.templates = { [template.value]: templateEditor.value };
    if (!body.message.trim()) return;
    await busy(runBtn, async () => {
      try {
        const r = await post("/api/testbench", body);
        yaml.setErrors([]);
        fill(yamlErrors);
        fill(out, results(r));
      } catch (error) {
        const errors = error.channelErrors || [];
        if (errors.length) {
          yaml.setErrors(errors);
          renderErrors(yamlErrors, errors, yaml);
        }
        fill(out, h("p", { class: "notice notice-error", text: errors.length
          ? "The channel YAML is invalid: see the errors under it." : describe(error) }));
      }
    });
  }
  const trigger = debounce(() => live.checked && run(), LIVE_DELAY_MS);

  yamlOn.addEventListener("change", async () => {
    yamlBox.hidden = !yamlOn.checked;
    if (yamlOn.checked && !yaml.value) yaml.value = await channelText(channel.value);
    trigger();
  });
  channel.addEventListener("change", async () => {
    if (yamlOn.checked) yaml.value = await channelText(channel.value);
    trigger();
  });
  template.addEventListener("change", async () => {
    templateBox.hidden = !template.value;
    if (template.value) {
      const t = await get(`/api/testbench/templates/${encodeURIComponent(template.value)}`);
      templateEditor.value = t.text;
    }
    trigger();
  });
  for (const editor of [message, yaml, templateEditor]) editor.onInput(trigger);
  runBtn.addEventListener("click", run);
  messageId.addEventListener("keydown", (e) => {
    if (e.key === "Enter") loadStored();
  });

  const inputs = h("div", {},
    panel("Input", h("div", { class: "panel-body stack" },
      h("div", { class: "inline-form" }, h("label", {}, "Channel", channel),
        h("label", {}, "Stored message", messageId),
        h("button", { class: "btn", type: "button", data: { role: "load" }, on: { click: loadStored } }, "Load"),
        loadNote),
      h("label", {}, "Message (paste HL7, JSON, …)", message.element),
      h("label", { class: "inline" }, yamlOn, "Edit the channel YAML for this run"), yamlBox,
      h("label", {}, "Template to edit for this run", template), templateBox)));
  root.append(h("div", { class: "split" }, inputs,
    panel("Result", h("div", { class: "panel-body" }, out), h("label", { class: "inline" }, live, "Live"), runBtn)));
  if (params.get("message_id")) await loadStored();
}
