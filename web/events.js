// The events table: pages of stored events (newest first) loaded as the operator scrolls, and
// live ones from the hub's stream put on top without moving what the operator is looking at.

import { get, query } from "./api.js";
import { clear, h } from "./dom.js";
import { TRIAGE, plural, shortTime, where } from "./format.js";
import { apiFilters } from "./state.js";

const PAGE = 100;
const LIVE_CAP = 2000; // live rows added to one listing before asking for a reload
const PREFETCH_PX = 600;

export class EventsView {
  constructor({ onSelect, onLive, onArrived }) {
    this.onSelect = onSelect;
    this.onLive = onLive;
    this.onArrived = onArrived;
    this.tbody = document.getElementById("event-rows");
    this.scroller = document.getElementById("events-scroll");
    this.sentinel = document.getElementById("sentinel");
    this.notice = document.getElementById("new-above");
    this.rows = new Map(); // uuid -> <tr>
    this.generation = 0;
    this.selected = "";
    new IntersectionObserver((entries) => {
      if (entries.some((e) => e.isIntersecting)) this.more();
    }, { root: this.scroller, rootMargin: `${PREFETCH_PX}px` }).observe(this.sentinel);
    this.notice.addEventListener("click", () => {
      if (this.overflow) this.load(this.state);
      else this.scroller.scrollTo({ top: 0 });
    });
    this.scroller.addEventListener("scroll", () => {
      if (this.scroller.scrollTop === 0 && !this.overflow) this.hideNotice();
    });
    this.tbody.addEventListener("click", (e) => this.clicked(e));
    this.tbody.addEventListener("keydown", (e) => {
      if (e.key === "Enter") this.clicked(e);
    });
  }

  // New filters: start over, live feed first so nothing accepted meanwhile is missed.
  async load(state) {
    this.state = state;
    const generation = ++this.generation;
    clear(this.tbody);
    this.rows.clear();
    this.cursor = null;
    this.done = false;
    this.loading = false;
    this.liveAdded = 0;
    this.unseen = 0;
    this.overflow = 0;
    this.hideNotice();
    this.scroller.scrollTop = 0;
    this.openLive(state);
    const started = performance.now();
    await this.fetchPage(generation);
    if (generation === this.generation) {
      // For the browser tests' log: how long the first page took to be on screen.
      document.body.dataset.firstPageMs = String(Math.round(performance.now() - started));
    }
  }

  async fetchPage(generation) {
    this.loading = true;
    this.sentinel.textContent = "loading…";
    try {
      const page = await get("/api/v1/events",
        { ...apiFilters(this.state), limit: PAGE, cursor: this.cursor });
      if (generation !== this.generation) return;
      const rows = page.events.filter((ev) => !this.rows.has(ev.uuid))
        .map((ev) => this.row(ev, page.triage[ev.uuid]));
      this.tbody.append(...rows);
      this.cursor = page.next_cursor;
      this.done = !page.next_cursor;
      this.sentinel.textContent = this.done
        ? (this.rows.size ? "end of the stored events" : "no stored event matches") : "…";
      document.body.dataset.loaded = String(this.generation);
    } catch (err) {
      if (generation === this.generation) this.sentinel.textContent = `cannot load: ${err.message}`;
      this.done = true;
    } finally {
      if (generation === this.generation) this.loading = false;
    }
    // A page that leaves the sentinel in view gets no new intersection: ask again.
    if (!this.done && generation === this.generation) {
      const bottom = this.scroller.getBoundingClientRect().bottom + PREFETCH_PX;
      if (this.sentinel.getBoundingClientRect().top < bottom) this.more();
    }
  }

  more() {
    if (this.state && !this.loading && !this.done) this.fetchPage(this.generation);
  }

  row(ev, triage) {
    const status = triage ? triage.status : "new";
    const tr = h("tr", { tabindex: 0, dataset: { uuid: ev.uuid } },
      h("td", { class: "time", title: ev.time, text: shortTime(ev.time) }),
      h("td", {}, h("span", { class: `prio prio-${ev.priority.toLowerCase()}`, text: ev.priority })),
      h("td", { class: "rule", text: ev.rule }),
      h("td", { text: ev.source }),
      h("td", { text: ev.hostname }),
      h("td", { text: where(ev) }),
      h("td", { class: "output", title: ev.output, text: ev.output }),
      h("td", {}, h("span", { class: `triage triage-${status}`, text: TRIAGE[status] })));
    if (ev.uuid === this.selected) tr.classList.add("selected");
    this.rows.set(ev.uuid, tr);
    return tr;
  }

  clicked(e) {
    const tr = e.target.closest("tr[data-uuid]");
    if (tr) this.onSelect(tr.dataset.uuid);
  }

  select(uuid) {
    this.rows.get(this.selected)?.classList.remove("selected");
    this.selected = uuid;
    this.rows.get(uuid)?.classList.add("selected");
  }

  setTriage(uuid, status) {
    const badge = this.rows.get(uuid)?.querySelector(".triage");
    if (badge) {
      badge.className = `triage triage-${status}`;
      badge.textContent = TRIAGE[status];
    }
  }

  openLive(state) {
    this.live?.close();
    this.live = null;
    if (state.until) {
      this.onLive("paused", "a time range in the past: no live events");
      return;
    }
    this.onLive("connecting", "connecting to the live feed");
    const source = new EventSource(`/api/v1/stream?${query(apiFilters(state))}`);
    source.addEventListener("open", () => this.onLive("live", "new events appear as they come"));
    source.addEventListener("error", () => this.onLive("connecting", "reconnecting…"));
    source.addEventListener("alerts", (m) => this.arrived(JSON.parse(m.data).events));
    source.addEventListener("gap", (m) => {
      this.overflow += JSON.parse(m.data).dropped;
      this.showNotice(`${plural(this.overflow, "live event")} could not be shown — reload`);
    });
    this.live = source;
  }

  arrived(events) {
    const fresh = events.filter((ev) => !this.rows.has(ev.uuid)).reverse(); // newest first
    if (!fresh.length) return;
    this.onArrived(fresh.length);
    if (this.liveAdded >= LIVE_CAP) {
      this.overflow += fresh.length;
      this.showNotice(`${plural(this.overflow, "more new event")} — reload`);
      return;
    }
    this.liveAdded += fresh.length;
    // Keep what the operator looks at in place: rows above the viewport push it down by
    // exactly their height, which is given back to scrollTop (CSS scroll anchoring is off).
    const top = this.scroller.scrollTop;
    const before = this.scroller.scrollHeight;
    const rows = fresh.map((ev) => this.row(ev, null));
    for (const tr of rows) tr.classList.add("fresh");
    this.tbody.prepend(...rows);
    if (top > 0) {
      this.scroller.scrollTop = top + (this.scroller.scrollHeight - before);
      this.unseen += fresh.length;
      this.showNotice(`${plural(this.unseen, "new event")} above`);
    }
  }

  showNotice(text) {
    this.notice.textContent = text;
    this.notice.hidden = false;
  }

  hideNotice() {
    this.unseen = 0;
    this.notice.hidden = true;
  }
}
