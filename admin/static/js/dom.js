// DOM helpers. Everything rendered goes through textContent: data is never parsed as HTML.

/**
 * Build an element: h("td", {class: "num", on: {click: fn}, data: {id: 3}}, child, ...).
 * Children: strings/numbers (as text), nodes, arrays, null/undefined/false (skipped).
 */
export function h(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = String(value);
    else if (key === "on") for (const [type, fn] of Object.entries(value)) node.addEventListener(type, fn);
    else if (key === "data") for (const [name, v] of Object.entries(value)) node.dataset[name] = String(v);
    else if (key === "hidden" || key === "disabled" || key === "checked" || key === "selected") node[key] = Boolean(value);
    else if (key === "value") node.value = String(value);
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  append(node, children);
  return node;
}

function append(node, children) {
  for (const child of children) {
    if (child === undefined || child === null || child === false) continue;
    if (Array.isArray(child)) append(node, child);
    else node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

/** Replace a node's children. */
export function fill(node, ...children) {
  node.replaceChildren();
  append(node, children);
  return node;
}

const BADGE = {
  SENT: "ok", started: "ok", ok: "ok", READ: "ok", passed: "ok", COMPLETED: "ok",
  ERROR: "err", error: "err", critical: "err", failed: "err", stopped: "err",
  QUEUED: "warn", paused: "warn", warning: "warn", IN_PROGRESS: "warn", SCHEDULED: "info",
  RECEIVED: "info", TRANSFORMED: "info", UNREAD: "info", info: "info",
  FILTERED: "idle", undeployed: "idle", PENDING: "idle", disabled: "idle",
};

/** A coloured status badge that also says its status in words. */
export function badge(status, kind) {
  const text = status === null || status === undefined ? "—" : String(status);
  return h("span", { class: `badge badge-${kind || BADGE[text] || "idle"}`, text });
}

/** "hidden: no PHI access" in the muted style. */
export function phiHidden() {
  return h("span", { class: "hidden-phi", text: "hidden: no PHI access" });
}

/** A value, or a dash for null/empty. */
export function show(value) {
  return value === null || value === undefined || value === "" ? "—" : String(value);
}

/** An ISO time as local "YYYY-MM-DD HH:MM:SS". */
export function when(iso) {
  if (!iso) return "—";
  const stamp = new Date(iso);
  if (Number.isNaN(stamp.getTime())) return String(iso);
  const pad = (n) => String(n).padStart(2, "0");
  return `${stamp.getFullYear()}-${pad(stamp.getMonth() + 1)}-${pad(stamp.getDate())} ` +
    `${pad(stamp.getHours())}:${pad(stamp.getMinutes())}:${pad(stamp.getSeconds())}`;
}

/** Seconds as "42 s", "7 min", "3 h". */
export function age(seconds) {
  if (seconds === null || seconds === undefined) return "—";
  if (seconds < 120) return `${Math.round(seconds)} s`;
  if (seconds < 7200) return `${Math.round(seconds / 60)} min`;
  return `${Math.round(seconds / 3600)} h`;
}

/** Label/value pairs in a responsive grid: facts([["Status", node], ...]). */
export function facts(pairs) {
  return h("dl", { class: "facts" }, pairs.map(([label, value]) =>
    h("div", {}, h("dt", { text: label }), h("dd", {}, value))));
}

/** A page header with a title, an optional subtitle and action nodes. */
export function pageHead(title, sub, ...actions) {
  return h("div", { class: "page-head" },
    h("div", {}, h("h1", { text: title }), sub ? h("div", { class: "sub", text: sub }) : null),
    h("div", { class: "actions" }, actions));
}

/** A panel with a header (title + actions) and a body. */
export function panel(title, body, ...actions) {
  return h("section", { class: "panel" },
    h("div", { class: "panel-head" }, h("h2", { text: title }), h("div", { class: "actions" }, actions)),
    body);
}

/** A table: columns [{label, cls}], rows of cell arrays (a cell: node, text or {cls, value}). */
export function table(columns, rows, empty = "Nothing to show.") {
  const head = h("tr", {}, columns.map((col) => h("th", { class: col.cls, text: col.label })));
  const body = rows.length
    ? rows.map((row) => row instanceof Node ? row : h("tr", {}, row.map(cell)))
    : [h("tr", {}, h("td", { class: "empty", colspan: columns.length, text: empty }))];
  return h("div", { class: "table-wrap" }, h("table", { class: "grid" }, h("thead", {}, head), h("tbody", {}, body)));
}

/** One table cell. */
export function cell(value) {
  if (value && typeof value === "object" && !(value instanceof Node) && "value" in value) {
    return h("td", { class: value.cls }, value.value);
  }
  return h("td", {}, value);
}

/** A short-lived message at the top right ("ok" | "error" | "info" | "warn"). */
export function flash(text, kind = "ok") {
  const box = document.getElementById("flash");
  const note = h("div", { class: `notice notice-${kind}`, role: kind === "error" ? "alert" : "status", text,
    data: { at: Date.now() } });
  box.append(note);
  window.setTimeout(() => note.remove(), kind === "error" ? 9000 : 5000);
  return note;
}

/** An inline error notice for a failed load. */
export function errorBox(error) {
  return h("p", { class: "notice notice-error", text: describe(error) });
}

/** Words for an ApiError (or any error). */
export function describe(error) {
  if (error && error.status === 404) return `Not available: ${error.message}`;
  if (error && error.status === 403) return `Not allowed: ${error.message}`;
  return error && error.message ? error.message : String(error);
}

/** A button; `role` hides it for users below that role (see app.js can()). */
export function button(label, onClick, cls = "btn") {
  return h("button", { class: cls, type: "button", on: { click: onClick } }, label);
}

/** Run fn after `ms` of quiet. */
export function debounce(fn, ms) {
  let timer = 0;
  return (...args) => {
    window.clearTimeout(timer);
    timer = window.setTimeout(() => fn(...args), ms);
  };
}

/** Disable a button while an async action runs. */
export async function busy(btn, action) {
  btn.disabled = true;
  try {
    return await action();
  } finally {
    btn.disabled = false;
  }
}
