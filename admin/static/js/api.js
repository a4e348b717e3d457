// Calls to the admin API: JSON in and out, the CSRF token on every write, 401 -> login page.

let csrfToken = "";

/** An answer other than 2xx; `detail` is FastAPI's error body (a string or an object). */
export class ApiError extends Error {
  constructor(status, detail) {
    super(typeof detail === "string" ? detail : `HTTP ${status}`);
    this.status = status;
    this.detail = detail;
  }

  /** Channel-file errors of a 422 (`{detail: {errors: [...]}}`), else []. */
  get channelErrors() {
    return this.detail && Array.isArray(this.detail.errors) ? this.detail.errors : [];
  }
}

let leaving = false;

/** Leave for the login page, coming back to the current route afterwards (once). */
export function toLogin(reason) {
  // Several calls may fail with 401 at once; a second navigation would abort the first.
  if (leaving) return;
  leaving = true;
  const params = new URLSearchParams();
  if (reason) params.set(reason, "1");
  if (window.location.hash) params.set("next", window.location.hash);
  window.location.assign(`/login?${params}`);
}

/** Load the session (user, role, PHI access, CSRF token); null when logged out. */
export async function loadSession() {
  const response = await fetch("/api/session", { credentials: "same-origin" });
  if (response.status === 401) return null;
  if (!response.ok) throw new ApiError(response.status, "could not load the session");
  const session = await response.json();
  csrfToken = session.csrf_token;
  return session;
}

async function errorOf(response) {
  let detail = `HTTP ${response.status}`;
  try {
    const body = await response.json();
    if (body && body.detail !== undefined) detail = body.detail;
  } catch {
    // Not JSON: keep the status line.
  }
  if (Array.isArray(detail)) {
    // FastAPI request validation: a list of {loc, msg}.
    detail = detail.map((item) => `${(item.loc || []).slice(1).join(".")}: ${item.msg}`).join("; ");
  }
  return new ApiError(response.status, detail);
}

/** One API call; returns parsed JSON (or null for 204). Throws ApiError. */
export async function call(method, path, body) {
  const headers = { Accept: "application/json" };
  if (method !== "GET") headers["X-CSRF-Token"] = csrfToken;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, {
    method,
    headers,
    credentials: "same-origin",
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (response.status === 401 && path !== "/api/session/password") {
    toLogin("expired");
    throw new ApiError(401, "login required");
  }
  if (!response.ok) throw await errorOf(response);
  if (response.status === 204) return null;
  return response.json();
}

export const get = (path) => call("GET", path);
export const post = (path, body) => call("POST", path, body === undefined ? {} : body);
export const put = (path, body) => call("PUT", path, body);
export const patch = (path, body) => call("PATCH", path, body);

/** A query string from an object, leaving out empty values (false is sent as "false"). */
export function query(params) {
  const search = new URLSearchParams();
  for (const [key, value] of Object.entries(params)) {
    if (value !== undefined && value !== null && value !== "") {
      search.set(key, String(value));
    }
  }
  const text = search.toString();
  return text ? `?${text}` : "";
}

/** End the session and go to the login page. */
export async function logout() {
  try {
    await call("POST", "/api/logout");
  } finally {
    window.location.assign("/login?logged_out=1");
  }
}
