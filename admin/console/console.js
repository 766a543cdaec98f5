// The console's entry point: sign-in, the views and the hash routes
// between them (#/overview, #/topics, #/topics/NAME, #/connections), and
// the one place errors are shown. Nothing here throws to the browser: every
// failure, the API's or the page's own, ends in the error banner.

import { ApiError, api, forgetCredential, storeCredential, storedCredential } from "./api.js";
import { Overview } from "./overview.js";
import { ConnectionsView, TopicView, TopicsView } from "./tables.js";

/// How long a notice stays up.
const NOTICE_MS = 10_000;

const banner = document.getElementById("error");
const noticeBox = document.getElementById("notice");
let bannerSource = null;
let noticeTimer = null;

/// Fills an error box (the banner or the sign-in one) with the API's
/// status, code and message; errors of the page itself get the code
/// `console_error` and their message, never a stack trace.
function fill(box, error) {
  const apiError = error instanceof ApiError;
  box.querySelector("[data-status]").textContent = apiError && error.status > 0 ? String(error.status) : "";
  box.querySelector("[data-code]").textContent = apiError ? error.code : "console_error";
  box.querySelector("[data-message]").textContent = String(error?.message ?? error);
  box.hidden = false;
}

const ui = {
  /// `source` names what failed, so its next success can clear it.
  showError(error, source = null) {
    if (error instanceof ApiError && error.isAuthFailure) {
      signOut(error);
      return;
    }
    bannerSource = source;
    fill(banner, error);
  },
  clearError(source) {
    if (bannerSource === source && source !== null) banner.hidden = true;
  },
  notice(text) {
    noticeBox.textContent = text;
    noticeBox.hidden = false;
    clearTimeout(noticeTimer);
    noticeTimer = setTimeout(() => {
      noticeBox.hidden = true;
    }, NOTICE_MS);
  },
};

banner.querySelector("[data-dismiss]").addEventListener("click", () => {
  banner.hidden = true;
});
window.addEventListener("error", (event) => ui.showError(event.error ?? new Error(event.message)));
window.addEventListener("unhandledrejection", (event) => ui.showError(event.reason));

const overview = new Overview({
  root: document.getElementById("overview"),
  onError: (error) => ui.showError(error, "overview"),
  onOk: () => ui.clearError("overview"),
});
const topics = new TopicsView(ui);
const topic = new TopicView(ui);
const connections = new ConnectionsView(ui);

const sections = ["signin", "overview", "topics", "topic", "connections"].map((id) => document.getElementById(id));
const nav = document.getElementById("nav");
const who = document.getElementById("who");
const signOutButton = document.getElementById("sign-out");
const signinError = document.getElementById("signin-error");

function showSection(id) {
  for (const section of sections) section.hidden = section.id !== id;
  const tab = id === "topic" ? "topics" : id;
  for (const link of nav.querySelectorAll("a")) {
    if (link.dataset.view === tab) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
}

function route() {
  if (!storedCredential()) {
    showSection("signin");
    return;
  }
  const hash = window.location.hash.replace(/^#\/?/, "");
  const [view, ...rest] = hash.split("/");
  switch (view) {
    case "topics":
      if (rest.length > 0 && rest.join("/") !== "") {
        let name;
        try {
          name = decodeURIComponent(rest.join("/"));
        } catch {
          ui.showError(new Error("this link holds a malformed topic name"));
          window.location.hash = "#/topics";
          return;
        }
        showSection("topic");
        topic.show(name);
      } else {
        showSection("topics");
        topics.show();
      }
      break;
    case "connections":
      showSection("connections");
      connections.show();
      break;
    default:
      showSection("overview");
      overview.render();
  }
}

function signedIn(kind) {
  document.body.dataset.signedIn = "true";
  nav.hidden = false;
  who.hidden = false;
  who.textContent = kind;
  signOutButton.hidden = false;
  signinError.hidden = true;
  overview.start();
  route();
}

/// Back to the sign-in form; `error` (a refused credential) is shown there.
function signOut(error) {
  forgetCredential();
  overview.stop();
  document.body.dataset.signedIn = "false";
  nav.hidden = true;
  who.hidden = true;
  signOutButton.hidden = true;
  banner.hidden = true;
  if (error) fill(signinError, error);
  else signinError.hidden = true;
  showSection("signin");
  document.getElementById("signin").dataset.state = "ready";
}

/// Tokens are JWTs (three base64url parts); anything else is an API key.
function credentialKind(credential) {
  return credential.split(".").length === 3 ? "signed in with an admin token" : "signed in with an API key";
}

document.getElementById("signin-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const input = document.getElementById("credential");
  const credential = input.value.trim();
  const section = document.getElementById("signin");
  section.dataset.state = "checking";
  signinError.hidden = true;
  try {
    // Any protected route checks the credential; this one is cheap.
    await api("GET", "v1/topics", { query: { limit: 1 }, credential });
  } catch (error) {
    section.dataset.state = "refused";
    fill(signinError, error);
    return;
  }
  input.value = "";
  storeCredential(credential);
  section.dataset.state = "ready";
  signedIn(credentialKind(credential));
});

signOutButton.addEventListener("click", () => signOut(null));
window.addEventListener("hashchange", () => {
  if (storedCredential()) route();
});

// A reload keeps the session (session storage survives it, a new tab
// does not): check the stored credential once, then go on.
(async () => {
  const credential = storedCredential();
  if (!credential) {
    signOut(null);
    return;
  }
  try {
    await api("GET", "v1/topics", { query: { limit: 1 } });
    signedIn(credentialKind(credential));
  } catch (error) {
    if (error instanceof ApiError && error.isAuthFailure) signOut(error);
    else {
      signedIn(credentialKind(credential));
      ui.showError(error);
    }
  }
})();
