"""Issue 5 acceptance: `lanner detect` on this machine's real kernel, with Falco's stable rules
loaded unchanged, catches real behaviours performed here (real podman containers where a rule
needs one), with the right output fields.

One detector runs for the whole module (it takes seconds to compile and attach); a second one,
with no rules, watches the same behaviours and must stay silent. Every behaviour carries a
marker (a path, an argv word, a container id) so an alert is matched to the action that caused
it even if something else on the node alerts meanwhile.

Needs root, a prepared node (tracefs, kernel headers, bcc) and podman with runc: without them
the tests fail, never skip.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from detector.detect import DROP_RULE, Detector
from detector.engine.engine import Engine
from detector.sources.ebpf.source import EbpfSource
from detector.sources.record import Record
from detector.state import required_event_types
from detector.state.tracker import Tracker
from sidekick.alert import Alert
from tests.detect_process import DetectProcess
from tests.ebpf_support import prepared_node
from tests.podman_support import Podman
from tests.support import require_binary
from tests.upstream import upstream_file

MARK = f"lm{uuid.uuid4().hex[:6]}"  # short: it goes into 15-character process names
# A private name for the K8S API server, seen only by the detector (its own /etc/hosts):
# a connection to it stays on the container's loopback.
K8S_API = "127.0.0.7"
# A routable (not loopback, not RFC 1918) address that exists only on the loopback of a
# private network namespace, so "outbound" ssh never leaves the machine.
TEST_NET = "198.51.100.7"
ALERT_WAIT = 5.0

# Stable rules no behaviour on this machine can trigger, and why. test_uncovered_rules_are_
# exactly_the_ones_named keeps this list honest.
CANNOT_TRIGGER = {
    "Linux Kernel Module Injection Detected":
        "this kernel is built without module support (no /proc/modules): init_module and "
        "finit_module have no tracepoint, the detector says so at start-up",
}


# ---- the detector process --------------------------------------------------------------------


@dataclass
class Box:
    id: str
    name: str

    @property
    def short(self) -> str:
        return self.id[:12]


@dataclass
class Env:
    scratch: Path
    podman: Podman
    plain: Box
    privileged: Box
    detector: DetectProcess
    silent: DetectProcess  # no rules loaded: must never alert
    started: float = field(default_factory=time.monotonic)


def run(*command: str, timeout: float = 30, **kw: Any) -> subprocess.CompletedProcess[str]:
    """A behaviour's command; many are meant to fail (refused connections, missing applets),
    what matters is that the kernel saw them."""
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                          check=False, **kw)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    prepared_node()
    require_binary("unshare")
    scratch = tmp_path_factory.mktemp("e2e")
    podman = Podman(scratch / "podman")
    try:
        plain = podman.start()
        privileged = podman.start("--privileged")
        hosts = scratch / "hosts"
        hosts.write_text(Path("/etc/hosts").read_text()
                         + f"\n{K8S_API} kubernetes.default.svc.cluster.local\n")
        common = ("--runtime-socket", podman.socket)
        (scratch / "main").mkdir()
        (scratch / "silent").mkdir()
        empty = scratch / "no-rules.yaml"
        empty.write_text("[]\n")
        detector = DetectProcess(scratch / "main", "--rules",
                                 str(upstream_file("falco_rules.yaml")), *common, hosts=hosts)
        silent = DetectProcess(scratch / "silent", "--rules", str(empty), *common)
        try:
            # Container metadata (privileged, name) is fetched on first sight, asynchronously:
            # show the detector both containers before a rule depends on it.
            for box in (plain, privileged):
                podman.exec(str(box["id"]), "/bin/true")
            time.sleep(1.0)
            yield Env(scratch, podman, Box(str(plain["id"]), str(plain["name"])),
                      Box(str(privileged["id"]), str(privileged["name"])), detector, silent)
        finally:
            silent.stop()
            detector.stop()
    finally:
        podman.close()


def pexec(e: Env, box: Box, *command: str, options: tuple[str, ...] = ()) -> None:
    run(e.podman.podman, "exec", *options, box.id, *command)


def copy_as(e: Env, source: str, name: str) -> Path:
    """``source`` copied under a marker name: the process name a rule sees."""
    where = e.scratch / "bin"
    where.mkdir(exist_ok=True)
    target = where / name
    if not target.exists():
        shutil.copy(shutil.which(source) or source, target)
    return target


def marker_dir(e: Env, name: str) -> Path:
    path = e.scratch / f"{MARK}-{name}"
    path.mkdir(exist_ok=True)
    return path


# ---- behaviours: each performs one, and says which alert fields show it was caught ----------

Expect = dict[str, Callable[[Any], bool] | object]


def eq(value: object) -> Callable[[Any], bool]:
    return lambda got: got == value


def has(part: str) -> Callable[[Any], bool]:
    return lambda got: isinstance(got, str) and part in got


def traversal(e: Env) -> Expect:
    cat = copy_as(e, "cat", f"{MARK}trav")
    run(str(cat), "/etc/../etc/../etc/shadow")
    return {"proc.name": eq(cat.name), "fd.name": eq("/etc/shadow"),
            "fd.nameraw": eq("/etc/../etc/../etc/shadow")}


def untrusted_read(e: Env) -> Expect:
    cat = copy_as(e, "cat", f"{MARK}read")
    run(str(cat), "/etc/shadow")
    return {"proc.name": eq(cat.name), "fd.name": eq("/etc/shadow"), "user.name": eq("root"),
            "container.id": eq("host"), "proc.cmdline": eq(f"{cat.name} /etc/shadow")}


def trusted_after_startup(e: Env) -> Expect:
    # A server older than 5 s reads /etc/shadow itself (a redirection of a builtin: the
    # shell opens it), as an exploited httpd would.
    httpd = marker_dir(e, "srv") / "httpd"
    shutil.copy("/bin/bash", httpd)
    run(str(httpd), "-c", f": {MARK}; sleep 5.3; read -r x < /etc/shadow; true")
    return {"proc.name": eq("httpd"), "fd.name": eq("/etc/shadow"),
            "proc.cmdline": has(MARK)}


def shell_untrusted(e: Env) -> Expect:
    httpd = marker_dir(e, "web") / "httpd"
    shutil.copy("/bin/bash", httpd)
    run(str(httpd), "-c", f"sh -c ': {MARK}'; true")
    return {"proc.name": eq("sh"), "proc.pname": eq("httpd"), "proc.cmdline": has(MARK)}


def system_user_login(e: Env) -> Expect:
    # login refuses to work without root, but the system user did run it.
    run("runuser", "-u", "daemon", "--", shutil.which("login") or "login", f"{MARK}user")
    return {"user.name": eq("daemon"), "proc.name": eq("login"),
            "proc.cmdline": has(f"{MARK}user")}


def terminal_shell(e: Env) -> Expect:
    pexec(e, e.plain, "/bin/sh", "-c", f": {MARK}tty", options=("-t",))
    return {"container.id": eq(e.plain.short), "container.name": eq(e.plain.name),
            "proc.name": eq("sh"), "proc.cmdline": has(f"{MARK}tty"),
            "proc.tty": lambda tty: bool(tty)}


def k8s_api(e: Env) -> Expect:
    # The first connection only starts the name's resolution in the detector (Falco too
    # resolves in the background): connect until the answer is known.
    for _ in range(6):
        pexec(e, e.plain, "/bin/nc", "-w", "1", K8S_API, "443")
        if e.detector.wait("Contact K8S API Server From Container",
                           lambda f: f.get("container.id") == e.plain.short, 0.5):
            break
    return {"container.id": eq(e.plain.short), "fd.name": has(f"->{K8S_API}:443"),
            "fd.rport": eq(443), "proc.name": eq("nc")}


def _nc_shell(e: Env) -> None:
    # A listener in the container, and nc -e connecting to it: nc moves the socket onto
    # stdin/stdout (dup2) before running the program, as a reverse shell does.
    port = "4444"
    pexec(e, e.plain, "/bin/nc", "-l", "-p", port, "-w", "3", options=("-d",))
    for _ in range(20):
        # busybox nc takes -e last: the rest of the line is the program
        done = run(e.podman.podman, "exec", e.plain.id, "/bin/nc", "127.0.0.1", port,
                   "-e", "/bin/true")
        if done.returncode == 0:
            return
        time.sleep(0.1)


def netcat_rce(e: Env) -> Expect:
    _nc_shell(e)
    return {"container.id": eq(e.plain.short), "proc.name": eq("nc"),
            "proc.cmdline": has(" -e /bin/true")}


def redirect_stdio(e: Env) -> Expect:
    _nc_shell(e)
    return {"container.id": eq(e.plain.short), "proc.name": eq("nc"),
            "fd.type": eq("ipv4"), "fd.sip": eq("127.0.0.1"), "evt.type": has("dup")}


def private_keys(e: Env) -> Expect:
    where = marker_dir(e, "keys")
    run("find", str(where), "-maxdepth", "1", "-name", "id_rsa")
    return {"proc.name": eq("find"), "proc.cmdline": has(str(where))}


def aws_credentials(e: Env) -> Expect:
    where = marker_dir(e, "aws")
    run("grep", "-r", "aws_secret_access_key", str(where))
    return {"proc.name": eq("grep"), "proc.cmdline": has(str(where))}


def clear_log(e: Env) -> Expect:
    log = marker_dir(e, "log") / "syslog"
    log.write_text("evidence\n")
    run(sys.executable, "-c", f"open({str(log)!r}, 'w').close()")
    return {"fd.name": eq(str(log))}


def shred(e: Env) -> Expect:
    victim = marker_dir(e, "shred") / "data"
    victim.write_bytes(os.urandom(4096))
    run("shred", "-u", str(victim))
    return {"proc.name": eq("shred"), "proc.cmdline": has(str(victim))}


def symlink(e: Env) -> Expect:
    link = marker_dir(e, "sym") / "shadow"
    run("ln", "-s", "/etc/shadow", str(link))
    return {"proc.name": eq("ln"), "evt.arg.target": eq("/etc/shadow"),
            "evt.arg.linkpath": has(str(link))}


def hardlink(e: Env) -> Expect:
    link = marker_dir(e, "hard") / "shadow"
    run("ln", "/etc/shadow", str(link))
    return {"proc.name": eq("ln"), "evt.arg.oldpath": eq("/etc/shadow"),
            "evt.arg.newpath": has(str(link))}


def packet_socket(e: Env) -> Expect:
    # busybox arping opens an AF_PACKET socket (privileged: it has CAP_NET_RAW).
    pexec(e, e.privileged, "/bin/arping", "-c", "1", "-w", "1", "-I", "lo", "127.0.0.1")
    return {"container.id": eq(e.privileged.short), "proc.name": eq("arping"),
            "evt.type": eq("socket")}


def debugfs(e: Env) -> Expect:
    # The image has no debugfs; a link to busybox under that name is what runs (and exits:
    # no such applet) — the exec is the behaviour.
    pexec(e, e.privileged, "/bin/ln", "-sf", "/bin/busybox", "/tmp/debugfs")
    pexec(e, e.privileged, "/tmp/debugfs", "-V", MARK)
    return {"container.id": eq(e.privileged.short), "proc.name": eq("debugfs"),
            "proc.cmdline": has(MARK), "container.name": eq(e.privileged.name)}


def release_agent(e: Env) -> Expect:
    path = f"/tmp/{MARK}-release_agent"
    pexec(e, e.privileged, "/bin/sh", "-c", f"echo /x > {path}")
    return {"container.id": eq(e.privileged.short), "fd.name": eq(path),
            "user.name": eq("root"), "thread.cap_effective": has("CAP_SYS_ADMIN")}


PTRACE = """
import ctypes, os, sys, time
libc = ctypes.CDLL(None, use_errno=True)
libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
if sys.argv[1] == "attach":
    pid = os.fork()
    if pid == 0:
        time.sleep(5)
        os._exit(0)
    libc.ptrace(16, pid, None, None)  # PTRACE_ATTACH
    os.waitpid(pid, 0)
    os.kill(pid, 9)
else:
    libc.ptrace(0, 0, None, None)  # PTRACE_TRACEME
"""


def ptrace_attach(e: Env) -> Expect:
    run(sys.executable, "-c", PTRACE, "attach", MARK)
    return {"proc.cmdline": has(f"attach {MARK}"), "evt.type": eq("ptrace")}


def ptrace_traceme(e: Env) -> Expect:
    run(sys.executable, "-c", PTRACE, "traceme", MARK)
    return {"proc.cmdline": has(f"traceme {MARK}")}


def dev_shm(e: Env) -> Expect:
    binary = Path(f"/dev/shm/{MARK}shm")
    shutil.copy("/bin/true", binary)
    try:
        run(str(binary))
    finally:
        binary.unlink()
    return {"proc.exepath": eq(str(binary)), "proc.name": eq(binary.name)}


def drop_and_execute(e: Env) -> Expect:
    # Written into the container's writable (overlay upper) layer, then run.
    dropped = f"/tmp/{MARK}drop"
    pexec(e, e.plain, "/bin/cp", "/bin/busybox", dropped)
    pexec(e, e.plain, dropped)
    return {"container.id": eq(e.plain.short), "proc.exepath": eq(dropped),
            "proc.exe": eq(dropped)}


SSH = """
import socket, subprocess, sys, threading
addr, ssh, user = sys.argv[1:4]
subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
subprocess.run(["ip", "addr", "add", addr + "/32", "dev", "lo"], check=True)
server = socket.create_server((addr, 443))
def serve():
    conn, _ = server.accept()
    conn.close()
threading.Thread(target=serve, daemon=True).start()
subprocess.run([ssh, "-p", "443", "-o", "BatchMode=yes", "-o", "ConnectTimeout=3",
                "-o", "StrictHostKeyChecking=no", user + "@" + addr], timeout=10)
"""


def ssh_port(e: Env) -> Expect:
    ssh = require_binary("ssh")
    run("unshare", "--net", "--", sys.executable, "-c", SSH, TEST_NET, ssh, MARK)
    return {"proc.exepath": eq(ssh), "fd.name": has(f"->{TEST_NET}:443"),
            "fd.rport": eq(443), "proc.cmdline": has(f"{MARK}@{TEST_NET}")}


MEMFD = """
import os, sys
fd = os.memfd_create(sys.argv[1])
with open("/bin/true", "rb") as exe:
    os.write(fd, exe.read())
os.execv(f"/proc/self/fd/{fd}", ["true", sys.argv[1]])
"""


def memfd(e: Env) -> Expect:
    run(sys.executable, "-c", MEMFD, MARK)
    return {"proc.cmdline": has(MARK), "proc.exepath": has("memfd:")}


BEHAVIOURS: dict[str, Callable[[Env], Expect]] = {
    "Directory traversal monitored file read": traversal,
    "Read sensitive file trusted after startup": trusted_after_startup,
    "Read sensitive file untrusted": untrusted_read,
    "Run shell untrusted": shell_untrusted,
    "System user interactive": system_user_login,
    "Terminal shell in container": terminal_shell,
    "Contact K8S API Server From Container": k8s_api,
    "Netcat Remote Code Execution in Container": netcat_rce,
    "Search Private Keys or Passwords": private_keys,
    "Clear Log Activities": clear_log,
    "Remove Bulk Data from Disk": shred,
    "Create Symlink Over Sensitive Files": symlink,
    "Create Hardlink Over Sensitive Files": hardlink,
    "Packet socket created in container": packet_socket,
    "Redirect STDOUT/STDIN to Network Connection in Container": redirect_stdio,
    "Debugfs Launched in Privileged Container": debugfs,
    "Detect release_agent File Container Escapes": release_agent,
    "PTRACE attached to process": ptrace_attach,
    "PTRACE anti-debug attempt": ptrace_traceme,
    "Find AWS Credentials": aws_credentials,
    "Execution from /dev/shm": dev_shm,
    "Drop and execute new binary in container": drop_and_execute,
    "Disallowed SSH Connection Non Standard Port": ssh_port,
    "Fileless execution via memfd_create": memfd,
}


def matches(expect: Expect) -> Callable[[dict[str, Any]], bool]:
    def check(fields: dict[str, Any]) -> bool:
        for name, want in expect.items():
            if name not in fields:
                return False
            if not (want(fields[name]) if callable(want) else fields[name] == want):
                return False
        return True

    return check


@pytest.mark.parametrize("rule", list(BEHAVIOURS))
def test_stable_rule_fires_on_the_real_behaviour(env: Env, rule: str) -> None:
    expect = BEHAVIOURS[rule](env)
    alert = env.detector.wait(rule, matches(expect), ALERT_WAIT)
    if alert is None:
        seen = [a["output_fields"] for a in env.detector.alerts() if a["rule"] == rule]
        pytest.fail(f"no {rule!r} alert matching the behaviour within {ALERT_WAIT}s; "
                    f"alerts of that rule: {seen}")
    assert alert["source"] == "syscall"
    assert "container.id" in alert["output_fields"]  # Falco appends the container fields


def test_uncovered_rules_are_exactly_the_ones_named() -> None:
    engine, _ = Engine.from_files([upstream_file("falco_rules.yaml")])
    stable = {rule.name for rule in engine.rules}
    assert len(stable) == 25
    assert set(BEHAVIOURS) | set(CANNOT_TRIGGER) == stable
    assert not set(BEHAVIOURS) & set(CANNOT_TRIGGER)


def test_the_detector_names_what_this_kernel_cannot_trace(env: Env) -> None:
    told = env.detector.stderr()
    assert "not traceable on this kernel: finit_module, init_module" in told
    assert not Path("/proc/modules").exists()  # why: no loadable module support at all


def test_a_process_gone_within_a_millisecond_is_still_named(env: Env) -> None:
    """The parent forks, the child reads /etc/shadow and exits about a millisecond after it
    started, and the parent exits right after: both are gone from /proc before the reader
    (which polls every 10 ms) even sees the read, so only the events can name them.
    (Had the parent exited first, the child would be the reaper's, as in Falco.)"""
    parent = copy_as(env, "bash", f"{MARK}par")
    cat = copy_as(env, "cat", f"{MARK}kid")
    started = time.monotonic()
    run(str(parent), "-c", f"{cat} /etc/shadow; exit 0")
    assert time.monotonic() - started < 1.0
    alert = env.detector.wait("Read sensitive file untrusted",
                              lambda f: f.get("proc.name") == cat.name, ALERT_WAIT)
    assert alert is not None, "the short-lived reader was not caught"
    fields = alert["output_fields"]
    assert fields["proc.pname"] == parent.name
    assert fields["proc.cmdline"] == f"{cat.name} /etc/shadow"


def _spawned(alerts: list[dict[str, Any]], names: set[str], marker: str) -> list[Any]:
    return [a for a in alerts
            if a["output_fields"].get("proc.name") in names or marker in a["output"]]


def test_ordinary_activity_raises_no_stable_alert(env: Env) -> None:
    before = len(env.detector.alerts())
    work = marker_dir(env, "ordinary")
    (work / "hello.c").write_text("int main(void) { return 0; }\n")
    pip = Path(sys.executable).with_name("pip")
    script = (f"cd {work} && "
              f"{sys.executable} -c 'import json; [json.dumps(i) for i in range(100000)]' && "
              f"{pip} --version && gcc -O2 -o hello hello.c && ./hello && "
              f"ls -R /usr/share/doc | head -n 50 && git --version && "
              f"{sys.executable} -m pytest --version")
    done = run("bash", "-c", script, timeout=120)
    assert done.returncode == 0, done.stderr
    time.sleep(2.0)  # the last events are through the engine
    names = {"bash", "python", "python3", "pip", "gcc", "cc1", "as", "ld", "collect2", "hello",
             "ls", "head", "git"}
    raised = _spawned(env.detector.alerts()[before:], names, MARK + "-ordinary")
    assert not raised, [a["output"] for a in raised]


def test_no_rule_loaded_means_no_alert(env: Env) -> None:
    """The second detector saw every behaviour above (it ran the whole time) with no rules."""
    assert env.silent.proc.poll() is None, env.silent.stderr()
    assert env.silent.alerts() == []
    assert "eBPF source attached" in env.silent.stderr()


# ---- drops, with the detector API on a tiny ring ---------------------------------------------


class Counting:
    """The eBPF source, counting the flood's records as they leave the ring."""

    def __init__(self, source: EbpfSource, pid: int) -> None:
        self.source = source
        self.pid = pid
        self.flood_records = 0

    def poll(self, timeout: float | None = None) -> list[Record] | None:
        batch = self.source.poll(timeout)
        self.flood_records += sum(1 for r in batch if r.kind == "fchdir" and r.pid == self.pid)
        return batch

    def drops(self) -> Any:
        return self.source.drops()

    def close(self) -> None:
        self.source.close()


class Keep:
    name = "memory"

    def __init__(self) -> None:
        self.alerts: list[Alert] = []

    def write(self, alert: Alert) -> None:
        self.alerts.append(alert)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


def test_a_flood_on_a_tiny_ring_is_counted_exactly(env: Env) -> None:
    """fchdir is traced for the state tables whatever the rules, and nothing else on the node
    calls fchdir on a bad fd: every one the flood makes is either read or counted dropped."""
    flood = 300_000
    engine, _ = Engine.from_files([upstream_file("falco_rules.yaml")])
    page = os.sysconf("SC_PAGE_SIZE")
    source = EbpfSource(required_event_types(engine.event_types), ring_bytes=page)
    gate_r, gate_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the flood, held until the detector runs
        os.read(gate_r, 1)
        libc = ctypes.CDLL(None, use_errno=True)
        for _ in range(flood):
            libc.fchdir(-1)
        os._exit(0)
    counting = Counting(source, pid)
    sink = Keep()
    tracker = Tracker.for_host(sockets=(env.podman.socket,), seed=True)
    detector = Detector(engine, tracker, counting, [sink], drop_threshold=0.1,
                        drop_alert_interval=3600)
    thread = threading.Thread(target=detector.run, daemon=True)
    thread.start()
    try:
        os.write(gate_w, b"x")
        os.waitpid(pid, 0)
        time.sleep(1.5)  # the ring drained, the last window closed
        detector.stop()
        thread.join(timeout=30)
        drops = source.drops()  # the counters go with the program: read them before close
    finally:
        detector.stop()
        tracker.close()
        source.close()
        os.close(gate_r)
        os.close(gate_w)
    lost = drops.per_kind.get("fchdir", 0)
    assert lost > 0, "a one-page ring should overflow under a flood"
    assert counting.flood_records + lost == flood
    m = detector.metrics
    # Read by the reader as it stopped; the node's other events may drop a few since.
    assert lost <= m.kernel_drops <= drops.total
    assert m.received == m.processed + m.userspace_drops
    drop_alerts = [a for a in sink.alerts if a.rule == DROP_RULE]
    assert len(drop_alerts) == m.drop_alerts == 1  # one per window (an hour here)
    fields = drop_alerts[0].output_fields
    assert fields["n_drops_kernel"] > 0
    assert fields["n_drops"] == fields["n_drops_kernel"] + fields["n_drops_userspace"]


# ---- without eBPF ----------------------------------------------------------------------------


def test_without_ebpf_it_says_why_and_the_fallback_catches_shred(env: Env) -> None:
    scratch = marker_dir(env, "fallback")
    missing = scratch / "no-headers"
    fallback = DetectProcess(scratch, "--rules", str(upstream_file("falco_rules.yaml")),
                             "--headers", str(missing), "--runtime-socket", env.podman.socket,
                             ready="Fallback event source")
    try:
        told = fallback.stderr()
        assert "eBPF cannot load:" in told and str(missing) in told
        victim = scratch / "data"
        caught = None
        deadline = time.monotonic() + 30
        while caught is None and time.monotonic() < deadline:
            # The fallback reads names from /proc after the exec event: a shred that lives
            # a few milliseconds (a few passes over 1 MiB) is what it can see.
            victim.write_bytes(os.urandom(1 << 20))
            run("shred", "-n", "3", "-u", str(victim))
            caught = fallback.wait("Remove Bulk Data from Disk",
                                   lambda f: str(victim) in str(f.get("proc.cmdline")), 1.0)
        assert caught is not None, fallback.stderr()
        assert caught["output_fields"]["proc.name"] == "shred"
    finally:
        rest = fallback.stop()
    assert fallback.proc.returncode == 0, rest
