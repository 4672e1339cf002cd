"""Kubernetes audit benchmark: audit events/s through the webhook and the rules, on one core.

    .venv/bin/python bench/k8saudit.py                 # about 10 seconds
    .venv/bin/python bench/k8saudit.py --events 200000 --batch 400

Rules: Falco's k8s_audit_rules.yaml (from ../shared/upstream/falco, when present) and
rules/lanner_k8s_audit_rules.yaml, every matching rule reported. The event mix is what an API
server with the docs' audit policy sends for a busy small cluster: node leases and pod status
updates from kubelets, controllers reading and watching, people listing things, a few creates
with their request bodies (RequestResponse level), execs (each one an alert), and 1 in 100 a
secret read (an alert: Falco's rule reports every read) or a privileged pod.

Phases, all in this run so that the figures compare:
1. baseline: the rules alone, ``Engine.process`` over decoded events (no JSON, no HTTP), one
   thread;
2. parsing alone: ``parse_events`` over the batch bodies (JSON decode, per-event size check,
   timestamps);
3. the whole path: a detector process pinned to one CPU (the webhook's threads and the
   detector's main loop share it) receives EventList POSTs on keep-alive connections, as the
   API server's batching webhook backend sends them (full batches under load, several at
   once: one connection, then four), and evaluates every event; the client runs on another
   CPU when there is one. Timed from the first POST until the detector has written the last
   expected alert; the detector's CPU time is reported too.
It prints figures and the ratio of the whole path to the baseline, and asserts nothing.
"""

from __future__ import annotations

import argparse
import http.client
import logging
import multiprocessing
import os
import random
import resource
import sys
import threading
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from detector.detect import Detector
from detector.engine.engine import Engine
from detector.sources.k8saudit import AuditWebhook, WebhookConfig, parse_events
from detector.sources.opener import NoKernelSource

ROOT = Path(__file__).resolve().parents[1]
UPSTREAM = ROOT.parent / "shared" / "upstream" / "falco" / "k8s_audit_rules.yaml"
OURS = ROOT / "rules" / "lanner_k8s_audit_rules.yaml"
T0 = 1_767_258_000


def rules() -> list[Path]:
    return [UPSTREAM, OURS] if UPSTREAM.is_file() else [OURS]


def audit(n: int, verb: str, resource: str, user: str, *, ns: str | None = "default",
          name: str | None = None, sub: str | None = None, stage: str = "ResponseComplete",
          code: int = 200, request: dict[str, Any] | None = None) -> dict[str, Any]:
    path = "/api/v1" + (f"/namespaces/{ns}" if ns else "") + f"/{resource}" + \
        (f"/{name}" if name else "") + (f"/{sub}" if sub else "")
    ref: dict[str, Any] = {"resource": resource, "apiVersion": "v1"}
    ref.update({k: v for k, v in (("namespace", ns), ("name", name), ("subresource", sub)) if v})
    seconds, micros = T0 + n // 1000, (n % 1000) * 1000
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{micros:06d}Z"
    event: dict[str, Any] = {
        "kind": "Event", "apiVersion": "audit.k8s.io/v1",
        "level": "RequestResponse" if request else "Metadata",
        "auditID": f"7f3e9a10-{n:08d}-4000-8000-000000000000", "stage": stage,
        "requestURI": path + ("?command=sh&command=-c&command=id&stdin=true" if sub == "exec"
                              else ""),
        "verb": verb, "user": {"username": user, "groups": ["system:authenticated"]},
        "sourceIPs": ["10.0.0.15"], "userAgent": "kube-controller-manager/v1.31.2",
        "objectRef": ref, "requestReceivedTimestamp": stamp, "stageTimestamp": stamp,
        "annotations": {"authorization.k8s.io/decision": "allow",
                        "authorization.k8s.io/reason": "RBAC: allowed by ClusterRoleBinding"},
    }
    if stage == "ResponseComplete":
        event["responseStatus"] = {"metadata": {}, "code": code}
    if request is not None:
        event["requestObject"] = request
        event["responseObject"] = {"metadata": {"name": name or "obj", "uid": "u-1"}}
    return event


def pod_spec(image: str, privileged: bool = False) -> dict[str, Any]:
    return {"kind": "Pod", "apiVersion": "v1", "metadata": {"name": "web", "labels": {
        "app": "web", "pod-template-hash": "7d9c"}}, "spec": {
        "containers": [{"name": "web", "image": image, "ports": [{"containerPort": 8080}],
                        "resources": {"limits": {"cpu": "500m", "memory": "256Mi"}},
                        "env": [{"name": f"VAR_{i}", "value": "x" * 40} for i in range(12)],
                        "securityContext": {"privileged": privileged, "runAsUser": 1000}}],
        "volumes": [{"name": "cfg", "configMap": {"name": "web"}}],
        "serviceAccountName": "web", "nodeName": "worker-1"}}


def make_event(rng: random.Random, n: int) -> dict[str, Any]:
    roll = rng.random()
    node = f"system:node:worker-{rng.randrange(20)}"
    if roll < 0.30:
        return audit(n, "update", "leases", node, ns="kube-node-lease", name=node[12:])
    if roll < 0.45:
        return audit(n, "patch", "pods", node, name=f"web-{n % 97}", sub="status")
    if roll < 0.65:
        return audit(n, rng.choice(("get", "list", "watch")), rng.choice(
            ("configmaps", "endpoints", "pods", "services")),
            "system:serviceaccount:kube-system:endpointslice-controller")
    if roll < 0.80:
        return audit(n, "list", rng.choice(("pods", "deployments", "events")),
                     "kubernetes-admin")
    if roll < 0.90:
        return audit(n, "create", "pods", "system:serviceaccount:kube-system:replicaset-"
                     "controller", name=f"web-{n}", code=201, request=pod_spec("nginx:1.27"))
    if roll < 0.98:
        return audit(n, "create", "pods", "kubernetes-admin", name=f"web-{n % 31}",
                     sub="exec", stage="ResponseStarted")
    if roll < 0.99:
        return audit(n, "get", "secrets", "system:serviceaccount:kube-system:generic-garbage-"
                     "collector", name="db")
    return audit(n, "create", "pods", "kubernetes-admin", name=f"priv-{n}", code=201,
                 request=pod_spec("docker.io/library/alpine:3.20", privileged=True))


def bodies(events: list[dict[str, Any]], batch: int) -> list[bytes]:
    return [orjson.dumps({"kind": "EventList", "apiVersion": "audit.k8s.io/v1",
                          "metadata": {}, "items": events[i:i + batch]})
            for i in range(0, len(events), batch)]


class Counting:
    name = "count"

    def __init__(self) -> None:
        self.alerts = 0

    def write(self, alert: Any) -> None:
        self.alerts += 1

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


def detector_process(cpu: int | None, pipe: Connection) -> None:
    """The detector under test: webhook and rules, on one CPU. Tells its port, then answers
    each "expected alerts" request with (wall time when they were all written, CPU seconds)."""
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    logging.getLogger("lanner.k8saudit").setLevel(logging.ERROR)  # 429s are counted, not logged
    engine, _ = Engine.from_files(rules(), hostname="bench")
    sink = Counting()
    source = NoKernelSource()
    # The queue of `lanner detect`; no tracker: audit events never use it.
    detector = Detector(engine, None, source, [sink],  # type: ignore[arg-type]
                        queue_records=16384, purge_interval=float("inf"))
    webhook = AuditWebhook(WebhookConfig(host="127.0.0.1", port=0), detector.submit,
                           detector.has_room)
    webhook.start()
    runner = threading.Thread(target=detector.run, daemon=True)
    runner.start()
    pipe.send(webhook.port)
    while (want := pipe.recv()) is not None:
        while sink.alerts < want:
            time.sleep(0.005)
        usage = resource.getrusage(resource.RUSAGE_SELF)
        pipe.send((time.perf_counter(), usage.ru_utime + usage.ru_stime))
    detector.stop()
    webhook.close()
    source.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000, help="events per phase")
    parser.add_argument("--batch", type=int, default=400,
                        help="events per EventList POST (default 400, the API server's "
                             "default --audit-webhook-batch-max-size)")
    args = parser.parse_args()
    cpus = sorted(os.sched_getaffinity(0))
    detector_cpu = cpus[0]
    client_cpus = set(cpus[1:]) or {cpus[0]}

    rng = random.Random(11)
    events = [make_event(rng, i) for i in range(args.events)]
    batches = bodies(events, args.batch)
    size = sum(len(b) for b in batches) / len(events)
    print(f"rules: {', '.join(p.name for p in rules())}; {len(events)} events, "
          f"{size:.0f} bytes each on average, {len(batches)} EventLists of {args.batch}")

    # 1. the rules alone
    os.sched_setaffinity(0, {detector_cpu})
    engine, _ = Engine.from_files(rules(), hostname="bench")
    mapped = [m for b in batches for m in parse_events(b).events]
    start = time.perf_counter()
    alerts = sum(len(engine.process(m)) for m in mapped)
    baseline = len(events) / (time.perf_counter() - start)
    print(f"baseline, rules alone (Engine.process): {baseline:,.0f} events/s, "
          f"{alerts} alerts ({alerts / len(events):.1%} of events)")

    # 2. parsing alone
    start = time.perf_counter()
    parsed = sum(len(parse_events(b).events) for b in batches)
    parsing = parsed / (time.perf_counter() - start)
    print(f"parsing alone (parse_events): {parsing:,.0f} events/s")

    # 3. the whole path
    print("whole path (HTTP POST -> webhook -> queue -> rules -> sink), detector on CPU "
          f"{detector_cpu}, client on CPU {','.join(map(str, sorted(client_cpus)))}:")
    for connections in (1, 4):
        whole, seconds, cpu, refused = whole_path(detector_cpu, client_cpus, batches,
                                                  len(events), alerts, connections)
        print(f"  {connections} connection{'s' if connections > 1 else ' '}: "
              f"{whole:,.0f} events/s ({len(batches) / seconds:,.0f} POSTs/s, "
              f"{refused} answered 429 and resent); detector CPU {cpu:.2f} s, "
              f"{len(events) / cpu:,.0f} events per CPU-second; "
              f"ratio to the rules alone {whole / baseline:.2f}")
    return 0


def whole_path(detector_cpu: int, client_cpus: set[int], batches: list[bytes], events: int,
               alerts: int, connections: int) -> tuple[float, float, float, int]:
    """(events/s, seconds, detector CPU seconds, 429 answers) with ``connections`` clients
    posting at once (the API server sends its batches concurrently, up to its throttle)."""
    context = multiprocessing.get_context("spawn")  # not fork: no copy of our big heap
    here, there = context.Pipe()
    os.sched_setaffinity(0, {detector_cpu})  # the child starts where it will run
    child = context.Process(target=detector_process, args=(detector_cpu, there), daemon=True)
    child.start()
    port = here.recv()
    os.sched_setaffinity(0, client_cpus)
    here.send(0)
    _, cpu_before = here.recv()
    pending = iter(batches)
    lock = threading.Lock()
    refused = [0]

    def client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        while True:
            with lock:
                data = next(pending, None)
            if data is None:
                break
            while True:
                conn.request("POST", "/k8s-audit", body=data,
                             headers={"Content-Type": "application/json"})
                response = conn.getresponse()
                response.read()
                if response.status != 429:
                    break
                with lock:
                    refused[0] += 1
                time.sleep(0.01)  # the API server backs off for 10 s: this is far more eager
        conn.close()

    threads = [threading.Thread(target=client) for _ in range(connections)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    here.send(alerts)
    done, cpu_after = here.recv()
    here.send(None)
    child.join(10)
    seconds = done - start
    return events / seconds, seconds, cpu_after - cpu_before, refused[0]


if __name__ == "__main__":
    sys.exit(main())
