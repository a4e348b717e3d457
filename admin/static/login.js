// The login page: POST /api/login, then open the app (at the page asked for before login).
const form = document.getElementById("login-form");
const errorBox = document.getElementById("login-error");
const notice = document.getElementById("login-notice");
const submit = document.getElementById("login-submit");

const params = new URLSearchParams(window.location.search);
if (params.get("expired") === "1") {
  notice.textContent = "Your session expired. Please sign in again.";
  notice.hidden = false;
} else if (params.get("logged_out") === "1") {
  notice.textContent = "You are signed out.";
  notice.hidden = false;
}

/** Only a hash route of this app is a safe place to go back to (no open redirect). */
function target() {
  // A redirect from "/#/route" keeps the fragment: "/login#/route".
  const next = params.get("next") || window.location.hash || "";
  return /^#\/[\w\-./?=&%]*$/.test(next) ? "/" + next : "/";
}

function showError(text) {
  errorBox.textContent = text;
  errorBox.hidden = false;
}

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  errorBox.hidden = true;
  submit.disabled = true;
  try {
    const response = await fetch("/api/login", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      credentials: "same-origin",
      body: JSON.stringify({
        username: form.username.value.trim(),
        password: form.password.value,
      }),
    });
    if (response.ok) {
      window.location.assign(target());
      return;
    }
    if (response.status === 429) {
      const wait = response.headers.get("Retry-After");
      showError(`Too many failed attempts. Try again in ${wait || "a few"} seconds.`);
    } else if (response.status === 401) {
      showError("Wrong username or password.");
    } else {
      showError(`Sign-in failed (HTTP ${response.status}).`);
    }
  } catch {
    showError("The hub did not answer. Check the connection and try again.");
  } finally {
    submit.disabled = false;
  }
});
