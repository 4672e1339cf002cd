"""Detector benchmark: what `lanner detect` with the upstream stable rules costs a node, and the
highest syscall rate it keeps up with, without dropping, on one core.

    .venv/bin/python bench/detector.py             # about 4 minutes, as root, on 2 CPUs
    .venv/bin/python bench/detector.py --runs 5 --step-seconds 8

The workload is bench/detector_load.c, compiled here with cc (without cc, an equivalent
Python loop, which tops out far lower): a fixed number of open+close pairs of a temp file
(two traced syscalls per pair) and a fixed number of fork+exec+wait of /bin/true. Each run
is timed with time.perf_counter from the moment the started helper is told to go.

1. Slowdown: the workload (median of --runs runs) alone; under a do-nothing BPF program on
   the very tracepoints the detector attaches (each program returns 0: the floor of tracing
   cost); under the same with the open exits reading the opened path (the path reader: the
   least any detector that looks at opened paths in the kernel pays); and with `lanner
   detect --source ebpf` running the upstream falco_rules.yaml. Ratios against alone and, for
   the detector, against the do-nothing floor and the path reader. The detector's CPU
   (user+sys, /proc/PID/stat) per run, and its memory (VmHWM, VmRSS, /proc/PID/status).
2. Rate: the same detector, pinned to one CPU, the workload pinned to the other, runs a paced
   open+close loop at a rising rate for --step-seconds each; a step passes when the detector
   dropped nothing (kernel ring buffer drops + its own queue drops, read from its Prometheus
   metrics) and had caught up within 1 s of the workload's end. The highest passing rate,
   twice: opening the temp file (which the kernel filters out, as it would most of a node's
   opens), then a file named syslog (which the stable rules' path tests let through, so every
   event reaches the detector: its own capacity).

Everything it starts (the detector, the workload, the BPF programs) is stopped at the end,
also on an error or Ctrl-C. It prints figures and asserts nothing about timing.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

RULES = Path(__file__).resolve().parents[2] / "shared/upstream/falco/falco_rules.yaml"
HELPER_SOURCE = Path(__file__).resolve().parent / "detector_load.c"

TARGET_SLOWDOWN = 1.05  # detector over the do-nothing program
TARGET_RATE = 250_000  # workload syscalls/s with 0 drops, detector on one core
TARGET_RSS_MB = 150
RATES = [25_000, 50_000, 100_000, 150_000, 200_000, 250_000, 300_000, 400_000, 500_000,
         700_000, 1_000_000]
CAUGHT_UP_S = 1.0  # a rate step passes only if the detector caught up this soon after it
QUIET_PER_S = 10_000  # events/s read from the ring below which the detector counts as idle

# The same workload in Python, for a machine without cc. Same protocol as detector_load.c.
PY_LOAD = """
import os, sys, time
mode, args = sys.argv[1], sys.argv[2:]
print("ready", flush=True)
os.read(0, 1)
start, ops = time.perf_counter(), 0
if mode == "open":
    path = args[1]
    for _ in range(int(args[0])):
        os.close(os.open(path, os.O_RDONLY))
        ops += 1
elif mode == "exec":
    for _ in range(int(args[0])):
        os.waitpid(os.posix_spawn("/bin/true", ["true"], {}), 0)
        ops += 1
elif mode == "paced":
    pairs_per_s, path = float(args[0]) / 2, args[2]
    total = int(pairs_per_s * float(args[1]))
    while ops < total:
        late = (time.perf_counter() - start) * pairs_per_s - ops
        if late < 1:
            time.sleep((1 - late) / pairs_per_s)
            continue
        for _ in range(min(int(late), 64, total - ops)):
            os.close(os.open(path, os.O_RDONLY))
            ops += 1
print(f"done {ops} {time.perf_counter() - start:.6f}", flush=True)
"""


# ---- the workload ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    elapsed: float  # perf_counter, from "go" to the helper's "done" line
    ops: int  # open+close pairs or fork+execs done
    own: float  # the helper's own clock for the same span


class Workload:
    """Starts the helper (C, else Python) and times one run; ``kill()`` ends a running one."""

    def __init__(self, scratch: Path, cpu: int | None) -> None:
        self.cpu = cpu
        self.target = scratch / "target"
        self.target.write_bytes(b"lanner bench\n")
        # A file the stable rules' path tests let through (Clear Log Activities looks at any
        # file named syslog): every open of it reaches the detector, read-only so no alert.
        self.seen = scratch / "logs" / "syslog"
        self.seen.parent.mkdir()
        self.seen.write_bytes(b"lanner bench\n")
        self.child: subprocess.Popen[str] | None = None
        compiler = shutil.which("cc") or shutil.which("gcc")
        self.command: list[str]
        if compiler:
            binary = scratch / "detector_load"
            subprocess.run([compiler, "-O2", "-o", str(binary), str(HELPER_SOURCE)], check=True)
            self.command, self.kind = [str(binary)], f"C helper (bench/detector_load.c, {compiler})"
        else:
            self.command = [sys.executable, "-c", PY_LOAD]
            self.kind = "Python loop (no cc found: tops out far lower than the C helper)"

    def run(self, mode: str, *args: object, path: Path | None = None) -> Run:
        """One run; open and paced modes open ``path`` (default: the filtered temp file)."""
        target = [str(path or self.target)] if mode in ("open", "paced") else []
        extra = [str(a) for a in args] + target
        self.child = child = subprocess.Popen([*self.command, mode, *extra], text=True,
                                              stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        assert child.stdin is not None and child.stdout is not None
        try:
            if self.cpu is not None:
                os.sched_setaffinity(child.pid, {self.cpu})
            if child.stdout.readline().strip() != "ready":
                raise RuntimeError(f"the workload helper did not start ({mode} {extra})")
            started = time.perf_counter()
            child.stdin.write("g")
            child.stdin.flush()
            line = child.stdout.readline()
            elapsed = time.perf_counter() - started
            if child.wait(timeout=60) != 0 or not line.startswith("done "):
                raise RuntimeError(f"the workload helper failed ({mode} {extra}): {line!r}")
            _, ops, own = line.split()
            return Run(elapsed, int(ops), float(own))
        finally:
            self.kill()

    def kill(self) -> None:
        child, self.child = self.child, None
        if child is not None and child.poll() is None:
            child.kill()
            child.wait()


# ---- BPF: the detector's tracepoints and the do-nothing program ----------------------------------


def detector_tracepoints() -> list[str]:
    """The tracepoints `lanner detect` attaches for the stable rules, found the way it finds
    them (the engine's event types plus the state set, compiled and attached, then closed)."""
    from detector.engine.engine import Engine
    from detector.sources.ebpf.source import EbpfSource
    from detector.state import required_event_types

    engine, _ = Engine.from_files([RULES], rule_matching="all")
    source = EbpfSource(required_event_types(engine.event_types))
    try:
        return source.attached()
    finally:
        source.close()


# The cheapest program that looks at opened paths at all: the arguments from the saved
# registers, the path string read, nothing else. Any detector that reads every open's path in
# the kernel (ours, to filter it; Falco, to send it) pays at least this much.
PATH_READER = """
struct path_buf { char bytes[256]; };
BPF_PERCPU_ARRAY(path_buf, struct path_buf, 1);
static __always_inline int read_path(int slot)
{
    u64 *regs = (u64 *)bpf_task_pt_regs(bpf_get_current_task_btf());
    int zero = 0;
    struct path_buf *buf = path_buf.lookup(&zero);
    if (buf)
        bpf_probe_read_user_str(buf->bytes, sizeof(buf->bytes), (void *)regs[slot]);
    return 0;
}
"""
# The register holding each open's path argument: the first for open, the second for the *at
# forms (x86_64 calling convention); its pt_regs index comes from BTF, as the detector's does.
PATH_REGISTER = {"syscalls:sys_exit_open": "REG_DI", "syscalls:sys_exit_openat": "REG_SI",
                 "syscalls:sys_exit_openat2": "REG_SI"}


@contextlib.contextmanager
def do_nothing(tracepoints: list[str], read_paths: bool = False) -> Iterator[None]:
    """A program returning 0 on each tracepoint, attached while the block runs; with
    ``read_paths``, the open exits read the opened path first (PATH_READER)."""
    from bcc import BPF

    from detector.sources.ebpf.btf import Btf
    from detector.sources.ebpf.source import kernel_offsets

    offsets = kernel_offsets(Btf()) if read_paths else {}

    def body(tp: str) -> str:
        register = PATH_REGISTER.get(tp) if read_paths else None
        return "return 0;" if register is None else f"return read_path({offsets[register]});"

    text = (PATH_READER if read_paths else "") + "".join(
        f"TRACEPOINT_PROBE({tp.replace(':', ', ')}) {{ {body(tp)} }}\n" for tp in tracepoints)
    program = BPF(text=text.encode())
    try:
        yield
    finally:
        program.cleanup()


# ---- the detector process ------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass(frozen=True)
class Sample:
    at: float
    cpu: float  # user+sys seconds since the detector started
    metrics: dict[str, float]

    def __getitem__(self, name: str) -> float:
        return self.metrics.get(name, 0.0)

    @property
    def caught_up(self) -> bool:
        """Everything read from the ring has been evaluated (or dropped) and nothing waits."""
        return (self["queue_events"] == 0 and self["events_processed"]
                + self["userspace_drops"] == self["events_received"])


class DetectorProcess:
    """`lanner detect` in its own session, pinned to ``cpu``, alerts to a file, metrics served
    on a local port and read from there."""

    def __init__(self, scratch: Path, cpu: int | None) -> None:
        self.cpu = cpu
        self.port = free_port()
        self.log = scratch / "detect.log"
        self.alerts = scratch / "alerts.json"
        command = [sys.executable, "-m", "sidekick.cli", "detect", "--rules", str(RULES),
                   "--source", "ebpf", "--output", f"file:{self.alerts}",
                   "--metrics", f"127.0.0.1:{self.port}"]
        started = time.perf_counter()
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(command, cwd=REPO, stdin=subprocess.DEVNULL,
                                            stdout=subprocess.DEVNULL, stderr=log,
                                            start_new_session=True)
        self.ticks = os.sysconf("SC_CLK_TCK")
        self.memory_at: dict[str, dict[str, float]] = {}
        try:
            self.pin()
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        self.startup = time.perf_counter() - started
        self.pin()  # every thread it has made by now

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + 120
        while True:
            if self.process.poll() is not None:
                raise RuntimeError("lanner detect exited with status "
                                   f"{self.process.returncode}:\n{self.log_text()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"lanner detect did not serve metrics:\n{self.log_text()}")
            with contextlib.suppress(OSError):
                self.scrape()
                break
            time.sleep(0.1)

    def pin(self) -> None:
        if self.cpu is None:
            return
        with contextlib.suppress(OSError):  # it exited, or one of its threads just did
            for task in Path(f"/proc/{self.process.pid}/task").iterdir():
                os.sched_setaffinity(int(task.name), {self.cpu})

    def log_text(self) -> str:
        return self.log.read_text(errors="replace").strip()

    def scrape(self) -> dict[str, float]:
        url = f"http://127.0.0.1:{self.port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            text = response.read().decode()
        metrics = {}
        for line in text.splitlines():
            if line.startswith("lanner_detector_"):
                name, value = line.split()
                metrics[name.removeprefix("lanner_detector_").removesuffix("_total")] = \
                    float(value)
        return metrics

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / self.ticks  # utime, stime

    def memory_mb(self) -> dict[str, float]:
        """VmHWM (peak resident), VmRSS and its two parts RssAnon (heap) and RssFile (mapped
        files: the interpreter, bcc and LLVM libraries), MB."""
        values = {}
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in ("VmHWM", "VmRSS", "RssAnon", "RssFile"):
                values[key] = int(rest.split()[0]) / 1024  # kB
        return values

    def alert_counts(self) -> dict[str, int]:
        """Alerts written so far, by rule."""
        counts: dict[str, int] = {}
        with contextlib.suppress(FileNotFoundError), open(self.alerts, "rb") as handle:
            for line in handle:
                with contextlib.suppress(ValueError, AttributeError):
                    rule = str(json.loads(line).get("rule"))
                    counts[rule] = counts.get(rule, 0) + 1
        return counts

    def sample(self) -> Sample:
        return Sample(time.perf_counter(), self.cpu_seconds(), self.scrape())

    def settle(self, timeout: float = 60.0) -> tuple[Sample, float]:
        """Wait until the detector is idle: it has evaluated all it read and reads little more.
        Returns the sample then and the seconds it took (``inf`` past ``timeout``). The kernel
        drop count it serves is refreshed every 0.25 s, so the sample is taken 0.3 s later."""
        started = time.perf_counter()
        previous = self.sample()
        waited = float("inf")
        while time.perf_counter() - started < timeout:
            time.sleep(0.1)
            current = self.sample()
            read = current["events_received"] - previous["events_received"]
            if current.caught_up and read <= QUIET_PER_S * (current.at - previous.at):
                waited = current.at - started
                break
            previous = current
        time.sleep(0.3)
        return self.sample(), waited

    def stop(self) -> str:
        """Stop it (SIGTERM, then SIGKILL after 15 s); its last log line (its own counters)."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        lines = self.log_text().splitlines()
        return lines[-1] if lines else ""


# ---- phases --------------------------------------------------------------------------------------


@dataclass
class Traced:
    """One workload run under the detector, with what the detector did for it."""

    run: Run
    received: float
    kernel_drops: float
    user_drops: float
    cpu: float  # detector CPU seconds from the workload's start until it caught up
    settle: float  # seconds after the workload until the detector caught up


def traced_run(detector: DetectorProcess, workload: Workload, mode: str, count: int) -> Traced:
    before, _ = detector.settle()
    run = workload.run(mode, count)
    after, waited = detector.settle()
    return Traced(run, after["events_received"] - before["events_received"],
                  after["kernel_drops"] - before["kernel_drops"],
                  after["userspace_drops"] - before["userspace_drops"],
                  after.cpu - before.cpu, waited)


def median_run(runs: list[Run]) -> Run:
    return sorted(runs, key=lambda r: r.elapsed)[len(runs) // 2]


def median_traced(runs: list[Traced]) -> Traced:
    return sorted(runs, key=lambda r: r.run.elapsed)[len(runs) // 2]


@dataclass(frozen=True)
class Step:
    rate: int  # asked for, syscalls/s
    achieved: float  # syscalls/s the helper really did
    drops: float
    kernel: float
    user: float
    lag: float  # seconds until caught up after the workload ended
    cpu_share: float  # detector CPU over the step and its catch-up, of one CPU

    @property
    def passed(self) -> bool:
        return self.drops == 0 and self.lag <= CAUGHT_UP_S


def rate_step(detector: DetectorProcess, workload: Workload, rate: int, seconds: float,
              path: Path) -> Step:
    before, _ = detector.settle()
    run = workload.run("paced", rate, seconds, path=path)
    after, lag = detector.settle()
    kernel = after["kernel_drops"] - before["kernel_drops"]
    user = after["userspace_drops"] - before["userspace_drops"]
    busy = (after.cpu - before.cpu) / (after.at - before.at)
    return Step(rate, 2 * run.ops / run.own, kernel + user, kernel, user, lag, busy)


def print_step(step: Step) -> None:
    lag = "never" if step.lag == float("inf") else f"{step.lag:.1f} s"
    verdict = "pass" if step.passed else "FAIL"
    print(f"  {step.rate:>9,}/s asked  {step.achieved:>11,.0f}/s done  drops {step.drops:>9,.0f} "
          f"(kernel {step.kernel:,.0f}, queue {step.user:,.0f})  caught up after {lag:>6}  "
          f"detector CPU {step.cpu_share:>4.0%}  {verdict}", flush=True)


def find_rate(detector: DetectorProcess, workload: Workload, seconds: float,
              path: Path) -> Step | None:
    """Step the rate up until a step fails or the workload cannot go faster, then bisect
    twice between the last pass and the first failure. The highest passing step."""
    best: Step | None = None
    failed: int | None = None
    for rate in RATES:
        step = rate_step(detector, workload, rate, seconds, path)
        print_step(step)
        if step.achieved < 0.97 * rate:
            print(f"  the workload cannot go faster than {step.achieved:,.0f} syscalls/s here")
            if step.passed and (best is None or step.achieved > best.achieved):
                best = step
            return best
        if not step.passed:
            failed = rate
            break
        best = step
    if failed is None:
        return best
    low = best.rate if best else 0
    for _ in range(2):
        rate = round((low + failed) / 2 / 5000) * 5000
        if rate in (low, failed):
            break
        step = rate_step(detector, workload, rate, seconds, path)
        print_step(step)
        if step.passed:
            best, low = step, rate
        else:
            failed = rate
    return best


def ratio(value: float, base: float) -> str:
    return f"x{value / base:.3f} ({value / base - 1:+.1%})"


@dataclass
class Slowdown:
    alone: tuple[Run, Run]  # open loop, exec loop
    floor: tuple[Run, Run]
    reader: tuple[Run, Run]
    traced: tuple[Traced, Traced]


def measure_untraced(workload: Workload, tracepoints: list[str], opens: int, execs: int,
                     runs: int) -> tuple[tuple[Run, Run], tuple[Run, Run], tuple[Run, Run]]:
    """The workload alone, under the do-nothing programs, and under the path reader (open
    loop, exec loop each)."""
    def both() -> tuple[Run, Run]:
        return (median_run([workload.run("open", opens) for _ in range(runs)]),
                median_run([workload.run("exec", execs) for _ in range(runs)]))

    workload.run("open", opens // 10)  # warm the caches
    alone = both()
    with do_nothing(tracepoints):
        floor = both()
    with do_nothing(tracepoints, read_paths=True):
        reader = both()
    return alone, floor, reader


def measure_traced(detector: DetectorProcess, workload: Workload, opens: int, execs: int,
                   runs: int) -> tuple[Traced, Traced]:
    attached = [line for line in detector.log_text().splitlines() if "attached" in line]
    print(f"detector started in {detector.startup:.1f} s"
          + (f" ({attached[0].removeprefix('lanner detect: ')})" if attached else ""),
          flush=True)
    detector.memory_at["after start-up"] = detector.memory_mb()
    traced = (median_traced([traced_run(detector, workload, "open", opens)
                             for _ in range(runs)]),
              median_traced([traced_run(detector, workload, "exec", execs)
                             for _ in range(runs)]))
    detector.memory_at["after slowdown"] = detector.memory_mb()
    return traced


def print_slowdown(result: Slowdown, opens: int) -> None:
    alone, floor, reader = result.alone, result.floor, result.reader
    traced = (result.traced[0].run, result.traced[1].run)
    print("\n1. Slowdown (workload wall time, median)")
    print(f"  {'':<22}{'open loop':<42}exec loop")
    for label, (op, ex) in (("alone", alone), ("do-nothing programs", floor),
                            ("path reader", reader), ("detector + rules", traced)):
        open_ratio = "" if op is alone[0] else f"x{op.elapsed / alone[0].elapsed:.3f}"
        exec_ratio = "" if ex is alone[1] else f"x{ex.elapsed / alone[1].elapsed:.3f}"
        open_text = f"{op.elapsed:6.3f} s {2 * op.ops / op.elapsed:>10,.0f} sc/s  {open_ratio}"
        exec_text = f"{ex.elapsed:6.3f} s {ex.ops / ex.elapsed:>7,.0f} exec/s  {exec_ratio}"
        print(f"  {label:<22}{open_text:<42}{exec_text}")
    for label, runs, base in (("do-nothing over alone:      ", floor, alone),
                              ("detector over alone:        ", traced, alone),
                              ("path reader over do-nothing:", reader, floor),
                              ("detector over do-nothing:   ", traced, floor),
                              ("detector over path reader:  ", traced, reader)):
        print(f"  {label} open {ratio(runs[0].elapsed, base[0].elapsed)}, "
              f"exec {ratio(runs[1].elapsed, base[1].elapsed)}"
              + (f"   (target <= x{TARGET_SLOWDOWN:.2f})" if runs is traced and base is floor
                 else ""))
    print("  Falco's published figure for context: -12% throughput for its hooks alone")
    print("  path reader: the do-nothing programs, except that the open exits read the path "
          "(the\n  least any detector looking at opened paths in the kernel does)")
    print("\n  the detector during those runs (median run; its events include other "
          "processes')")
    for name, run, produced in (("open loop", result.traced[0], f" ({2 * opens:,} from "
                                 "the workload)"), ("exec loop", result.traced[1], "")):
        events = run.received + run.kernel_drops
        lost = run.kernel_drops + run.user_drops
        per_event = run.cpu / max(run.received - run.user_drops, 1) * 1e6
        print(f"  {name}: {events:,.0f} events{produced}, dropped {lost:,.0f} "
              f"({lost / max(events, 1):.1%}: kernel {run.kernel_drops:,.0f}, queue "
              f"{run.user_drops:,.0f}); CPU {run.cpu:.2f} s user+sys = {per_event:.1f} µs per "
              f"evaluated event; caught up {run.settle:.1f} s after the workload")
    print("  (a dropped event is still built by the program and only skips the copy into the "
          "ring,\n  so drops flatter the traced workload's time a little)")


def print_summary(result: Slowdown, step: Step | None, seen_step: Step | None, searched: bool,
                  peak: float, steady: float) -> None:
    print("\nSummary against the targets")
    over = [t.run.elapsed / f.elapsed for t, f in zip(result.traced, result.floor, strict=True)]
    print(f"  slowdown beyond do-nothing: open {over[0] - 1:+.1%}, exec {over[1] - 1:+.1%}  "
          f"target <= {TARGET_SLOWDOWN - 1:+.0%}  "
          + ("met" if max(over) <= TARGET_SLOWDOWN else "NOT met"))
    over_reader = [t.run.elapsed / r.elapsed for t, r in zip(result.traced, result.reader,
                                                            strict=True)]
    print(f"  (beyond the path reader: open {over_reader[0] - 1:+.1%}, exec "
          f"{over_reader[1] - 1:+.1%})")
    if searched:
        best = step.achieved if step else 0.0
        print(f"  0-drop rate on one core: {best:,.0f} syscalls/s  target >= {TARGET_RATE:,}  "
              + ("met" if best >= TARGET_RATE else "NOT met") + "  (Falco: ~250k at 1 CPU)")
        seen = seen_step.achieved if seen_step else 0.0
        print(f"  (when every event reaches the detector: {seen:,.0f} syscalls/s)")
    print(f"  peak RSS: {peak:.1f} MB  target <= {TARGET_RSS_MB}  "
          + ("met" if peak <= TARGET_RSS_MB else "NOT met")
          + f"  (VmRSS at the end {steady:.1f} MB)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--opens", type=int, default=400_000, help="open+close pairs per run")
    parser.add_argument("--execs", type=int, default=2_000, help="fork+exec of /bin/true per run")
    parser.add_argument("--runs", type=int, default=3, help="runs per configuration (median)")
    parser.add_argument("--step-seconds", type=float, default=5.0, help="length of a rate step")
    parser.add_argument("--no-rate", action="store_true", help="skip the rate search")
    options = parser.parse_args()

    if os.geteuid() != 0:
        sys.exit("bench/detector.py: needs root (it loads BPF programs)")
    if not RULES.is_file():
        sys.exit(f"bench/detector.py: the upstream stable rules are missing: {RULES} (the "
                 "shared/ folder beside the repository holds them)")
    # Ctrl-C and SIGTERM both unwind through the finally block below.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    cpus = sorted(os.sched_getaffinity(0))
    detector_cpu, workload_cpu = (cpus[0], cpus[1]) if len(cpus) >= 2 else (None, None)
    print(f"Lanner detector benchmark: kernel {os.uname().release}, {len(cpus)} CPUs, "
          f"load average {load_average()} at start")
    if workload_cpu is None:
        print("only one CPU: nothing pinned, the detector and the workload share it")
    else:
        print(f"detector pinned to CPU {detector_cpu}, workload to CPU {workload_cpu} "
              "(in every configuration)")
        os.sched_setaffinity(0, {workload_cpu})  # this process mostly waits for the workload
    print(f"rules: {RULES}")

    detector: DetectorProcess | None = None
    workload: Workload | None = None
    with tempfile.TemporaryDirectory(prefix="lanner-bench-") as scratch_dir:
        scratch = Path(scratch_dir)
        try:
            workload = Workload(scratch, workload_cpu)
            print(f"workload: {workload.kind}; open loop = {options.opens:,} open+close of a "
                  f"temp file ({2 * options.opens:,} syscalls), exec loop = {options.execs:,} "
                  f"fork+exec+wait of /bin/true; median of {options.runs} runs each")
            started = time.perf_counter()
            tracepoints = detector_tracepoints()
            print(f"the detector's tracepoints: {len(tracepoints)} "
                  f"(found in {time.perf_counter() - started:.1f} s)", flush=True)

            alone, floor, reader = measure_untraced(workload, tracepoints, options.opens,
                                                    options.execs, options.runs)
            detector = DetectorProcess(scratch, detector_cpu)
            result = Slowdown(alone, floor, reader, measure_traced(
                detector, workload, options.opens, options.execs, options.runs))
            print_slowdown(result, options.opens)

            step = seen_step = None
            if not options.no_rate:
                print(f"\n2. Highest paced open+close rate with 0 drops "
                      f"({options.step_seconds:g} s steps, detector on one CPU; a step passes "
                      f"with 0 drops and caught up within {CAUGHT_UP_S:g} s)", flush=True)
                print("  a. the temp file, which no rule's path test lets through: the kernel "
                      "drops its opens\n     (and the closes of their fds)")
                step = find_rate(detector, workload, options.step_seconds, workload.target)
                print(f"  b. {workload.seen.parent.name}/{workload.seen.name}, which the rules "
                      "must see: every open and close reaches the detector")
                seen_step = find_rate(detector, workload, options.step_seconds, workload.seen)

            detector.memory_at["at the end"] = memory = detector.memory_mb()
            print("\n3. Detector memory (MB; RssFile: mapped files, the interpreter, bcc and "
                  "LLVM; RssAnon: heap)")
            for when, values in detector.memory_at.items():
                print(f"  {when + ':':<16}" + "  ".join(f"{key} {values[key]:6.1f}" for key in
                                                     ("VmRSS", "RssAnon", "RssFile", "VmHWM")))
            alerts = detector.alert_counts()
            final = detector.stop()
            print(f"  alerts written during the benchmark: {sum(alerts.values()):,}"
                  + "".join(f"\n    {count:>5} {rule}" for rule, count in sorted(alerts.items())))
            print(f"  its own counters at exit: {final.removeprefix('lanner detect: ')}")

            print_summary(result, step, seen_step, not options.no_rate, memory["VmHWM"],
                          memory["VmRSS"])
            print(f"  load average at the end {load_average()}")
        except KeyboardInterrupt:
            print("\ninterrupted", file=sys.stderr)
            raise SystemExit(130) from None
        finally:
            if workload is not None:
                workload.kill()
            if detector is not None:
                detector.stop()
            os.sched_setaffinity(0, set(cpus))


def load_average() -> str:
    return Path("/proc/loadavg").read_text().split()[0]


if __name__ == "__main__":
    main()
