// The UI's entry: reads the view from the URL, wires the filters, the events table, the
// dashboard, the event detail and the triage dialog, and keeps the URL in step.

import { get, startSession } from "./api.js";
import { clear, h, toast } from "./dom.js";
import { renderDashboard } from "./dashboard.js";
import { DetailView } from "./detail.js";
import { EventsView } from "./events.js";
import { plural } from "./format.js";
import {
  CONTAINER_FIELD, NAMESPACE_FIELD, apiFilters, fieldValueOf, isPreset, readState, withField,
  writeState,
} from "./state.js";
import { TriageDialog } from "./triage.js";

const form = document.getElementById("filters");
const actorInput = document.getElementById("actor");
let state = readState();
let session = null;
let listed = ""; // the filters the table and counts show
let stats = null;
let arrivedSinceCount = 0;

const actor = () => actorInput.value.trim();
// The time range of the hub's whole store: stats default to the last 24 h otherwise.
const keptSince = () => `${Math.ceil(session.retention.maxage_s)}s`;

const events = new EventsView({
  onSelect: (uuid) => navigate({ event: uuid }),
  onLive: (status, title) => {
    const live = document.getElementById("live");
    live.dataset.status = status;
    live.textContent = status;
    live.title = title;
  },
  onArrived: (n) => {
    arrivedSinceCount += n;
    showCount();
  },
});

const detail = new DetailView({
  onClose: () => navigate({ event: "" }),
  onTriage: (ev, status) => triage.open(ev, status),
  onFilter: (change) => {
    if (change.field) navigate({ fields: [...state.fields, change.field], event: "" });
    else navigate({ ...change, event: "" });
  },
});

const triage = new TriageDialog({
  actor,
  since: keptSince,
  hubFields: () => session.customfields,
  onDone: (uuid, status, many) => {
    if (many) refresh(true);
    else events.setTriage(uuid, status);
    if (detail.uuid === uuid) detail.show(uuid);
  },
});

function navigate(change, replace = false) {
  state = { ...state, ...change };
  writeState(state, replace);
  refresh();
}

// The form shows the state; the state comes from the URL.
function fillForm() {
  for (const key of ["priority", "rule", "source", "hostname", "tag", "triage", "q"]) {
    form.elements[key].value = state[key];
  }
  form.elements.container.value = fieldValueOf(state, CONTAINER_FIELD);
  form.elements.namespace.value = fieldValueOf(state, NAMESPACE_FIELD);
  const custom = !isPreset(state.since) || Boolean(state.until);
  form.elements.range.value = custom ? "custom" : (state.since === "all" ? "" : state.since);
  document.getElementById("custom-range").hidden = !custom;
  form.elements.since.value = custom ? toLocalInput(state.since) : "";
  form.elements.until.value = custom ? toLocalInput(state.until) : "";
  const chips = clear(document.getElementById("field-chips"));
  for (const field of state.fields) {
    if (field.startsWith(`${CONTAINER_FIELD}:`) || field.startsWith(`${NAMESPACE_FIELD}:`)) continue;
    chips.append(h("button", { type: "button", class: "chip", title: "remove this filter",
      onclick: () => navigate({ fields: state.fields.filter((f) => f !== field) }),
      text: `${field} ×` }));
  }
  for (const tab of document.querySelectorAll(".tabs a")) {
    tab.classList.toggle("active", tab.dataset.view === state.view);
  }
}

function toLocalInput(rfc3339) {
  const m = /^(\d{4}-\d\d-\d\dT\d\d:\d\d(:\d\d)?)/.exec(rfc3339 || "");
  return m ? m[1] : "";
}

// The inputs are in UTC. A datetime-local value leaves out zero seconds ("12:05" for
// 12:05:00), which RFC3339 requires.
function fromLocalInput(value) {
  return /T\d\d:\d\d$/.test(value) ? `${value}:00Z` : `${value}Z`;
}

function fromForm() {
  const f = form.elements;
  let fields = withField(state.fields, CONTAINER_FIELD, f.container.value.trim());
  fields = withField(fields, NAMESPACE_FIELD, f.namespace.value.trim());
  const next = { ...state, fields, event: "" };
  for (const key of ["priority", "rule", "source", "hostname", "tag", "triage", "q"]) {
    next[key] = f[key].value.trim();
  }
  if (f.range.value === "custom") {
    next.since = f.since.value ? fromLocalInput(f.since.value) : "all";
    next.until = f.until.value ? fromLocalInput(f.until.value) : "";
  } else {
    next.since = f.range.value || "all";
    next.until = "";
  }
  return next;
}

function showCount() {
  const el = document.getElementById("match-count");
  if (!stats) {
    el.textContent = "counting…";
    return;
  }
  const total = stats.total + arrivedSinceCount;
  el.textContent = `${plural(total, "event")} match`;
  el.dataset.total = String(total);
}

async function loadCounts(filters) {
  stats = null;
  arrivedSinceCount = 0;
  showCount();
  const params = { ...filters };
  if (!params.since) params.since = keptSince();
  try {
    const result = await get("/api/v1/stats", params);
    if (listed !== JSON.stringify(filters)) return;
    stats = result;
    showCount();
    fillLists(result);
    if (state.view === "dashboard") renderDashboard(result, (change) => pick(change));
    document.body.dataset.statsLoaded = listed;
  } catch (err) {
    document.getElementById("match-count").textContent = `cannot count: ${err.message}`;
  }
}

function pick(change) {
  navigate({ ...change, view: "events", event: "" });
}

function fillLists(result) {
  for (const [id, counts] of [["rule-names", result.by_rule], ["source-names", result.by_source],
    ["host-names", result.by_hostname], ["tag-names", result.by_tag]]) {
    clear(document.getElementById(id)).append(
      ...Object.keys(counts).sort().map((name) => h("option", { value: name })));
  }
}

function refresh(force = false) {
  fillForm();
  document.getElementById("view-events").hidden = state.view !== "events";
  document.getElementById("view-dashboard").hidden = state.view !== "dashboard";
  const filters = apiFilters(state);
  const key = JSON.stringify(filters);
  if (force || key !== listed) {
    listed = key;
    events.load(state);
    loadCounts(filters);
  } else if (state.view === "dashboard" && stats) {
    renderDashboard(stats, (change) => pick(change));
  }
  events.select(state.event);
  if (state.event && state.event !== detail.uuid) detail.show(state.event);
  if (!state.event) detail.hide();
}

form.addEventListener("submit", (e) => {
  e.preventDefault();
  state = fromForm();
  writeState(state);
  refresh();
});
form.elements.range.addEventListener("change", () => {
  const custom = form.elements.range.value === "custom";
  document.getElementById("custom-range").hidden = !custom;
  if (!custom) form.requestSubmit();
});
for (const name of ["priority", "triage"]) {
  form.elements[name].addEventListener("change", () => form.requestSubmit());
}
document.getElementById("clear-filters").addEventListener("click", () => {
  navigate({ priority: "", rule: "", source: "", hostname: "", tag: "", triage: "", q: "",
             fields: [], since: "24h", until: "", event: "" });
});
for (const tab of document.querySelectorAll(".tabs a")) {
  tab.addEventListener("click", (e) => {
    e.preventDefault();
    if (tab.dataset.view === "dashboard" && state.view !== "dashboard") loadCounts(apiFilters(state));
    navigate({ view: tab.dataset.view, event: "" });
  });
}
window.addEventListener("popstate", () => {
  state = readState();
  refresh();
});
document.addEventListener("keydown", (e) => {
  if (e.key === "Escape" && state.event && !document.querySelector("dialog[open]")) {
    navigate({ event: "" });
  }
});
actorInput.value = localStorage.getItem("lanner.actor") || "";
actorInput.addEventListener("change", () => localStorage.setItem("lanner.actor", actor()));

try {
  session = await startSession();
  refresh();
} catch (err) {
  toast(`Cannot reach the hub: ${err.message}`, "error");
}
