"""Rule engine benchmark: events/s through the compiled upstream stable ruleset, on one core.

    .venv/bin/python bench/engine.py                 # about 30 seconds
    .venv/bin/python bench/engine.py --events 2000000 --profile

The event mix is what a node sends the engine once the eBPF source traces only the stable
rules' event types plus process bookkeeping: opens 70%, execs 10%, connects 10%, others 10%
(clone, close, socket, dup2, sendto, symlinkat, linkat, ptrace). Events are dicts with the
keys a recorded event carries (see detector/engine/fields.py): the process and its ancestors,
the file or socket, container id, user. A few are attacks (about 1 in 1000) so alerts are
built too.

Phases:
1. load: rules file -> compiled engine (YAML, lists, macros, parse, type, generate, compile,
   index), cold (first in this process) and warm (median of 5).
2. events/s over the same events, single-threaded: ``Engine.process`` (the index, one generated
   function per bucket of event types); the index calling each rule's own function; and no
   index (every enabled rule evaluated for every event).
It prints figures and asserts nothing about timing.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from detector.engine.engine import CompiledRule, Engine
from detector.engine.output import make_alert

RULES = Path(__file__).resolve().parents[2] / "shared" / "upstream" / "falco" / "falco_rules.yaml"
T0 = 1_767_258_764_000_000_000

PROCS = [  # name, exepath, args, ancestors (parent first), uid, user, container
    ("nginx", "/usr/sbin/nginx", "-g daemon off;", ["containerd-shim", "systemd"], 101, "nginx",
     "3ad7d8e1f2a4"),
    ("python3", "/usr/bin/python3.11", "app.py --port 8080", ["bash", "sshd", "systemd"], 1000,
     "alice", "host"),
    ("java", "/opt/java/bin/java", "-jar svc.jar", ["runc", "containerd-shim", "systemd"], 0,
     "root", "9f1c2b3a4d5e"),
    ("node", "/usr/local/bin/node", "server.js", ["npm", "sh", "containerd-shim", "systemd"],
     1000, "node", "77aa88bb99cc"),
    ("postgres", "/usr/lib/postgresql/15/bin/postgres", "-D /var/lib/postgresql/data",
     ["postgres", "systemd"], 999, "postgres", "host"),
    ("systemd-journal", "/usr/lib/systemd/systemd-journald", "", ["systemd"], 0, "root",
     "host"),
    ("kubelet", "/usr/bin/kubelet", "--config=/var/lib/kubelet/config.yaml", ["systemd"], 0,
     "root", "host"),
    ("bash", "/usr/bin/bash", "", ["sshd", "sshd", "systemd"], 1000, "alice", "host"),
]
OPEN_PATHS = [
    "/usr/lib/x86_64-linux-gnu/libc.so.6", "/etc/ld.so.cache", "/proc/self/status",
    "/var/log/nginx/access.log", "/tmp/tmp3k2j1", "/usr/share/zoneinfo/UTC", "/etc/hosts",
    "/etc/resolv.conf", "/var/lib/postgresql/data/base/16384/2619", "/dev/null",
    "/sys/fs/cgroup/cpu.max", "/home/alice/.cache/pip/http/abc", "/etc/passwd",
    "/usr/lib/python3.11/json/__init__.py", "/run/containerd/io.containerd.runtime.v2.task",
]
EXECS = [("ls", "/usr/bin/ls", "-la"), ("git", "/usr/bin/git", "status --short"),
         ("sh", "/usr/bin/dash", "-c date"), ("python3", "/usr/bin/python3.11", "manage.py"),
         ("grep", "/usr/bin/grep", "-r TODO src"), ("curl", "/usr/bin/curl", "-s localhost"),
         ("cat", "/usr/bin/cat", "/etc/os-release"), ("date", "/usr/bin/date", "")]
PEERS = [("10.0.3.7", 5432), ("172.17.0.3", 6379), ("93.184.216.34", 443),
         ("10.96.0.1", 443), ("127.0.0.1", 8080), ("140.82.121.4", 22)]
OTHERS = ["clone", "close", "socket", "dup2", "sendto", "symlinkat", "linkat", "ptrace"]
ATTACKS: list[dict[str, Any]] = [  # merged into a base event
    {"evt.type": "openat", "fd.name": "/etc/shadow", "proc.name": "cat", "proc.exe": "cat",
     "evt.args": {"fd": "3", "name": "/etc/shadow", "flags": "O_RDONLY"}},
    {"evt.type": "execve", "proc.name": "shred", "proc.exe": "shred",
     "proc.args": "-u /var/log/auth.log"},
    {"evt.type": "connect", "fd.sport": 443, "proc.name": "ssh", "fd.sip": "140.82.121.4",
     "proc.cmdline": "ssh -p 443 git@example.com"},
]


def process_fields(rng: random.Random) -> dict[str, Any]:
    name, exepath, args, ancestors, uid, user, container = rng.choice(PROCS)
    return {
        "proc.name": name, "proc.exe": exepath.rsplit("/", 1)[-1], "proc.exepath": exepath,
        "proc.args": args, "proc.cwd": "/", "proc.pid": rng.randrange(100, 60000),
        "proc.aname": ancestors, "proc.apid": [rng.randrange(2, 60000) for _ in ancestors],
        "proc.aexepath": [f"/usr/bin/{a}" for a in ancestors], "proc.tty": 0,
        "proc.pid.ts": T0 - 3_600_000_000_000, "user.uid": uid, "user.name": user,
        "user.loginuid": -1, "group.gid": uid, "container.id": container,
        "container.name": "host" if container == "host" else f"pod-{container[:4]}",
        "thread.cap_effective": "" if uid else "CAP_CHOWN CAP_DAC_OVERRIDE CAP_KILL",
    }


def make_event(rng: random.Random, num: int) -> dict[str, Any]:
    event = process_fields(rng)
    event.update({"evt.num": num, "evt.time": T0 + num * 1000, "evt.rawres": 0})
    roll = rng.random()
    if roll < 0.70:
        path = rng.choice(OPEN_PATHS)
        write = rng.random() < 0.2
        flags = "O_WRONLY|O_CREAT|O_TRUNC" if write else "O_RDONLY|O_CLOEXEC"
        fd = rng.randrange(3, 64)
        event.update({"evt.type": rng.choice(("openat", "openat", "openat", "open")),
                      "evt.rawres": fd, "fd.num": fd, "fd.name": path, "fd.type": "file",
                      "evt.args": {"fd": str(fd), "dirfd": "AT_FDCWD", "name": path,
                                   "flags": flags, "mode": "0"}})
    elif roll < 0.80:
        name, exepath, args = rng.choice(EXECS)
        parent = rng.choice(("bash", "bash", "make", "sshd"))
        event.update({"evt.type": "execve", "proc.aname": [parent, *event["proc.aname"]],
                      "proc.name": name, "proc.exe": name, "proc.exepath": exepath,
                      "proc.args": args, "proc.pid.ts": event["evt.time"],
                      "evt.args": {"flags": "EXE_WRITABLE|EXE_LOWER_LAYER"}})
    elif roll < 0.90:
        ip, port = rng.choice(PEERS)
        fd = rng.randrange(3, 64)
        event.update({"evt.type": "connect", "fd.num": fd, "fd.type": "ipv4",
                      "fd.cip": "10.0.0.5", "fd.cport": rng.randrange(32768, 60999),
                      "fd.sip": ip, "fd.sport": port, "fd.l4proto": "tcp",
                      "fd.connected": True, "evt.rawres": -115 if rng.random() < 0.5 else 0,
                      "evt.res": "EINPROGRESS", "evt.args": {"fd": str(fd)}})
    else:
        kind = rng.choice(OTHERS)
        fd = rng.randrange(3, 64)
        event.update({"evt.type": kind, "fd.num": fd, "evt.rawres": fd, "fd.type": "ipv4",
                      "fd.cip": "10.0.0.5", "fd.sip": "10.0.0.53", "fd.sport": 53,
                      "fd.l4proto": "udp", "fd.connected": False, "fd.name_changed": False,
                      "evt.args": {"request": "PTRACE_PEEKDATA", "domain": "AF_INET",
                                   "target": "/tmp/x", "oldpath": "/tmp/y"}})
    if rng.random() < 0.001:
        event.update(rng.choice(ATTACKS))
    return event


def time_process(fn: Any, events: list[dict[str, Any]], total: int) -> tuple[float, int]:
    """Events/s of ``fn`` over ``total`` events (the list cycled) and the alerts it made."""
    alerts = 0
    n = len(events)
    start = time.perf_counter()
    for i in range(total):
        alerts += len(fn(events[i % n]))
    return total / (time.perf_counter() - start), alerts


def index_rule_by_rule(engine: Engine) -> Any:
    """The index without bucket functions: each rule of the event's bucket called alone."""

    def process(event: dict[str, Any]) -> list[Any]:
        alerts = []
        for rule in engine.rules_for(event):
            if rule.matches(event):
                alerts.append(make_alert(rule, event, engine.hostname, rule.formatter))
        return alerts

    return process


def without_index(engine: Engine) -> Any:
    rules: list[CompiledRule] = [r for r in engine.rules if r.enabled]

    def process(event: dict[str, Any]) -> list[Any]:
        alerts = []
        for rule in rules:
            if rule.matches(event):
                alerts.append(make_alert(rule, event, engine.hostname, rule.formatter))
        return alerts

    return process


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000, help="events through the index")
    parser.add_argument("--distinct", type=int, default=20_000, help="distinct events cycled")
    parser.add_argument("--profile", action="store_true", help="profile the indexed run")
    parser.add_argument("--rules", type=Path, default=RULES)
    args = parser.parse_args()

    start = time.perf_counter()
    engine, warnings = Engine.from_files([args.rules], hostname="bench")
    cold = time.perf_counter() - start
    warm = []
    for _ in range(5):
        start = time.perf_counter()
        Engine.from_files([args.rules], hostname="bench")
        warm.append(time.perf_counter() - start)
    print(f"ruleset: {args.rules.name}: {len(engine.rules)} rules, "
          f"{len(engine.event_types)} event types, {len(warnings)} warnings")
    print(f"load + compile: cold {cold * 1000:.0f} ms (first in process: field registry built), "
          f"warm median {statistics.median(warm) * 1000:.0f} ms")

    rng = random.Random(7)
    events = [make_event(rng, i + 1) for i in range(args.distinct)]
    kinds: dict[str, int] = {}
    for event in events:
        kinds[event["evt.type"]] = kinds.get(event["evt.type"], 0) + 1
    mix = ", ".join(f"{k} {v / len(events):.0%}" for k, v in sorted(kinds.items(),
                                                                      key=lambda kv: -kv[1]))
    print(f"events: {len(events)} distinct, cycled; mix: {mix}")

    time_process(engine.process, events, min(args.events, 50_000))  # warm caches
    if args.profile:
        profiler = cProfile.Profile()
        profiler.enable()
    indexed, alerts = time_process(engine.process, events, args.events)
    if args.profile:
        profiler.disable()
        pstats.Stats(profiler).sort_stats("tottime").print_stats(15)
    total = max(args.events // 10, 50_000)
    separate, separate_alerts = time_process(index_rule_by_rule(engine), events, total)
    flat, flat_alerts = time_process(without_index(engine), events, total)
    rows = [
        ("index, one function per bucket (process())", indexed, alerts, args.events),
        ("index, each rule's own function", separate, separate_alerts, total),
        ("no index: every rule for every event", flat, flat_alerts, total),
    ]
    for label, rate, made, count in rows:
        print(f"{label:<45} {rate:>9,.0f} events/s  {1e6 / rate:5.2f} us/event  "
              f"({made} alerts in {count:,} events)")
    print(f"speed-up over no index: {indexed / flat:.1f}x "
          f"(index alone {separate / flat:.1f}x, bucket functions {indexed / separate:.1f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
