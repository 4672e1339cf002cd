// The dashboard: counts by priority, rule, host, tag and source and events per time bucket,
// for the filters and time range chosen; the noisiest rules come first.

import { clear, h, svg } from "./dom.js";
import { PRIORITIES, nsTime, plural } from "./format.js";

const TOP = 10;
const CHART_W = 720;
const CHART_H = 160;

export function renderDashboard(stats, onFilter) {
  const total = document.getElementById("dash-total");
  total.textContent = stats.total.toLocaleString("en");
  total.dataset.count = String(stats.total);
  const buckets = stats.buckets;
  document.getElementById("dash-range").textContent = buckets.length
    ? `${nsTime(buckets[0].start)} → ${nsTime(buckets.at(-1).start, stats.bucket_seconds)} UTC`
    : "";
  const byPriority = PRIORITIES.filter((p) => stats.by_priority[p])
    .map((p) => [p, stats.by_priority[p]]);
  bars("priority", byPriority, stats.total, (p) => onFilter({ priority: p.toLowerCase() }));
  bars("rule", top(stats.by_rule), stats.total, (rule) => onFilter({ rule }));
  bars("hostname", top(stats.by_hostname), stats.total, (hostname) => onFilter({ hostname }));
  bars("tag", top(stats.by_tag), stats.total, (tag) => onFilter({ tag }));
  bars("source", top(stats.by_source), stats.total, (source) => onFilter({ source }));
  chart(buckets, stats.bucket_seconds);
}

function top(counts) {
  return Object.entries(counts).sort((a, b) => b[1] - a[1] || a[0].localeCompare(b[0]))
    .slice(0, TOP);
}

function bars(kind, entries, total, onPick) {
  const list = clear(document.getElementById(`dash-${kind}`));
  if (!entries.length) {
    list.append(h("li", { class: "muted", text: "none" }));
    return;
  }
  const most = entries[0][1] || 1;
  const widest = Math.max(...entries.map(([, n]) => n), most);
  for (const [name, count] of entries) {
    const fill = h("span", { class: `fill ${kind === "priority" ? `prio-${name.toLowerCase()}` : ""}` });
    fill.style.width = `${(100 * count) / widest}%`; // CSSOM, allowed by the CSP
    const share = total ? Math.round((100 * count) / total) : 0;
    list.append(h("li", {},
      h("button", { class: "bar", title: `show only ${name || "(empty)"}`,
                    onclick: () => onPick(name) },
        h("span", { class: "label", text: name || "(empty)" }),
        h("span", { class: "track" }, fill),
        h("span", { class: "n", dataset: { countKey: `${kind}:${name}`, count: String(count) },
                    text: `${count.toLocaleString("en")} (${share}%)` }))));
  }
}

function chart(buckets, bucketSeconds) {
  const box = clear(document.getElementById("dash-chart"));
  if (!buckets.length) {
    box.append(h("p", { class: "muted", text: "no events in this range" }));
    return;
  }
  const most = Math.max(1, ...buckets.map((b) => b.count));
  const width = CHART_W / buckets.length;
  const plot = svg("svg", { viewBox: `0 0 ${CHART_W} ${CHART_H + 20}`, class: "timechart",
                            role: "img", "aria-label": "events per time bucket" });
  buckets.forEach((b, i) => {
    const height = (CHART_H * b.count) / most;
    const rect = svg("rect", { x: i * width + 0.5, y: CHART_H - height,
                               width: Math.max(1, width - 1), height, class: "column" });
    rect.append(svg("title", {}, `${nsTime(b.start)} UTC: ${plural(b.count, "event")}`));
    plot.append(rect);
  });
  plot.append(
    svg("text", { x: 0, y: CHART_H + 15, class: "axis" }, nsTime(buckets[0].start)),
    svg("text", { x: CHART_W, y: CHART_H + 15, class: "axis end" },
      nsTime(buckets.at(-1).start, bucketSeconds)),
    svg("text", { x: 2, y: 12, class: "axis" }, `max ${most.toLocaleString("en")} per ${bucketSeconds} s`));
  box.append(plot);
}
