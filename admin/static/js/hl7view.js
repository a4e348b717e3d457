// A message's content segment by segment (with HL7 field names) or as text, switchable.
import { get } from "./api.js";
import { describe, fill, h, phiHidden } from "./dom.js";

/** Segments from GET /api/messages/{id}/segments as one block per segment. */
export function segmentsView(result) {
  if (result.format !== "hl7" || !result.segments?.length) return textView(pretty(result.text, result.format));
  return h("div", { class: "segments" },
    result.version ? h("div", { class: "muted", text: `HL7 v${result.version}` }) : null,
    result.segments.map((seg) => h("div", { class: "seg", data: { segment: seg.name } },
      h("div", { class: "seg-name" }, seg.name, seg.description ? h("span", { class: "muted", text: seg.description }) : null),
      h("table", {}, h("tbody", {}, seg.fields.map((f) => h("tr", {},
        h("td", { class: "pos", text: f.position }),
        h("td", { class: "fname", text: f.name || "" }),
        h("td", { class: "fval", text: f.value }))))))));
}

/** JSON indented for reading; any other text as it is. */
export function pretty(text, format = "json") {
  if (format !== "json" || !/^\s*[[{]/.test(text)) return text;
  try {
    return JSON.stringify(JSON.parse(text), null, 2);
  } catch {
    return text;
  }
}

/** Text as it was stored; HL7 segment separators (CR) shown as line breaks. */
export function textView(text) {
  return h("pre", { class: "block", text: String(text).replace(/\r\n?/g, "\n") });
}

/**
 * A content box with a Fields/Text switch. `text`: the stored content (null: none; undefined:
 * withheld). `url`: where its segments come from. Segments load when first shown.
 */
export function contentView(text, url, emptyText = "Nothing stored at this stage.") {
  const body = h("div", {});
  if (text === undefined) return { toggle: null, body: fill(body, phiHidden()) };
  if (text === null || text === "") {
    return { toggle: null, body: fill(body, h("p", { class: "muted", text: emptyText })) };
  }
  const fieldsBtn = h("button", { type: "button", class: "on" }, "Fields");
  const textBtn = h("button", { type: "button" }, "Text");
  let segments = null;
  async function showFields() {
    fieldsBtn.classList.add("on");
    textBtn.classList.remove("on");
    if (!segments) {
      fill(body, h("p", { class: "muted", text: "Loading…" }));
      try {
        segments = segmentsView(await get(url));
      } catch (error) {
        segments = h("div", {}, h("p", { class: "notice notice-warn",
          text: `No field view: ${describe(error)}` }), textView(text));
      }
    }
    if (fieldsBtn.classList.contains("on")) fill(body, segments);
  }
  function showText() {
    textBtn.classList.add("on");
    fieldsBtn.classList.remove("on");
    fill(body, textView(text));
  }
  fieldsBtn.addEventListener("click", showFields);
  textBtn.addEventListener("click", showText);
  showFields();
  return { toggle: h("span", { class: "toggle" }, fieldsBtn, textBtn), body };
}
