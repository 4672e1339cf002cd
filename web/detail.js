// One event: every output field, tags, raw JSON, its delivery to each output (with a re-drive
// button for a dead letter), its triage and history.

import { ApiError, get, getText, parseJson, post } from "./api.js";
import { clear, h, toast } from "./dom.js";
import { TRIAGE, fieldValue, nsTime, plural, shortTime } from "./format.js";

const STATES = {
  queued: "queued", delivered: "delivered", retrying: "retrying", dead: "dead letter",
  aggregated: "aggregated",
};

export class DetailView {
  constructor({ onClose, onTriage, onFilter }) {
    this.el = document.getElementById("detail");
    this.onClose = onClose;
    this.onTriage = onTriage;
    this.onFilter = onFilter;
    this.uuid = "";
  }

  hide() {
    this.uuid = "";
    this.el.hidden = true;
    clear(this.el);
  }

  async show(uuid) {
    this.uuid = uuid;
    this.el.hidden = false;
    clear(this.el).append(h("p", { class: "muted", text: "loading…" }));
    const path = `/api/v1/events/${encodeURIComponent(uuid)}`;
    let text, deliveries, triage;
    try {
      [text, deliveries, triage] = await Promise.all(
        [getText(path), get(`${path}/deliveries`), get(`${path}/triage`)]);
    } catch (err) {
      if (this.uuid !== uuid) return;
      const gone = err instanceof ApiError && err.status === 404;
      clear(this.el).append(this.closeButton(), h("p", {
        class: "muted",
        text: gone ? "This event is not stored (any more): retention may have removed it."
          : `Cannot load the event: ${err.message}`,
      }));
      return;
    }
    if (this.uuid !== uuid) return; // another event was chosen meanwhile
    this.event = parseJson(text);
    this.render(text, deliveries.deliveries, triage);
  }

  closeButton() {
    return h("button", { class: "close quiet", title: "Close", "aria-label": "Close",
                         onclick: () => this.onClose(), text: "×" });
  }

  render(text, deliveries, triage) {
    const ev = this.event;
    const status = triage.current ? triage.current.status : "new";
    clear(this.el).append(
      this.closeButton(),
      h("div", { class: "detail-head" },
        h("span", { class: `prio prio-${ev.priority.toLowerCase()}`, text: ev.priority }),
        h("h2", { class: "detail-rule", text: ev.rule }),
        h("div", { class: "muted", title: ev.time, text: `${shortTime(ev.time)} UTC` })),
      h("p", { class: "detail-output", text: ev.output }),
      this.triageSection(status, triage),
      this.fieldsSection(ev),
      h("section", {}, h("h3", { text: "Tags" }),
        h("div", { class: "chips" }, ev.tags.length ? ev.tags.map((tag) =>
          h("button", { class: "chip", title: "show only this tag", text: tag,
                        onclick: () => this.onFilter({ tag }) })) : h("span", { class: "muted", text: "none" }))),
      h("section", {}, h("h3", { text: "Where" }), h("dl", { class: "facts" },
        h("dt", { text: "source" }), h("dd", { text: ev.source }),
        h("dt", { text: "hostname" }), h("dd", { text: ev.hostname || "—" }),
        h("dt", { text: "uuid" }), h("dd", { class: "mono", text: ev.uuid }))),
      this.deliverySection(deliveries),
      h("section", {}, h("h3", { text: "Raw JSON" }),
        h("pre", { class: "raw", id: "raw-json", text: pretty(text) })),
    );
  }

  triageSection(status, triage) {
    const current = triage.current;
    const buttons = [["acknowledged", "Acknowledge"], ["false_positive", "False positive…"],
                     ["resolved", "Resolve"], ["new", "Reopen"]]
      .filter(([value]) => value !== status)
      .map(([value, label]) => h("button", {
        class: value === "false_positive" ? "warn" : "", dataset: { triage: value },
        onclick: () => this.onTriage(this.event, value), text: label }));
    return h("section", { class: "triage-box" },
      h("h3", { text: "Triage" }),
      h("p", {}, h("span", { id: "detail-triage", class: `triage triage-${status}`,
                             text: TRIAGE[status] }),
        current ? ` by ${current.actor}, ${nsTime(current.at_ns)} UTC` : ""),
      current && current.note ? h("blockquote", { text: current.note }) : null,
      h("div", { class: "buttons" }, buttons),
      triage.history.length > 1 ? h("details", {},
        h("summary", { text: `history (${triage.history.length})` }),
        h("ol", { class: "history" }, triage.history.map((t) => h("li", {},
          `${nsTime(t.at_ns)} — ${TRIAGE[t.status]} by ${t.actor}`,
          t.note ? h("div", { class: "muted", text: t.note }) : null)))) : null);
  }

  fieldsSection(ev) {
    const names = Object.keys(ev.output_fields).sort();
    return h("section", {}, h("h3", { text: `Output fields (${names.length})` }),
      h("table", { class: "fields" }, h("tbody", {}, names.map((name) => {
        const value = ev.output_fields[name];
        const filterable = value !== null && typeof value !== "object";
        return h("tr", {},
          h("th", { text: name }),
          h("td", { class: value === null ? "muted" : "", text: fieldValue(value) }),
          h("td", {}, filterable ? h("button", {
            class: "quiet small", title: `show only events with ${name} = this value`,
            onclick: () => this.onFilter({ field: `${name}:${fieldValue(value)}` }), text: "filter" })
            : null));
      }))));
  }

  deliverySection(deliveries) {
    if (!deliveries.length) {
      return h("section", {}, h("h3", { text: "Delivery" }),
        h("p", { class: "muted", text: "No output takes this event." }));
    }
    return h("section", {}, h("h3", { text: "Delivery" }),
      h("table", { class: "deliveries" }, h("tbody", {}, deliveries.map((d) => h("tr", {
        dataset: { output: d.output, state: d.state } },
        h("th", { text: d.output }),
        h("td", {}, h("span", { class: `state state-${d.state}`, text: STATES[d.state] || d.state })),
        h("td", {}, this.deliveryDetail(d)))))));
  }

  deliveryDetail(d) {
    const parts = [];
    if (d.state === "retrying") {
      parts.push(`attempt ${d.attempts} failed: `, h("span", { class: "reason", text: d.reason }),
        h("div", { class: "muted", text: `next attempt ${nsTime(d.next_attempt_ns)} UTC` }));
    } else if (d.state === "dead") {
      parts.push(h("span", { class: "reason", text: d.reason }),
        h("div", { class: "muted", text: `after ${plural(d.attempts, "attempt")}` }),
        h("button", { class: "redrive", onclick: (e) => this.redrive(d, e.target),
                      text: "Re-drive" }));
    } else if (d.state === "aggregated") {
      parts.push(h("span", { class: "muted", text: d.reason }));
    } else if (d.state === "delivered") {
      parts.push(h("span", { class: "muted", text: `after ${plural(d.attempts, "attempt")}` }));
    }
    if (d.summary) {
      parts.push(h("div", { class: "muted",
        text: `summary of its repeats: ${STATES[d.summary.state] || d.summary.state}` }));
    }
    return parts;
  }

  async redrive(d, button) {
    button.disabled = true;
    try {
      const result = await post("/api/v1/deadletters/redrive", { output: d.output, ids: [d.dead_id] });
      toast(result.redriven ? `Queued for ${d.output} again` : "Already re-driven");
    } catch (err) {
      toast(`Re-drive failed: ${err.message}`, "error");
    }
    this.show(this.uuid);
  }
}

// Indents JSON text without parsing it into numbers: nanosecond timestamps and other big
// integers keep every digit.
export function pretty(text) {
  let out = "";
  let depth = 0;
  let inString = false;
  const pad = () => "\n" + "  ".repeat(depth);
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (inString) {
      out += c;
      if (c === "\\") out += text[++i];
      else if (c === '"') inString = false;
    } else if (c === '"') {
      inString = true;
      out += c;
    } else if (c === "{" || c === "[") {
      if (text[i + 1] === (c === "{" ? "}" : "]")) {
        out += c + text[++i];
      } else {
        depth++;
        out += c + pad();
      }
    } else if (c === "}" || c === "]") {
      depth--;
      out += pad() + c;
    } else if (c === ",") {
      out += "," + pad();
    } else if (c === ":") {
      out += ": ";
    } else if (!/\s/.test(c)) {
      out += c;
    }
  }
  return out;
}
