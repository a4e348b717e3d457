// A plain textarea with a line-number gutter; error lines are marked in the gutter and text.
import { fill, h } from "./dom.js";

const LINE_PX = 18;

/**
 * createEditor({value, short, readOnly}) -> {element, textarea, value, setErrors, goToLine, onInput}.
 * setErrors takes [{line, message}] (1-based lines; line 0 = the file as a whole).
 */
export function createEditor({ value = "", short = false, readOnly = false, label = "Editor" } = {}) {
  // Gutter and marks move with the textarea by a transform, not by their own scrolling:
  // the scroll offset of an overflow:hidden box is clamped and reset by relayouts.
  const gutter = h("div", { class: "editor-lines" });
  const marks = h("div", { class: "editor-lines" });
  const textarea = h("textarea", {
    spellcheck: "false", autocomplete: "off", autocapitalize: "off", wrap: "off",
    "aria-label": label, readonly: readOnly || null,
  });
  textarea.value = value;
  const element = h("div", { class: `editor${short ? " short" : ""}` },
    h("div", { class: "editor-gutter", "aria-hidden": "true" }, gutter),
    h("div", { class: "editor-area" }, h("div", { class: "editor-marks", "aria-hidden": "true" }, marks), textarea));
  let errors = new Map();

  function paint() {
    const count = textarea.value.split("\n").length;
    const numbers = [];
    const lines = [];
    for (let n = 1; n <= count; n += 1) {
      const message = errors.get(n);
      numbers.push(h("div", { class: message ? "err" : null, title: message || null, text: String(n) }));
      lines.push(h("div", { class: message ? "err" : null }));
    }
    fill(gutter, numbers);
    fill(marks, lines);
    sync();
  }

  function sync() {
    // CSSOM style changes are allowed by the CSP (only style attributes in markup are not).
    gutter.style.transform = `translateY(${-textarea.scrollTop}px)`;
    marks.style.transform = `translateY(${-textarea.scrollTop}px)`;
  }

  let lastCount = -1;
  textarea.addEventListener("input", () => {
    const count = textarea.value.split("\n").length;
    if (count !== lastCount) {
      lastCount = count;
      paint();
    }
  });
  textarea.addEventListener("scroll", sync);
  textarea.addEventListener("keydown", (event) => {
    if (event.key !== "Tab" || event.shiftKey || readOnly) return;
    // YAML is indented with spaces; Tab would leave the field instead.
    event.preventDefault();
    textarea.setRangeText("  ", textarea.selectionStart, textarea.selectionEnd, "end");
    textarea.dispatchEvent(new Event("input"));
  });
  paint();

  return {
    element,
    textarea,
    get value() {
      return textarea.value;
    },
    set value(text) {
      textarea.value = text;
      paint();
    },
    setErrors(list) {
      errors = new Map();
      for (const error of list || []) {
        if (error.line > 0) {
          const old = errors.get(error.line);
          errors.set(error.line, old ? `${old}\n${error.message}` : error.message);
        }
      }
      paint();
    },
    goToLine(line) {
      const starts = textarea.value.split("\n");
      let offset = 0;
      for (let n = 1; n < line && n <= starts.length; n += 1) offset += starts[n - 1].length + 1;
      textarea.focus();
      textarea.setSelectionRange(offset, offset + (starts[line - 1] || "").length);
      textarea.scrollTop = Math.max(0, (line - 4) * LINE_PX);
      sync();
    },
    onInput(fn) {
      textarea.addEventListener("input", () => fn(textarea.value));
    },
  };
}

/** The list of validation errors under an editor; a click jumps to the line. */
export function renderErrors(box, errors, editor, okText = "Valid.") {
  if (!errors.length) {
    fill(box, h("p", { class: "notice notice-ok", text: okText }));
    return;
  }
  const items = errors.map((error) => {
    const where = error.line > 0 ? `line ${error.line}` : "file";
    const item = h("li", { title: "Go to the line" },
      h("span", { class: "loc", text: where }), " ",
      error.field ? h("code", { text: error.field }) : null, error.field ? ": " : "",
      error.message);
    if (error.line > 0) item.addEventListener("click", () => editor.goToLine(error.line));
    return item;
  });
  const noun = errors.length === 1 ? "error" : "errors";
  fill(box, h("div", { class: "notice notice-error", role: "alert" },
    h("strong", { text: `${errors.length} ${noun}` }), h("ul", {}, items)));
}

/** A unified diff with added/removed lines coloured. */
export function renderDiff(text) {
  if (!text) return h("p", { class: "notice notice-info", text: "No differences." });
  return h("div", { class: "diff" }, text.split("\n").map((line) => {
    let cls = null;
    if (line.startsWith("@@")) cls = "hunk";
    else if (line.startsWith("+") && !line.startsWith("+++")) cls = "add";
    else if (line.startsWith("-") && !line.startsWith("---")) cls = "del";
    return h("div", { class: cls, text: line || " " });
  }));
}
