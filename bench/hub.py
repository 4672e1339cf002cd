"""Hub benchmark: HTTP ceiling vs hub ingest, gRPC streaming ingest, ingest->delivered latency.

    .venv/bin/python bench/hub.py            # about 2 minutes; a table at the end

Each phase starts its own `lanner sidekick` process (SQLite or Redis store, webhook output to a
sink process) on loopback; everything started is stopped at the end, also on errors and Ctrl-C.
Load: `wrk` (HTTP throughput), a gRPC client in a child process, and a paced open-loop HTTP
sender (latency). It prints figures and targets; it asserts nothing about timing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sidekick.alert import format_time_ns, now_ns
from tests.hubproc import HubProcess, falco_alert
from tests.support import RedisServer, free_port, wait_port

WRK = ["wrk", "-t2", "-c32", "-d10s"]
GRPC_SECONDS, GRPC_BATCH, GRPC_WINDOW = 8.0, 500, 4
LATENCY_RATE, LATENCY_SECONDS = 500, 20.0
WEBHOOK = {"maxconcurrentrequests": 4, "batchsize": 10}  # the hub's output, as for a busy hub
SENT_FIELD = "bench.sent"  # output field carrying the sender's time.time()


def alert_body(**fields: Any) -> dict[str, Any]:
    """A Falco alert without uuid (the hub assigns one: nothing is deduplicated)."""
    alert = falco_alert(0, time=format_time_ns(now_ns()))
    del alert["uuid"]
    alert["output_fields"].update(fields)
    return alert


# -- child process: the sink, which is also the bare-ASGI ceiling --------------------------

_REPLY = b'{"uuid":"00000000-0000-4000-8000-000000000000","duplicate":false}'
_SENT = re.compile(rb'"' + re.escape(SENT_FIELD.encode()) + rb'":([0-9.eE+-]+)')


def serve_http(port: int, handle: Callable[[str, bytes, bytes], bytes]) -> None:
    """Bare ASGI on uvicorn as the hub serves (uvloop, httptools, no access log): every request
    is answered 200 with ``handle(path, query, body)``, a JSON body."""
    import uvicorn

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body, more = b"", True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        reply = handle(scope["path"], scope["query_string"], body)
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(reply)).encode())]})
        await send({"type": "http.response.body", "body": reply})

    uvicorn.Server(uvicorn.Config(
        app, host="127.0.0.1", port=port, loop="uvloop", http="httptools",
        lifespan="off", access_log=False, log_level="warning", backlog=2048,
    )).run()


def serve_sink(port: int) -> None:
    """POST / counts the body (and its latency if it carries SENT_FIELD). GET /stats and
    POST /reset are for the bench."""
    state: dict[str, Any] = {"count": 0, "latencies": []}

    def handle(path: str, _query: bytes, body: bytes) -> bytes:
        if path == "/stats":
            return orjson.dumps(state)
        if path == "/reset":
            state.update(count=0, latencies=[])
        else:
            state["count"] += 1
            if sent := _SENT.search(body):
                state["latencies"].append(time.time() - float(sent.group(1)))
        return _REPLY

    serve_http(port, handle)


# -- child process: the gRPC publisher ------------------------------------------------------

async def grpc_publish(target: str, seconds: float, batch: int, window: int) -> dict[str, Any]:
    """One Publish stream, batches of `batch`, at most `window` unacked; counts acked alerts."""
    from sidekick.alert import Alert
    from sidekick.proto import lanner_pb2
    from sidekick.proto.convert import alert_to_proto
    from tests.grpc_client import HubClient

    alerts = [alert_to_proto(Alert.from_dict(alert_body())) for _ in range(batch)]
    acked = {"accepted": 0, "rejected": 0, "batches": 0}
    async with HubClient(target) as client:
        call = client.stub.Publish()
        slots = asyncio.Semaphore(window)

        async def read_acks() -> None:
            async for ack in call:
                acked["accepted"] += ack.accepted
                acked["rejected"] += len(ack.rejected)
                slots.release()

        reader = asyncio.create_task(read_acks())
        start = time.perf_counter()
        while time.perf_counter() - start < seconds:
            await slots.acquire()
            acked["batches"] += 1
            for pb in alerts:  # event times increase, as Falco's do
                pb.time = format_time_ns(time.time_ns())
            await call.write(lanner_pb2.PublishRequest(batch_id=acked["batches"], alerts=alerts))
        await call.done_writing()
        await reader
        elapsed = time.perf_counter() - start
    return {**acked, "seconds": elapsed, "rate": acked["accepted"] / elapsed}


# -- the paced open-loop HTTP sender (in the bench process) ---------------------------------

async def paced_posts(port: int, rate: int, seconds: float) -> dict[str, Any]:
    """POST `rate`/s for `seconds` on schedule whatever the answers' latency (open loop): a
    request finding no idle keep-alive connection opens another instead of waiting."""
    template = alert_body(**{SENT_FIELD: 0.0})
    idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    opened: list[asyncio.StreamWriter] = []
    acks: list[float] = []
    failures = 0

    async def exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal failures
        template["output_fields"][SENT_FIELD] = sent = time.time()
        body = orjson.dumps(template)
        writer.write(b"POST / HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        head = await reader.readuntil(b"\r\n\r\n")
        await reader.readexactly(int(re.search(rb"(?i)content-length: *(\d+)", head)[1]))
        acks.append(time.time() - sent)
        failures += not head.startswith(b"HTTP/1.1 200")
        idle.append((reader, writer))

    async def post() -> None:
        while idle:  # the server closes connections idle for 5 s: skip those
            reader, writer = idle.pop()
            try:
                return await exchange(reader, writer)
            except (asyncio.IncompleteReadError, ConnectionError) as exc:
                if isinstance(exc, asyncio.IncompleteReadError) and exc.partial:
                    raise  # it had started answering: a real error
                writer.close()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        opened.append(writer)
        await exchange(reader, writer)

    tasks, late = [], 0.0
    start = time.perf_counter()
    for i in range(int(rate * seconds)):
        await asyncio.sleep(max(0.0, start + i / rate - time.perf_counter()))
        late = max(late, time.perf_counter() - start - i / rate)
        tasks.append(asyncio.create_task(post()))
    results = await asyncio.gather(*tasks, return_exceptions=True)
    for writer in opened:
        writer.close()
    errors = [repr(r) for r in results if isinstance(r, BaseException)]
    if errors:
        print(f"   {len(errors)} POSTs failed, e.g. {errors[0]}", flush=True)
    return {"sent": len(tasks), "errors": len(errors) + failures, "acks": acks,
            "connections": len(opened), "max_late": late}


# -- helpers ---------------------------------------------------------------------------------

def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def write_lua(path: Path) -> Path:
    """wrk script: POST the alert, its `time` increasing as Falco's does (with one fixed time,
    every (..., time_ns, uuid) index insert of the store would land at random)."""
    prefix, _, suffix = orjson.dumps({**alert_body(), "time": "@"}).decode().partition('"@"')
    path.write_text(f"""
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local prefix, suffix, n = [==[{prefix}]==], [==[{suffix}]==], 0
request = function()
  n = n + 1
  local at = os.date("!%Y-%m-%dT%H:%M:%S") .. string.format(".%09dZ", n % 1000000000)
  return wrk.format(nil, nil, nil, prefix .. '"' .. at .. '"' .. suffix)
end
""")
    return path


def run_wrk(url: str, lua: Path) -> dict[str, Any]:
    out = subprocess.run([*WRK, "-s", str(lua), url], capture_output=True, text=True,
                         timeout=60, check=True).stdout

    def num(pattern: str) -> int:
        m = re.search(pattern, out)
        return int(float(m[1])) if m else 0

    return {
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out)[1]),
        "requests": num(r"(\d+) requests in"),
        "non2xx": num(r"Non-2xx or 3xx responses:\s+(\d+)"),
        "errors": sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", out)),
        "latency": re.search(r"Latency\s+(\S+)", out)[1],
    }


def stop(proc: subprocess.Popen[bytes] | HubProcess) -> None:
    """SIGTERM, then SIGKILL if it is still there after 15 s."""
    if isinstance(proc, HubProcess):
        with contextlib.suppress(Exception):  # HubProcess.stop kills it on timeout
            proc.stop(15)
    elif proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class Sink:
    def __init__(self, workdir: Path, name: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen([sys.executable, __file__, "sink", str(self.port)],
                                     stdout=(workdir / f"{name}.log").open("ab"),
                                     stderr=subprocess.STDOUT)
        wait_port(self.port, proc=self.proc)

    def stats(self) -> dict[str, Any]:
        return httpx.get(f"{self.url}/stats", timeout=30).json()

    def reset(self) -> None:
        httpx.post(f"{self.url}/reset")

    def wait_count(self, n: int, timeout: float) -> tuple[int, float]:
        """The delivered count once it reaches n (or at the timeout), and the seconds waited."""
        start = time.monotonic()
        while (count := self.stats()["count"]) < n and time.monotonic() - start < timeout:
            time.sleep(0.1)
        return count, time.monotonic() - start


def accepted(hub: HubProcess) -> int:
    text = httpx.get(f"{hub.url}/metrics", timeout=30).text
    return int(sum(float(v) for v in re.findall(
        r'^falcosecurity_falcosidekick_inputs_total\{[^}]*status="accepted"[^}]*\} (\S+)',
        text, re.M)))


class Bench:
    def __init__(self, stack: contextlib.ExitStack, workdir: Path) -> None:
        self.stack, self.workdir = stack, workdir
        self.sink = Sink(workdir, "sink")
        stack.callback(stop, self.sink.proc)
        self.redis: RedisServer | None = None
        self.lua = write_lua(workdir / "post.lua")
        self.base = 0  # alerts the current hub accepted before the measure (warm-up)

    def hub(self, store: str, grpc: bool = False) -> HubProcess:
        config: dict[str, Any] = {"store": store, "delivery": {"drain": "2s"},
                                  "webhook": {"address": f"{self.sink.url}/", **WEBHOOK}}
        if store == "redis":
            if self.redis is None:
                self.redis = RedisServer()
                self.stack.callback(self.redis.stop)
            self.redis.flush()
            config["redis"] = {"url": self.redis.url}
        name = f"hub-{store}-{len(list(self.workdir.glob('hub-*.yaml')))}"
        hub = HubProcess(self.workdir, config, name=name, grpc=grpc)
        self.stack.callback(stop, hub)
        hub.start()
        self.sink.reset()
        for _ in range(20):  # the first requests load the lazy parts of the stack
            httpx.post(f"{hub.url}/", json=alert_body(), timeout=10)
        self.sink.wait_count(20, 10)
        self.sink.reset()
        self.base = accepted(hub)
        return hub

    def bare_http(self) -> dict[str, Any]:
        bare = Sink(self.workdir, "bare")
        try:
            return run_wrk(f"{bare.url}/", self.lua)
        finally:
            stop(bare.proc)

    def hub_http(self) -> dict[str, Any]:
        hub = self.hub("sqlite")
        result = run_wrk(f"{hub.url}/", self.lua)
        result["delivered_meanwhile"] = self.sink.stats()["count"]
        result["accepted"] = accepted(hub) - self.base
        result["delivered"], result["drain_s"] = self.sink.wait_count(result["accepted"], 60)
        stop(hub)
        return result

    def hub_grpc(self, store: str) -> dict[str, Any]:
        hub = self.hub(store, grpc=True)
        out = subprocess.run(
            [sys.executable, __file__, "grpc", f"127.0.0.1:{hub.grpcport}",
             str(GRPC_SECONDS), str(GRPC_BATCH), str(GRPC_WINDOW)],
            capture_output=True, text=True, timeout=GRPC_SECONDS + 60, check=True)
        result = json.loads(out.stdout)
        result["delivered_meanwhile"] = self.sink.stats()["count"]
        result["hub_accepted"] = accepted(hub) - self.base
        stop(hub)
        return result

    def latency(self, store: str) -> dict[str, Any]:
        hub = self.hub(store)
        result = asyncio.run(paced_posts(hub.port, LATENCY_RATE, LATENCY_SECONDS))
        result["delivered"], _ = self.sink.wait_count(result["sent"], 30)
        delivered = self.sink.stats()["latencies"]
        stop(hub)
        acks = result.pop("acks")
        return {**result, "p50": quantile(delivered, 0.5), "p99": quantile(delivered, 0.99),
                "max": max(delivered, default=float("nan")),
                "ack_p50": quantile(acks, 0.5), "ack_p99": quantile(acks, 0.99)}


def cpu_seconds() -> tuple[float, float]:
    """CPU seconds used so far by the whole machine, and by this bench and its processes."""
    tick = os.sysconf("SC_CLK_TCK")
    cpu = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    machine = (sum(cpu) - cpu[3] - cpu[4]) / tick  # all but idle and iowait
    t = os.times()
    ours = t.user + t.system + t.children_user + t.children_system  # and reaped children
    procs: dict[int, tuple[int, int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            procs[int(stat.parent.name)] = (int(fields[1]), int(fields[11]) + int(fields[12]))
    for pid, (ppid, ticks) in procs.items():  # live descendants
        while ppid > 1 and ppid != os.getpid():
            ppid = procs.get(ppid, (0, 0))[0]
        if ppid == os.getpid() and pid != os.getpid():
            ours += ticks / tick
    return machine, ours


def step(name: str, fn: Any, *args: Any) -> dict[str, Any]:
    print(f"-- {name} ...", flush=True)
    start, (machine, ours) = time.monotonic(), cpu_seconds()
    result = fn(*args)
    elapsed, (machine2, ours2) = time.monotonic() - start, cpu_seconds()
    result["others_cpu"] = max(0.0, machine2 - machine - (ours2 - ours)) / elapsed
    shown = {k: round(v, 4) if isinstance(v, float) else v for k, v in result.items()}
    print(f"   {shown}  ({elapsed:.1f}s)", flush=True)
    return result


def report(r: dict[str, dict[str, Any]]) -> None:
    bare, http = r["bare"], r["http"]
    rows = [
        ("bare ASGI HTTP alerts/s", f"{bare['rps']:,.0f}", f"non-2xx {bare['non2xx']}"),
        ("hub HTTP alerts/s (sqlite)", f"{http['rps']:,.0f}",
         f"non-2xx {http['non2xx']}; delivered {http['delivered_meanwhile']} meanwhile, "
         f"all {http['delivered']}/{http['accepted']} {http['drain_s']:.1f}s after"),
        ("ratio hub/bare", f"{http['rps'] / bare['rps']:.2f}", "target >= 0.5"),
    ]
    for store in ("sqlite", "redis"):
        g = r[f"grpc_{store}"]
        rows.append((f"gRPC alerts/s ({store})", f"{g['rate']:,.0f}",
                     f"target >= 20,000; {g['accepted']} acked in {g['seconds']:.1f}s, "
                     f"{g['delivered_meanwhile']} delivered meanwhile"))
    for store in ("sqlite", "redis"):
        lat = r[f"lat_{store}"]
        rows.append((f"latency p50/p99 ({store}, {LATENCY_RATE}/s)",
                     f"{lat['p50'] * 1e3:.1f} / {lat['p99'] * 1e3:.1f} ms",
                     f"target p99 <= 50 ms; max {lat['max'] * 1e3:.0f} ms; POST answered "
                     f"p50/p99 {lat['ack_p50'] * 1e3:.1f}/{lat['ack_p99'] * 1e3:.1f} ms; "
                     f"delivered {lat['delivered']}/{lat['sent']}, errors {lat['errors']}"))
    width, vwidth = (max(len(row[i]) for row in rows) for i in (0, 1))
    print(f"\n{'':{width}}  {'figure':>{vwidth}}  notes")
    for name, value, note in rows:
        print(f"{name:{width}}  {value:>{vwidth}}  {note}")
    print(f"(webhook {WEBHOOK}; wrk {' '.join(WRK[1:])}; gRPC one stream, batches of "
          f"{GRPC_BATCH}, {GRPC_WINDOW} unacked)")
    others = {name: result["others_cpu"] for name, result in r.items()}
    print(f"CPU used by other processes than this bench's, in cores of {os.cpu_count()}: "
          + ", ".join(f"{name} {cores:.2f}" for name, cores in others.items()))
    if max(others.values()) > 0.2:
        print("WARNING: the machine was busy with other work: the figures above are low.")


def main() -> int:
    if not shutil.which("wrk"):
        sys.exit("wrk is missing: apt-get install wrk (scripts/setup.sh does)")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwind: stop what we started
    results: dict[str, dict[str, Any]] = {}
    with contextlib.ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="lanner-bench-")))
        bench = Bench(stack, workdir)
        results["bare"] = step("bare ASGI ceiling (wrk)", bench.bare_http)
        results["http"] = step("hub HTTP ingest, sqlite (wrk)", bench.hub_http)
        for store in ("sqlite", "redis"):
            results[f"grpc_{store}"] = step(f"hub gRPC ingest, {store}", bench.hub_grpc, store)
        for store in ("sqlite", "redis"):
            results[f"lat_{store}"] = step(
                f"latency at {LATENCY_RATE}/s, {store}", bench.latency, store)
    report(results)
    return 0


if __name__ == "__main__":
    role, args = (sys.argv[1:2] or [""])[0], sys.argv[2:]
    if role == "sink":  # the bench's own child processes
        serve_sink(int(args[0]))
    elif role == "grpc":
        print(json.dumps(asyncio.run(
            grpc_publish(args[0], float(args[1]), int(args[2]), int(args[3])))))
    else:
        try:
            sys.exit(main())
        except KeyboardInterrupt:  # the ExitStack has stopped everything by now
            sys.exit("interrupted")
