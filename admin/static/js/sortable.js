// A table whose columns sort on click. Columns: {label, value(item), render?(item), cls?, row?}.
import { fill, h } from "./dom.js";

function compare(a, b) {
  if (a === b) return 0;
  if (a === null || a === undefined || a === "") return 1;
  if (b === null || b === undefined || b === "") return -1;
  if (typeof a === "number" && typeof b === "number") return a - b;
  return String(a).localeCompare(String(b), undefined, { numeric: true });
}

/** sortableTable(columns, items, {sortBy, desc, rowClass, empty}) -> element. */
export function sortableTable(columns, items, options = {}) {
  let sortBy = options.sortBy ?? 0;
  let desc = Boolean(options.desc);
  const body = h("tbody", {});
  const heads = columns.map((col, index) => {
    const th = h("th", { class: `sortable ${col.cls || ""}`, scope: "col", tabindex: "0", text: col.label,
      title: "Sort" });
    const sort = () => {
      desc = sortBy === index ? !desc : false;
      sortBy = index;
      draw();
    };
    th.addEventListener("click", sort);
    th.addEventListener("keydown", (e) => e.key === "Enter" && sort());
    return th;
  });

  function draw() {
    heads.forEach((th, index) => {
      th.classList.toggle("sorted-asc", index === sortBy && !desc);
      th.classList.toggle("sorted-desc", index === sortBy && desc);
      th.setAttribute("aria-sort", index === sortBy ? (desc ? "descending" : "ascending") : "none");
    });
    const col = columns[sortBy];
    const sorted = [...items].sort((a, b) => (desc ? -1 : 1) * compare(col.value(a), col.value(b)));
    if (!sorted.length) {
      fill(body, h("tr", {}, h("td", { class: "empty", colspan: columns.length, text: options.empty || "Nothing to show." })));
      return;
    }
    fill(body, sorted.map((item) => h("tr", { class: options.rowClass ? options.rowClass(item) : null },
      columns.map((c) => h("td", { class: c.cls }, c.render ? c.render(item) : displayed(c.value(item)))))));
  }

  draw();
  return h("div", { class: "table-wrap" }, h("table", { class: "grid" }, h("thead", {}, h("tr", {}, heads)), body));
}

function displayed(value) {
  return value === null || value === undefined || value === "" ? "—" : String(value);
}
