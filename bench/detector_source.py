"""eBPF source benchmark: raw events/s from kernel to Records, drops, and the workload's slowdown.

    .venv/bin/python bench/detector_source.py                # about 20 seconds, as root
    .venv/bin/python bench/detector_source.py --ops 500000 --ring-mib 1

The workload is a child process doing a fixed number of open+close pairs of /dev/null through
ctypes (two traced syscalls, so two events, per op). The parent consumes the source as fast as
it can, decoding every event to a Record and doing nothing else, so the figures are the ceiling
the state tracker and rules then share. Phases:
1. compile + attach time for the stable rules' 19 event types plus the state set;
2. the workload alone, with a do-nothing program on the same tracepoints (the floor of
   tracing cost), then with the source attached and consumed: slowdowns, the events
   received from the workload, kernel drops, and the consumer's events per CPU-second;
3. decode cost alone (µs per event) on captured raw events.
It prints figures and asserts nothing about timing.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from detector.sources.ebpf.source import EbpfSource

RULE_TYPES = ["open", "openat", "openat2", "execve", "execveat", "connect", "sendto", "sendmsg",
              "socket", "dup", "dup2", "dup3", "symlink", "symlinkat", "link", "linkat", "ptrace",
              "init_module", "finit_module"]


def workload(ops: int) -> tuple[int, float]:
    """Fork a child doing ``ops`` open+close pairs; its pid and wall seconds (start to exit)."""
    read, write = os.pipe()
    started = time.perf_counter()
    pid = os.fork()
    if pid == 0:
        libc = ctypes.CDLL(None)
        path = b"/dev/null"
        os.read(read, 1)  # wait until the parent is ready to consume
        for _ in range(ops):
            libc.close(libc.open(path, 0))
        os._exit(0)
    os.close(read)
    os.write(write, b"x")
    os.close(write)
    return pid, started


def run_alone(ops: int) -> float:
    pid, started = workload(ops)
    os.waitpid(pid, 0)
    return time.perf_counter() - started


def run_floor(tracepoints: list[str], ops: int) -> float:
    """The workload with programs that return at once on the given tracepoints."""
    from bcc import BPF

    text = "".join(f"TRACEPOINT_PROBE({tp.replace(':', ', ')}) {{ return 0; }}\n"
                   for tp in tracepoints)
    floor = BPF(text=text.encode())
    try:
        return min(run_alone(ops) for _ in range(3))
    finally:
        floor.cleanup()


def run_traced(source: EbpfSource, ops: int) -> dict[str, float]:
    while source.poll(0):
        pass
    drops_before = source.drops().total
    cpu_before = resource.getrusage(resource.RUSAGE_SELF)
    pid, started = workload(ops)
    received = total = 0
    elapsed = None
    while True:
        batch = source.poll(0.05)
        total += len(batch)
        received += sum(r.pid == pid and r.kind in ("openat", "close") for r in batch)
        if elapsed is None and os.waitpid(pid, os.WNOHANG)[0] == pid:
            elapsed = time.perf_counter() - started
        if elapsed is not None and not batch:
            break
    cpu_after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (cpu_after.ru_utime - cpu_before.ru_utime) + (cpu_after.ru_stime - cpu_before.ru_stime)
    return {"elapsed": elapsed or 0.0, "received": received, "total": total,
            "drops": source.drops().total - drops_before, "cpu": cpu}


def decode_cost(source: EbpfSource, ops: int) -> float:
    """µs per event for decoding alone, on open/close events captured raw."""
    raws: list[bytes] = []
    original = source._decode  # measuring the decoder in place, with real events

    def keep(raw: bytes) -> object:
        raws.append(raw)
        return original(raw)

    source._decode = keep  # type: ignore[assignment]
    try:
        pid, _ = workload(ops)
        os.waitpid(pid, 0)
        while source.poll(0.05):
            pass
    finally:
        source._decode = original
    started = time.perf_counter()
    for raw in raws:
        original(raw)
    return (time.perf_counter() - started) / max(len(raws), 1) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ops", type=int, default=300_000, help="open+close pairs per run")
    parser.add_argument("--ring-mib", type=int, default=16)
    options = parser.parse_args()

    alone = min(run_alone(options.ops) for _ in range(3))  # before anything is attached
    started = time.perf_counter()
    source = EbpfSource(RULE_TYPES, ring_bytes=options.ring_mib << 20)
    print(f"compile + attach: {time.perf_counter() - started:.2f} s "
          f"({len(source.attached())} tracepoints)")
    tracepoints = source.attached()
    source.close()
    floor = run_floor(tracepoints, options.ops)
    source = EbpfSource(RULE_TYPES, ring_bytes=options.ring_mib << 20)
    try:
        traced = run_traced(source, options.ops)
        produced = 2 * options.ops
        print(f"workload alone: {alone:.2f} s = {produced / alone:,.0f} syscalls/s")
        print(f"workload under do-nothing programs: {floor:.2f} s (x{floor / alone:.2f})")
        print(f"workload traced: {traced['elapsed']:.2f} s (x{traced['elapsed'] / alone:.2f}, "
              f"x{traced['elapsed'] / floor:.2f} over the floor) "
              f"= {produced / traced['elapsed']:,.0f} syscalls/s")
        print(f"received {traced['received']:,.0f} of {produced:,} workload events, "
              f"kernel drops {traced['drops']:,.0f} ({traced['drops'] / produced:.1%}), "
              f"{traced['total']:,.0f} events in all")
        print(f"consumer: {traced['cpu']:.2f} CPU s = {traced['total'] / traced['cpu']:,.0f} "
              "events per CPU-second")
        print(f"decode alone: {decode_cost(source, min(options.ops, 50_000)):.2f} µs/event")
    finally:
        source.close()

if __name__ == "__main__":
    main()
