"""`lanner run`, what `make run` starts: the hub, then (as root) the detector publishing to it
over gRPC, as one foreground program. Ctrl-C stops the detector first, so that the alerts it
still holds reach the hub, then the hub.

The detector is a child process (`lanner detect`), never imported: the hub does not load the
detector. Each child has its own process group, so the terminal's Ctrl-C reaches only this
supervisor, which stops them in order; and each gets SIGTERM if the supervisor dies without
stopping it (PR_SET_PDEATHSIG), so nothing is left running.
"""

from __future__ import annotations

import argparse
import collections
import ctypes
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType

HEALTH_TIMEOUT = 60.0
# The detector's publisher flushes for up to 10 s; the hub then drains its deliveries.
STOP_TIMEOUT = 30.0
# What `lanner detect` says on stderr about its event source (detector/detect.py).
EBPF_READY = "eBPF source attached"
EBPF_FAILED = "eBPF cannot load:"
FALLBACK_READY = "Fallback event source"
FALLBACK_TYPES = "Event types produced:"  # the fallback's description, once it says it
# What the hub prints about its UI: the URL, with the token when the hub made it (cli.py).
_UI_LINE = re.compile(r"lanner: UI: \S+/ui/(?:\?token=(\S+))?")
# A rule of rules/lanner_rules.yaml that both sources can fire on (an open for reading).
SAMPLE_RULE = "Credential file read"
SAMPLE_COMMAND = "cat /etc/shadow > /dev/null"

# A line that says what went wrong (not the detector's "errors=0" at exit).
_FAILURE = re.compile(r"\b(ERROR|[Ee]rror|failed|cannot)\b")
_libc = ctypes.CDLL(None, use_errno=True)
_PR_SET_PDEATHSIG = 1
_print_lock = threading.Lock()
# The hub is on loopback: a user's http_proxy must not see the health checks.
_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="lanner run",
        description="Run the hub and, as root, the detector publishing to it over gRPC; "
                    "Ctrl-C stops both. Exit codes: 0 stopped, 1 the hub failed or a part had to "
                    "be killed, 2 usage.",
        epilog="Arguments after -- go to `lanner detect` (e.g. -- --rules my_rules.yaml).",
    )
    p.add_argument("-c", "--config-file", help="the hub's YAML configuration file")
    p.add_argument("--datadir", default="data", help="the hub's SQLite store (default: data)")
    p.add_argument("--listenaddress", default="127.0.0.1",
                   help="the hub's bind address (default: 127.0.0.1)")
    p.add_argument("--listenport", type=int, default=2801, help="HTTP port (default: 2801)")
    p.add_argument("--grpcport", type=int, default=5060,
                   help="gRPC port, where the detector publishes (default: 5060)")
    return p


def main(argv: Sequence[str]) -> int:
    argv = list(argv)
    split = argv.index("--") if "--" in argv else len(argv)
    parser = _parser()
    args = parser.parse_args(argv[:split])
    if args.grpcport <= 0:
        parser.error("--grpcport must be a port: the detector publishes to the hub over gRPC")
    return Supervisor(args, argv[split + 1:]).run()


def say(text: str) -> None:
    with _print_lock:
        print(text, flush=True)


def _exit(code: int) -> str:
    return f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit {code}"


def _die_with_parent() -> None:
    """In the child, before exec."""
    _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class Child:
    """A supervised process; its output is shown line by line behind its name."""

    def __init__(self, name: str, command: list[str],
                 on_line: Callable[[str], None] | None = None) -> None:
        self.name = name
        self.lines: collections.deque[str] = collections.deque(maxlen=20)
        self._on_line = on_line
        self.proc = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            process_group=0, preexec_fn=_die_with_parent,
        )
        self._pump = threading.Thread(target=self._show, name=f"lanner-run-{name}", daemon=True)
        self._pump.start()

    def _show(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            line = raw.decode("utf-8", "replace").rstrip()
            self.lines.append(line)
            say(f"{self.name:<8} | {line}")
            if self._on_line is not None:
                self._on_line(line)

    def reason(self) -> str:
        """Why it stopped, as it said last: its last error, or its last line."""
        lines = [line for line in self.lines if line.strip()]
        errors = [line for line in lines if _FAILURE.search(line)]
        return (errors or lines or ["(it said nothing)"])[-1].strip()

    def stop(self, force: Callable[[], bool]) -> int | None:
        """SIGTERM, then SIGKILL after STOP_TIMEOUT or once ``force()``; its exit code, or
        None if it had to be killed."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + STOP_TIMEOUT
            while self.proc.poll() is None:
                if force() or time.monotonic() > deadline:
                    self.proc.kill()
                    self.proc.wait()
                    self._pump.join(timeout=5)
                    return None
                time.sleep(0.05)
        self._pump.join(timeout=5)  # its last lines are shown before ours
        return self.proc.returncode


class DetectorWatch:
    """Follows what `lanner detect` says about its event source (from the pump's thread)."""

    def __init__(self) -> None:
        self.reasons: list[str] = []  # why eBPF cannot load
        self.file_events = True  # whether the source sees file opens (the sample needs them)
        self._listing = self._fallback = False
        self.source: str | None = None  # "eBPF" or "fallback" once the detector is ready; last

    def feed(self, line: str) -> None:
        text = line.removeprefix("lanner detect: ")
        if self._listing and text.startswith("  - "):
            self.reasons.append(text[4:].strip())
            return
        self._listing = text.startswith(EBPF_FAILED)
        if text.startswith(EBPF_READY):
            self.source = "eBPF"
        elif text.startswith(FALLBACK_READY):
            self._fallback = True
        elif self._fallback and text.startswith(FALLBACK_TYPES):
            self.file_events = "openat" in text
            self.source = "fallback"


class Supervisor:
    def __init__(self, args: argparse.Namespace, detect_args: list[str]) -> None:
        self.args = args
        self.detect_args = detect_args
        address = args.listenaddress
        host = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(address, address)
        self.host = f"[{host}]" if ":" in host else host
        self.url = f"http://{self.host}:{args.listenport}"
        self.signals = 0
        self.hub: Child | None = None
        self.detector: Child | None = None
        self.watch = DetectorWatch()
        self.ui_token: str | None = None  # as the hub printed it; "" when it was configured
        self._ui_said = threading.Event()

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        # Only counted: the main loop looks every 100 ms (a lock taken here could deadlock).
        self.signals += 1

    def run(self) -> int:
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, self._on_signal)
        status = 1
        try:
            status = self._serve()
        finally:
            status = max(status, self._shutdown())
        return status

    def _serve(self) -> int:
        a = self.args
        say(f"lanner run: starting the hub (SQLite store in {a.datadir}/)")
        command = [sys.executable, "-m", "sidekick.cli", "sidekick", "--datadir", a.datadir,
                   "--listenaddress", a.listenaddress, "--listenport", str(a.listenport),
                   "--grpcport", str(a.grpcport)]
        self.hub = Child("hub", command + (["-c", a.config_file] if a.config_file else []),
                         on_line=self._hub_said)
        problem = self._wait_healthy(self.hub)
        if problem is not None:
            if self.signals:
                return 0
            say(f"lanner run: {problem}")
            return 1
        say(f"lanner run: hub ready: {self.url}/  events API: {self.url}/api/v1/events")
        self._ui_said.wait(2.0)  # printed before the hub listens; its pump may lag behind
        if self.ui_token:
            say(f"lanner run: UI: {self.url}/ui/?token={self.ui_token}  (the API takes the token "
                "as Authorization: Bearer <token>)")
        else:
            say(f"lanner run: UI: {self.url}/ui/ (sign in with the token you configured)")
        say(f"lanner run: a test alert, no detector needed: curl -s -XPOST {self.url}/test")
        if os.geteuid() != 0:
            say("lanner run: not root, so the hub runs alone: the detector needs root to watch "
                "the kernel (eBPF, or the proc connector of its fallback); `sudo make run` "
                "starts both")
        else:
            say("lanner run: starting the detector (compiling its eBPF program can take a "
                "minute)")
            self.detector = Child(
                "detector",
                [sys.executable, "-m", "sidekick.cli", "detect", *self._hub_rules(),
                 "--output", f"grpc://{self.host}:{a.grpcport}", *self.detect_args],
                on_line=self.watch.feed)
        say("lanner run: Ctrl-C stops everything")
        return self._supervise()

    def _hub_rules(self) -> list[str]:
        """The exceptions saved in the UI, which the detector asks the hub for and applies
        as soon as they are saved (docs/detector.md)."""
        path = Path(self.args.datadir) / "detector" / "hub_rules.yaml"
        say(f"lanner run: exceptions saved in the UI apply at once; the detector keeps them in "
            f"{path}")
        return ["--hub-rules", str(path)]

    def _hub_said(self, line: str) -> None:
        found = _UI_LINE.search(line)
        if found:
            self.ui_token = found[1] or ""
            self._ui_said.set()

    def _wait_healthy(self, hub: Child) -> str | None:
        """None once the hub answers /healthz, else why it does not."""
        deadline = time.monotonic() + HEALTH_TIMEOUT
        while not self.signals:
            code = hub.proc.poll()
            if code is not None:
                hub.stop(lambda: True)  # its last lines are shown first
                return f"the hub exited ({_exit(code)}): {hub.reason()}"
            try:
                with _opener.open(f"{self.url}/healthz", timeout=2) as reply:
                    if reply.status == 200:
                        return None
            except OSError:
                pass  # not listening yet, or not ready (503)
            if time.monotonic() > deadline:
                return f"the hub did not answer {self.url}/healthz within {HEALTH_TIMEOUT:.0f}s"
            time.sleep(0.1)
        return "stopped"

    def _supervise(self) -> int:
        assert self.hub is not None
        detector = self.detector
        ready = ended = detector is None  # what was told about the detector
        while not self.signals:
            code = self.hub.proc.poll()
            if code is not None:
                self.hub.stop(lambda: True)
                say(f"lanner run: the hub stopped ({_exit(code)}): {self.hub.reason()}; "
                    "stopping the detector")
                return 1
            if detector is not None and not ended and (code := detector.proc.poll()) is not None:
                detector.stop(lambda: True)
                say(f"lanner run: the detector stopped ({_exit(code)}): {detector.reason()}; "
                    "the hub keeps running")
                ended = True
            elif not ready and self.watch.source is not None:
                self._tell_ready()
                ready = True
            time.sleep(0.1)
        return 0

    def _tell_ready(self) -> None:
        """How the detector watches, and the sample to try."""
        watch = self.watch
        if watch.source == "fallback":
            why = "; ".join(watch.reasons) or "see above"
            seen = "process and file events" if watch.file_events else "process events only"
            say(f"lanner run: eBPF cannot run here ({why}): the detector uses its fallback "
                f"source instead ({seen}, no network events)")
        say(f"lanner run: detector ready ({watch.source}), publishing to the hub over gRPC "
            f"at {self.host}:{self.args.grpcport}")
        if watch.file_events:
            sudo = "sudo " if os.environ.get("SUDO_USER") else ""
            query = urllib.parse.urlencode({"rule": SAMPLE_RULE})
            token = self.ui_token or "<token>"
            say(f"lanner run: trigger a sample alert: {sudo}{SAMPLE_COMMAND}  (rule "
                f"\"{SAMPLE_RULE}\"), then: curl -s -H 'Authorization: Bearer {token}' "
                f"'{self.url}/api/v1/events?{query}'")

    def _shutdown(self) -> int:
        """Detector first, so that its buffer reaches the hub; then the hub. 1 if either had
        to be killed."""
        status = 0
        force = lambda: self.signals > 1  # noqa: E731 - a second Ctrl-C: stop now
        for child in (self.detector, self.hub):
            if child is None:
                continue
            if child.proc.poll() is None:
                say(f"lanner run: stopping the {child.name}")
            if child.stop(force) is None:
                say(f"lanner run: the {child.name} did not stop in time; killed")
                status = 1
        say("lanner run: stopped")
        return status
