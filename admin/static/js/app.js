// The single-page app: session, navigation, hash routing, and per-route polling.
import { changePasswordDialog } from "./account.js";
import { get, loadSession, logout, toLogin } from "./api.js";
import { errorBox, fill, h } from "./dom.js";
import * as alerts from "./pages/alerts.js";
import * as audit from "./pages/audit.js";
import * as channelEdit from "./pages/channel_edit.js";
import * as channels from "./pages/channels.js";
import * as dashboard from "./pages/dashboard.js";
import * as messageDetail from "./pages/message_detail.js";
import * as messages from "./pages/messages.js";
import * as reading from "./pages/reading.js";
import * as testbench from "./pages/testbench.js";
import * as users from "./pages/users.js";
import * as worklist from "./pages/worklist.js";

const RANKS = { viewer: 0, analyst: 1, admin: 2 };

/** Route name -> [page for the list, page for "<name>/<id>"]. */
const ROUTES = {
  dashboard: [dashboard],
  channels: [channels, channelEdit],
  messages: [messages, messageDetail],
  testbench: [testbench],
  worklist: [worklist],
  reading: [reading],
  audit: [audit],
  alerts: [alerts],
  users: [users],
};

let timers = [];

const app = {
  session: null,
  /** True if the user has at least `role`. */
  can(role) {
    return RANKS[this.session.role] >= RANKS[role];
  },
  /** Run fn now and every `ms` while this route stays open. */
  every(ms, fn) {
    fn();
    timers.push(window.setInterval(fn, ms));
  },
  go(hash) {
    window.location.hash = hash;
  },
  /** Update the open-alerts count in the navigation now. */
  refreshAlerts() {
    return refreshAlertCount();
  },
};

/** "#/messages/12?status=ERROR" -> {name: "messages", id: "12", params}. */
function parseHash() {
  const raw = window.location.hash.replace(/^#\/?/, "");
  const [path, search = ""] = raw.split("?");
  const [name, ...rest] = path.split("/");
  return {
    name: name || "dashboard",
    id: rest.length ? decodeURIComponent(rest.join("/")) : null,
    params: new URLSearchParams(search),
  };
}

async function route() {
  for (const timer of timers) window.clearInterval(timer);
  timers = [];
  const { name, id, params } = parseHash();
  const pages = ROUTES[name];
  for (const link of document.querySelectorAll("#nav a")) {
    link.classList.toggle("active", link.dataset.route === name);
  }
  const root = h("div", {});
  fill(document.getElementById("page"), root);
  // Notes of the page left behind go; one raised just before this navigation stays.
  for (const note of document.querySelectorAll("#flash > .notice")) {
    if (Date.now() - Number(note.dataset.at) > 1000) note.remove();
  }
  // Tests (and screenshots) wait for this: the page has finished its first load.
  delete document.body.dataset.loaded;
  if (!pages) {
    root.append(errorBox(new Error(`No page "${name}".`)));
    return;
  }
  const page = id !== null && pages[1] ? pages[1] : pages[0];
  document.title = `${name[0].toUpperCase()}${name.slice(1)} · Meridian`;
  try {
    await page.render(root, { id, params }, app);
  } catch (error) {
    root.append(errorBox(error));
  }
  document.body.dataset.loaded = name;
}

function showUser(session) {
  const who = document.getElementById("who");
  fill(who, "Signed in as ", h("strong", { text: session.username }), h("br"),
    `${session.role}${session.can_view_phi ? " · PHI access" : " · no PHI access"}`);
  for (const item of document.querySelectorAll("[data-admin-only]")) {
    item.hidden = session.role !== "admin";
  }
}

/** The open-alerts count next to "Alerts"; also notices an expired session (401). */
async function refreshAlertCount() {
  try {
    const open = await get("/api/alerts?open_only=true&limit=100");
    const badge = document.getElementById("alert-count");
    badge.textContent = String(open.length);
    badge.hidden = open.length === 0;
  } catch {
    // No alerts endpoint (older hub) or a transient error: leave the count as it is.
  }
}

async function start() {
  const session = await loadSession();
  if (!session) {
    toLogin("expired");
    return;
  }
  app.session = session;
  showUser(session);
  document.getElementById("logout").addEventListener("click", () => logout());
  document.getElementById("change-password").addEventListener("click", changePasswordDialog);
  // Back to the login page when the session runs out, even on an idle page.
  const left = new Date(session.expires_at).getTime() - Date.now();
  if (left > 0 && left < 2 ** 31) window.setTimeout(() => toLogin("expired"), left + 1000);
  window.addEventListener("hashchange", route);
  refreshAlertCount();
  window.setInterval(refreshAlertCount, 30000);
  await route();
}

start();
