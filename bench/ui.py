"""UI API benchmark: the queries the web UI makes, against a real hub over a big SQLite store.

    .venv/bin/python bench/ui.py                       # 1,000,000 events, about 2 minutes
    .venv/bin/python bench/ui.py --events 200000 --requests 30

Fills a store through the store itself (``tests.ui_support.fill_sqlite``: 20 rules, every
priority, 30 hosts, 100 containers in 10 namespaces, one event every 0.5 s up to now), starts
``lanner sidekick`` on it, and times each query the UI makes, one request at a time over a
keep-alive connection with the bearer token: p50, p95 and max in milliseconds. A few events
are triaged first so the triage filter has something to find. Prints figures, asserts nothing.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx

from tests.hubproc import HubProcess
from tests.ui_support import fill_sqlite

QUERIES: list[tuple[str, str, dict[str, Any]]] = [
    ("first page (last 24 h)", "/api/v1/events", {"since": "24h", "limit": 100}),
    ("first page (all stored)", "/api/v1/events", {"limit": 100}),
    ("page 10 by cursor", "/api/v1/events", {"limit": 100, "cursor": "{cursor}"}),
    ("rule", "/api/v1/events", {"rule": "Rule 07", "limit": 100}),
    ("rule + priority >= error + namespace", "/api/v1/events",
     {"rule": "Rule 07", "priority": "error", "field": "k8s.ns.name:ns-7", "limit": 100}),
    ("host + tag", "/api/v1/events", {"hostname": "node-03", "tag": "mitre_3", "limit": 100}),
    ("container (output field)", "/api/v1/events", {"field": "container.name:app-42",
                                                    "limit": 100}),
    ("text search", "/api/v1/events", {"q": "proc-7 in app-57", "limit": 100}),
    ("triage = acknowledged", "/api/v1/events", {"triage": "acknowledged", "limit": 100}),
    ("triage = new", "/api/v1/events", {"triage": "new", "limit": 100}),
    ("one event", "/api/v1/events/{uuid}", {}),
    ("its deliveries", "/api/v1/events/{uuid}/deliveries", {}),
    ("stats, last hour", "/api/v1/stats", {"since": "1h"}),
    ("stats, last 24 h", "/api/v1/stats", {"since": "24h"}),
    ("stats, last 24 h, rule", "/api/v1/stats", {"since": "24h", "rule": "Rule 07"}),
    ("stats, all stored (7 d)", "/api/v1/stats", {"since": "7d"}),
]


def ms(values: list[float]) -> str:
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return f"{statistics.median(ordered):8.1f} {p95:8.1f} {ordered[-1]:8.1f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--requests", type=int, default=50, help="per query")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="lanner-bench-ui-") as tmp:  # about 1.2 GB
        return run(Path(tmp), args.events, args.requests)


def run(workdir: Path, events: int, requests: int) -> int:
    seconds = fill_sqlite(workdir / "hub-data" / "lanner.db", events)
    print(f"filled {events:,} events in {seconds:.1f} s "
          f"({events / seconds:,.0f}/s through the store)")
    with HubProcess(workdir, {}) as hub, httpx.Client(
            base_url=hub.base_url, timeout=120,
            headers={"authorization": f"Bearer {hub.token}"}) as api:
        first = api.get("/api/v1/events", params={"limit": 100}).json()
        uuid = first["events"][0]["uuid"]
        cursor = first["next_cursor"]
        for _ in range(9):
            cursor = api.get("/api/v1/events", params={"limit": 100, "cursor": cursor}).json()[
                "next_cursor"]
        api.post("/api/v1/triage", json={"status": "acknowledged", "actor": "bench",
                                         "uuids": [e["uuid"] for e in first["events"][::7]]})
        print(f"\n{'query':40} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8}  matches")
        for label, path, params in QUERIES:
            params = {k: v.replace("{cursor}", cursor) if isinstance(v, str) else v
                      for k, v in params.items()}
            url = path.replace("{uuid}", uuid)
            times = []
            for _ in range(requests):
                started = time.perf_counter()
                response = api.get(url, params=params)
                times.append((time.perf_counter() - started) * 1000)
                response.raise_for_status()
            body = response.json()
            found = body.get("total", len(body.get("events", [body])))
            print(f"{label:40} {ms(times)}  {found:,}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
