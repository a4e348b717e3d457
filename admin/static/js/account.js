// "Change my password" from the sidebar: POST /api/session/password.
import { post } from "./api.js";
import { busy, describe, fill, flash, h } from "./dom.js";

/** Open the dialog (it removes itself when closed). */
export function changePasswordDialog() {
  const current = h("input", { type: "password", required: true, autocomplete: "current-password" });
  const next = h("input", { type: "password", required: true, minlength: "8", autocomplete: "new-password" });
  const again = h("input", { type: "password", required: true, minlength: "8", autocomplete: "new-password" });
  const problem = h("div", {});
  const dialog = h("dialog", {});
  const submit = h("button", { class: "btn btn-primary", type: "submit" }, "Change password");
  const form = h("form", { class: "stack" },
    h("h2", { text: "Change my password" }),
    h("label", {}, "Current password", current),
    h("label", {}, "New password (min. 8 characters)", next),
    h("label", {}, "New password again", again),
    problem,
    h("div", { class: "actions" },
      h("button", { class: "btn", type: "button", on: { click: () => dialog.close() } }, "Cancel"), submit));
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    if (next.value !== again.value) {
      fill(problem, h("p", { class: "notice notice-error", text: "The new passwords differ." }));
      return;
    }
    busy(submit, async () => {
      try {
        await post("/api/session/password", { current_password: current.value, new_password: next.value });
        flash("Password changed. Your other sessions were signed out.");
        dialog.close();
      } catch (error) {
        const text = error.status === 403 ? "The current password is wrong." : describe(error);
        fill(problem, h("p", { class: "notice notice-error", text }));
      }
    });
  });
  dialog.append(form);
  dialog.addEventListener("close", () => dialog.remove());
  document.body.append(dialog);
  dialog.showModal();
}
