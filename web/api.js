// The hub's JSON API. Reads ride on the session cookie; writes also send the CSRF token the
// hub hands to its own pages (GET /api/v1/session).

let csrf = "";

export class ApiError extends Error {
  constructor(status, message, field) {
    super(message);
    this.status = status;
    this.field = field;
  }
}

export function query(params) {
  const search = new URLSearchParams();
  for (const [key, value] of Object.entries(params)) {
    for (const item of Array.isArray(value) ? value : [value]) {
      if (item !== undefined && item !== null && item !== "") search.append(key, item);
    }
  }
  return search.toString();
}

// Integers beyond 2^53 (nanosecond times) keep their digits, as strings.
export function parseJson(text) {
  return JSON.parse(text, (key, value, context) =>
    typeof value === "number" && !Number.isSafeInteger(value) && context && /^-?\d+$/.test(context.source)
      ? context.source : value);
}

async function call(method, path, body, raw = false) {
  const headers = { accept: "application/json" };
  if (body !== undefined) headers["content-type"] = "application/json";
  if (method !== "GET") headers["x-csrf-token"] = csrf;
  const response = await fetch(path, {
    method, headers, credentials: "same-origin",
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (response.status === 401) {
    location.assign("/ui/" + location.search);  // the sign-in page keeps the view
    throw new ApiError(401, "signed out");
  }
  const text = await response.text();
  if (!response.ok) {
    let data = {};
    try { data = JSON.parse(text); } catch { /* not JSON: the status says it */ }
    throw new ApiError(response.status, data.error || `HTTP ${response.status}`, data.field);
  }
  return raw ? text : parseJson(text);
}

export function get(path, params = {}) {
  const q = query(params);
  return call("GET", q ? `${path}?${q}` : path);
}

export function getText(path) {
  return call("GET", path, undefined, true);
}

export function post(path, body) {
  return call("POST", path, body);
}

export async function startSession() {
  const session = await get("/api/v1/session");
  csrf = session.csrf;
  return session;
}
