// The triage dialog: mark one event, or every stored event of its rule that shares the values
// of the fields ticked; for a false positive, the Falco exception made of those fields, how
// many stored events it would have silenced, and saving it to the hub's local rules file.

import { get, post, query } from "./api.js";
import { clear, h, toast } from "./dom.js";
import { TRIAGE, fieldValue, plural } from "./format.js";

// Unique to each event: useless in an exception or to find "the same" events.
const SKIPPED = /^evt\.(time|num|rawtime|reltime|datetime|outputtime)/;
const LIKELY = ["proc.name", "proc.exepath", "proc.pname", "container.image.repository",
  "k8s.ns.name", "user.name", "fd.name"];

export class TriageDialog {
  constructor({ actor, since, hubFields, onDone }) {
    this.dialog = document.getElementById("triage-dialog");
    this.actor = actor;
    this.hubFields = hubFields; // customfields: added by the hub, no rule sees them
    this.since = since; // the widest time range the hub keeps, for counts over every event
    this.onDone = onDone;
    this.timer = 0;
  }

  candidates(ev) {
    const names = Object.keys(ev.output_fields).filter((name) => {
      const value = ev.output_fields[name];
      return value !== null && typeof value !== "object" && !SKIPPED.test(name)
        && !this.hubFields().includes(name);
    });
    const rank = (name) => (LIKELY.includes(name) ? LIKELY.indexOf(name) : LIKELY.length);
    return names.sort((a, b) => rank(a) - rank(b) || a.localeCompare(b));
  }

  open(ev, status) {
    this.ev = ev;
    this.status = status;
    const fp = status === "false_positive";
    const fields = this.candidates(ev);
    this.boxes = fields.map((name) => h("input", {
      type: "checkbox", dataset: { field: name }, onchange: () => this.changed() }));
    this.count = h("span", { id: "triage-like-count", class: "muted" });
    this.note = h("textarea", { id: "triage-note", rows: 2, maxlength: 2000,
      placeholder: fp ? "why it is benign" : "optional" });
    this.who = h("input", { id: "triage-actor", maxlength: 64, required: true,
                            value: this.actor() });
    this.like = h("input", { type: "radio", name: "scope", value: "like",
                             onchange: () => this.changed() });
    clear(this.dialog).append(h("form", { method: "dialog", class: "triage-form",
                                          onsubmit: (e) => this.submit(e) },
      h("h2", { text: `Mark as ${TRIAGE[status]}` }),
      h("p", {}, h("strong", { text: ev.rule })),
      h("p", { class: "clip muted", text: ev.output }),
      h("fieldset", {}, h("legend", { text: "Which events" }),
        h("label", {}, h("input", { type: "radio", name: "scope", value: "one", checked: true,
                                    onchange: () => this.changed() }), " this event"),
        h("label", {}, this.like,
          " every stored event of this rule with the same values of the fields ticked below ",
          this.count)),
      h("fieldset", { class: "field-choice" },
        h("legend", { text: fp ? "Fields that make it benign" : "Fields" }),
        fields.length ? h("div", { class: "options" }, fields.map((name, i) =>
          h("label", { class: "field-option" }, this.boxes[i], h("code", { text: name }), " = ",
            h("span", { class: "value", text: fieldValue(ev.output_fields[name]) }))))
          : h("p", { class: "muted", text: "This event has no field to choose." })),
      fp ? this.exceptionSection() : null,
      h("label", {}, "Note", this.note),
      h("label", {}, "Who", this.who),
      h("menu", {},
        h("button", { type: "button", class: "quiet", onclick: () => this.dialog.close(),
                      text: "Cancel" }),
        h("button", { id: "triage-submit", type: "submit", class: fp ? "warn" : "",
                      text: `Mark ${TRIAGE[status]}` }))));
    this.dialog.showModal();
    this.changed();
  }

  exceptionSection() {
    this.yaml = h("pre", { id: "exception-yaml", class: "raw", text: "Tick fields to make one." });
    this.silenced = h("p", { id: "exception-silenced" });
    this.download = h("a", { id: "exception-download", class: "button", hidden: true,
                             text: "Download" });
    this.save = h("button", { id: "exception-save", type: "button", disabled: true,
                              onclick: () => this.saveException(), text: "Save to the hub's rules file" });
    this.saved = h("p", { id: "exception-saved", class: "muted" });
    return h("fieldset", { class: "exception" }, h("legend", { text: "Falco exception" }),
      h("p", { class: "muted", text: "The rule stops firing on events whose ticked fields have " +
        "these values. Detectors that ask the hub for its rules file (lanner detect " +
        "--hub-rules: the Helm chart, make run) apply it within seconds." }),
      this.yaml, this.silenced, h("div", { class: "buttons" }, this.download, this.save),
      this.saved);
  }

  chosen() {
    return this.boxes.filter((box) => box.checked).map((box) => box.dataset.field);
  }

  changed() {
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.refresh(), 200);
  }

  async refresh() {
    const fields = this.chosen();
    const ev = this.ev;
    if (this.like.checked) {
      this.count.textContent = "(counting…)";
      const stats = await get("/api/v1/stats", { rule: ev.rule, since: this.since(),
        field: fields.map((name) => `${name}:${fieldValue(ev.output_fields[name])}`) })
        .catch(() => null);
      this.count.textContent = stats ? `(${plural(stats.total, "event")})` : "";
    } else {
      this.count.textContent = "";
    }
    if (this.status !== "false_positive") return;
    this.save.disabled = !fields.length;
    this.download.hidden = !fields.length;
    if (!fields.length) {
      this.yaml.textContent = "Tick fields to make one.";
      this.silenced.textContent = "";
      return;
    }
    const params = { uuid: ev.uuid, fields: fields.join(",") };
    try {
      const preview = await get("/api/v1/exceptions/preview", params);
      if (this.chosen().join(",") !== fields.join(",")) return; // changed meanwhile
      this.yaml.textContent = preview.yaml;
      this.silenced.textContent =
        `It would have silenced ${plural(preview.silenced, "stored event")} of this rule.`;
      this.silenced.dataset.count = String(preview.silenced);
      this.download.href = `/api/v1/exceptions/preview?${query({ ...params, download: "true" })}`;
      this.download.setAttribute("download", "lanner_exception.yaml");
    } catch (err) {
      this.yaml.textContent = err.message;
      this.silenced.textContent = "";
      this.save.disabled = true;
    }
  }

  async saveException() {
    this.save.disabled = true;
    try {
      const result = await post("/api/v1/exceptions", { uuid: this.ev.uuid, fields: this.chosen() });
      const copy = result.file_error ? ` Its copy in ${result.file} could not be written: ` +
        `${result.file_error}` : ` A copy is in ${result.file}.`;
      this.saved.textContent = (result.added ? `Saved in the hub (version ${result.version}).`
        : "Already in the hub's rules file.") + copy;
      this.saved.dataset.file = result.file;
    } catch (err) {
      this.saved.textContent = `Not saved: ${err.message}`;
    }
    this.save.disabled = false;
  }

  async submit(e) {
    e.preventDefault();
    const actor = this.who.value.trim();
    if (!actor) {
      this.who.focus();
      return;
    }
    localStorage.setItem("lanner.actor", actor);
    const body = { status: this.status, note: this.note.value, actor };
    try {
      let count = 1;
      if (this.like.checked) {
        count = (await post("/api/v1/triage", { ...body, like: this.ev.uuid,
                                                fields: this.chosen() })).triaged;
      } else {
        await post(`/api/v1/events/${encodeURIComponent(this.ev.uuid)}/triage`, body);
      }
      this.dialog.close();
      toast(`${plural(count, "event")} marked ${TRIAGE[this.status]}`);
      this.onDone(this.ev.uuid, this.status, this.like.checked);
    } catch (err) {
      toast(`Not marked: ${err.message}`, "error");
    }
  }
}
