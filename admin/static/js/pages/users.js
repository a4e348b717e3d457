// Users and roles (admin only): list, create, change role / PHI access / disabled, reset password.
import { get, patch, post } from "../api.js";
import { busy, describe, fill, flash, h, pageHead, panel, table, when } from "../dom.js";

const ROLES = ["viewer", "analyst", "admin"];

function roleSelect(value, name = "role") {
  return h("select", { name }, ROLES.map((r) => h("option", { value: r, text: r, selected: r === value })));
}

function createForm(reload) {
  const form = h("form", { class: "inline-form" },
    h("label", {}, "Username", h("input", { name: "username", required: true, maxlength: "64", autocomplete: "off" })),
    h("label", {}, "Password (min. 8)", h("input", { name: "password", type: "password", required: true, minlength: "8", autocomplete: "new-password" })),
    h("label", {}, "Role", roleSelect("viewer")),
    h("label", { class: "inline" }, h("input", { type: "checkbox", name: "can_view_phi" }), "PHI access"),
    h("button", { class: "btn btn-primary", type: "submit" }, "Create user"));
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    busy(form.querySelector("button"), async () => {
      try {
        const field = (name) => form.elements.namedItem(name);
        const user = await post("/api/users", {
          username: field("username").value.trim(), password: field("password").value,
          role: field("role").value, can_view_phi: field("can_view_phi").checked,
        });
        flash(`User ${user.username} created`);
        form.reset();
        await reload();
      } catch (error) {
        flash(`Not created: ${describe(error)}`, "error");
      }
    });
  });
  return form;
}

function passwordDialog(user) {
  const input = h("input", { type: "password", minlength: "8", required: true, autocomplete: "new-password" });
  const dialog = h("dialog", {});
  const form = h("form", { class: "stack" },
    h("h2", { text: `New password for ${user.username}` }),
    h("label", {}, "Password (min. 8 characters)", input),
    h("div", { class: "actions" },
      h("button", { class: "btn", type: "button", on: { click: () => dialog.close() } }, "Cancel"),
      h("button", { class: "btn btn-primary", type: "submit" }, "Set password")));
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    busy(form.querySelector("button[type=submit]"), async () => {
      try {
        await post(`/api/users/${user.id}/password`, { password: input.value });
        flash(`Password of ${user.username} reset`);
        dialog.close();
      } catch (error) {
        flash(`Not changed: ${describe(error)}`, "error");
      }
    });
  });
  dialog.append(form);
  dialog.addEventListener("close", () => dialog.remove());
  document.body.append(dialog);
  dialog.showModal();
}

function userRow(user, self, reload) {
  const role = roleSelect(user.role);
  const phi = h("input", { type: "checkbox", checked: user.can_view_phi, "aria-label": "PHI access" });
  const disabled = h("input", { type: "checkbox", checked: user.disabled, "aria-label": "Disabled" });
  const isSelf = user.username === self;
  if (isSelf) {
    // Demoting or disabling yourself would lock the last admin out mid-session.
    role.disabled = true;
    disabled.disabled = true;
  }
  const save = h("button", { class: "btn btn-small", type: "button" }, "Save");
  save.addEventListener("click", () => busy(save, async () => {
    const change = {};
    if (role.value !== user.role) change.role = role.value;
    if (phi.checked !== user.can_view_phi) change.can_view_phi = phi.checked;
    if (disabled.checked !== user.disabled) change.disabled = disabled.checked;
    if (!Object.keys(change).length) return;
    try {
      await patch(`/api/users/${user.id}`, change);
      flash(`Saved ${user.username}`);
      await reload();
    } catch (error) {
      flash(`Not saved: ${describe(error)}`, "error");
    }
  }));
  const reset = h("button", { class: "btn btn-small", type: "button", on: { click: () => passwordDialog(user) } }, "Reset password");
  return h("tr", { data: { user: user.username } },
    h("td", {}, h("strong", { text: user.username }), isSelf ? h("span", { class: "muted", text: " (you)" }) : null),
    h("td", {}, role), h("td", {}, phi), h("td", {}, disabled),
    h("td", { class: "nowrap", text: when(user.created_at) }),
    h("td", {}, h("div", { class: "row-actions" }, save, reset)));
}

async function accessLog(box) {
  try {
    const rows = (await get("/api/access-log?limit=50")).map((r) => [
      { cls: "nowrap", value: when(r.at) }, r.username, r.action,
      r.message_id ? h("a", { href: `#/messages/${r.message_id}`, text: `#${r.message_id}` }) : "—",
    ]);
    fill(box, table([{ label: "At" }, { label: "User" }, { label: "Action" }, { label: "Message" }], rows, "No access yet."));
  } catch (error) {
    fill(box, h("p", { class: "notice notice-info", text: describe(error) }));
  }
}

export async function render(root, _route, app) {
  root.append(pageHead("Users & roles", "viewer: read only · analyst: edit and reprocess · admin: also users"));
  if (!app.can("admin")) {
    root.append(h("p", { class: "notice notice-info", text: "Only administrators manage users." }));
    return;
  }
  const list = h("div", {});
  const log = h("div", {});
  const reload = async () => {
    const users = await get("/api/users");
    fill(list, table([{ label: "User" }, { label: "Role" }, { label: "PHI access" }, { label: "Disabled" },
      { label: "Created" }, { label: "" }], users.map((u) => userRow(u, app.session.username, reload))));
  };
  root.append(panel("Users", list), panel("New user", h("div", { class: "panel-body" }, createForm(reload))),
    panel("Recent access to patient data", log));
  await Promise.all([reload(), accessLog(log)]);
}
