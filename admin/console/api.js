// The admin API as the page sees it: the credential (this tab's session
// storage only), requests relative to the page, and every failure turned
// into an ApiError with the API's own {code, message}.

const CREDENTIAL_KEY = "sockeye.console.credential";

/// Longest wait for one API answer before the page reports a timeout.
const REQUEST_TIMEOUT_MS = 10_000;

/// The API lives one level above the page (`/console/` -> `/`), so the
/// console also works behind a reverse proxy's path prefix.
const API_BASE = new URL("../", window.location.href);

export function storedCredential() {
  return sessionStorage.getItem(CREDENTIAL_KEY);
}

export function storeCredential(credential) {
  sessionStorage.setItem(CREDENTIAL_KEY, credential);
}

export function forgetCredential() {
  sessionStorage.removeItem(CREDENTIAL_KEY);
}

/// A failed request. `code` and `message` are the API's when it answered
/// with its error body; otherwise the console says what happened, with a
/// code of its own (`unreachable`, `timeout`, `bad_response`).
export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.code = code;
  }

  /// The credential was refused: the user has to sign in again.
  get isAuthFailure() {
    return this.status === 401 || this.status === 403;
  }
}

/// Calls the API. `path` is relative to the listener's root (`v1/stats`);
/// `query` an object of parameters (undefined and null ones are left out);
/// `body` is sent as JSON. Returns the parsed JSON body, or the text with
/// `{ text: true }`. Throws ApiError, never anything else.
export async function api(method, path, { query, body, text = false, credential } = {}) {
  const url = new URL(path, API_BASE);
  for (const [name, value] of Object.entries(query ?? {})) {
    if (value !== undefined && value !== null && value !== "") {
      url.searchParams.set(name, String(value));
    }
  }
  const headers = { Accept: text ? "text/plain" : "application/json" };
  const bearer = credential ?? storedCredential();
  if (bearer) headers.Authorization = `Bearer ${bearer}`;
  const init = { method, headers, cache: "no-store", credentials: "omit", redirect: "error" };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const abort = new AbortController();
  const timer = setTimeout(() => abort.abort(), REQUEST_TIMEOUT_MS);
  init.signal = abort.signal;
  let response;
  let raw;
  try {
    response = await fetch(url, init);
    raw = await response.text();
  } catch (error) {
    if (abort.signal.aborted) {
      throw new ApiError(0, "timeout", `${method} /${path}: no answer within ${REQUEST_TIMEOUT_MS / 1000} s`);
    }
    throw new ApiError(0, "unreachable", `${method} /${path}: the admin API did not answer (${error.message})`);
  } finally {
    clearTimeout(timer);
  }
  if (!response.ok) throw errorOf(response, raw);
  if (text) return raw;
  if (raw === "") return null;
  try {
    return JSON.parse(raw);
  } catch {
    throw new ApiError(response.status, "bad_response", `${method} /${path}: the answer is not JSON`);
  }
}

function errorOf(response, raw) {
  try {
    const body = JSON.parse(raw);
    if (typeof body?.code === "string" && typeof body?.message === "string") {
      return new ApiError(response.status, body.code, body.message);
    }
  } catch {
    // Not the API's error body: a proxy in between, most likely.
  }
  const excerpt = raw.length > 200 ? `${raw.slice(0, 200)}…` : raw;
  return new ApiError(
    response.status,
    "bad_response",
    `HTTP ${response.status} ${response.statusText}${excerpt ? `: ${excerpt}` : ""}`,
  );
}

/// A path segment, escaped: topic names may hold characters URLs reserve.
export function segment(text) {
  return encodeURIComponent(text);
}
