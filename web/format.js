// How values look: times in UTC, priorities, where an event ran.

export const PRIORITIES = ["Emergency", "Alert", "Critical", "Error", "Warning", "Notice",
  "Informational", "Debug"];

export const TRIAGE = {
  new: "new", acknowledged: "acknowledged", false_positive: "false positive",
  resolved: "resolved",
};

// "2026-11-29T10:00:00.123456789Z" -> "2026-11-29 10:00:00.123"
export function shortTime(rfc3339) {
  const m = /^(\d{4}-\d\d-\d\d)T(\d\d:\d\d:\d\d)(\.\d{1,3})?/.exec(rfc3339 || "");
  return m ? `${m[1]} ${m[2]}${m[3] || ""}` : String(rfc3339 || "");
}

// Nanoseconds since the epoch (a number or, beyond 2^53, a string of digits), plus seconds.
export function nsTime(ns, plusSeconds = 0) {
  if (ns === null || ns === undefined || ns === "") return "";
  const ms = BigInt(ns) / 1000000n + BigInt(Math.round(plusSeconds * 1000));
  return new Date(Number(ms)).toISOString().replace("T", " ").replace("Z", "");
}

export function where(event) {
  const f = event.output_fields || {};
  const pod = f["k8s.pod.name"];
  if (pod) return f["k8s.ns.name"] ? `${f["k8s.ns.name"]}/${pod}` : String(pod);
  return String(f["container.name"] || f["container.id"] || "");
}

export function fieldValue(value) {
  if (value === null || value === undefined) return "<NA>";
  if (typeof value === "object") return JSON.stringify(value);
  return String(value);
}

export function plural(n, word) {
  return `${n.toLocaleString("en")} ${word}${n === 1 ? "" : "s"}`;
}
