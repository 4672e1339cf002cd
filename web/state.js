// The view's state lives in the URL, so a view can be shared and Back works: filters, time
// range, the tab and the selected event.

export const FILTER_KEYS = ["priority", "rule", "source", "hostname", "tag", "triage", "q"];
export const CONTAINER_FIELD = "container.name";
export const NAMESPACE_FIELD = "k8s.ns.name";
export const DEFAULT_RANGE = "24h";
const PRESETS = new Set(["15m", "1h", "24h", "7d", "all"]);

export function readState(search = location.search) {
  const p = new URLSearchParams(search);
  const state = { view: p.get("view") === "dashboard" ? "dashboard" : "events",
                  event: p.get("event") || "", fields: p.getAll("field") };
  for (const key of FILTER_KEYS) state[key] = p.get(key) || "";
  state.since = p.get("since") || DEFAULT_RANGE;
  state.until = p.get("until") || "";
  return state;
}

export function isPreset(since) {
  return PRESETS.has(since);
}

export function toSearch(state) {
  const p = new URLSearchParams();
  if (state.view !== "events") p.set("view", state.view);
  for (const key of FILTER_KEYS) if (state[key]) p.set(key, state[key]);
  for (const field of state.fields) p.append("field", field);
  if (state.since !== DEFAULT_RANGE) p.set("since", state.since);
  if (state.until) p.set("until", state.until);
  if (state.event) p.set("event", state.event);
  const text = p.toString();
  return text ? `?${text}` : "";
}

export function writeState(state, replace = false) {
  const url = `${location.pathname}${toSearch(state)}`;
  if (url === `${location.pathname}${location.search}`) return;
  if (replace) history.replaceState(null, "", url);
  else history.pushState(null, "", url);
}

// The events/stats API parameters of a state.
export function apiFilters(state) {
  const params = { field: state.fields };
  for (const key of FILTER_KEYS) params[key] = state[key];
  if (state.since !== "all") params.since = state.since;
  params.until = state.until;
  return params;
}

export function fieldValueOf(state, name) {
  const prefix = `${name}:`;
  const found = state.fields.find((f) => f.startsWith(prefix));
  return found === undefined ? "" : found.slice(prefix.length);
}

export function withField(fields, name, value) {
  const rest = fields.filter((f) => !f.startsWith(`${name}:`));
  return value ? [...rest, `${name}:${value}`] : rest;
}
