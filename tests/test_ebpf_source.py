"""The eBPF source on the real kernel: real syscalls in forked children, read back as Records.

Needs root and a node `lanner detector setup` can prepare (the fixture runs it). Where that is
impossible the tests fail, with the reasons; only a non-root run outside CI skips.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import pty
import shutil
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from detector.engine.pathtests import PathTest
from detector.sources.ebpf import loader
from detector.sources.ebpf.source import STATE_SYSCALLS, EbpfSource
from detector.sources.record import Record
from tests.ebpf_support import (
    cgroup2_root,
    collect,
    drain,
    exited,
    in_child,
    libc,
    only,
    prepared_node,
    sys_call,
)
from tests.engine_support import passes

RULE_TYPES = ["open", "openat", "openat2", "execve", "execveat", "connect", "sendto", "sendmsg",
              "socket", "dup", "dup2", "dup3", "symlink", "symlinkat", "link", "linkat", "ptrace",
              "init_module", "finit_module"]
TRACED_TYPES = [*RULE_TYPES, "creat", "memfd_create"]  # and the state set, always
SYS_CREAT = 85
SYS_OPEN, SYS_DUP, SYS_DUP2, SYS_PTRACE, SYS_LINK, SYS_SYMLINK = 2, 32, 33, 101, 86, 88
SYS_UNLINKAT, SYS_LINKAT, SYS_SYMLINKAT, SYS_DUP3, SYS_OPENAT2 = 263, 265, 266, 292, 437
AT_FDCWD = -100
NOBODY = 65534
node = pytest.fixture(scope="module", name="node")(prepared_node)


@pytest.fixture(scope="module")
def source(node: None) -> Iterator[EbpfSource]:
    with EbpfSource(TRACED_TYPES) as src:
        yield src


# ---- processes ---------------------------------------------------------------------------


def test_exec_carries_ids_filename_argv_and_cgroup(source: EbpfSource) -> None:
    marker = f"lanner-{uuid.uuid4().hex}"
    group = cgroup2_root() / f"lanner-test-{os.getpid()}"
    group.mkdir()
    try:
        def body() -> None:
            (group / "cgroup.procs").write_text(str(os.getpid()))
            os.setgroups([])
            os.setresgid(NOBODY, NOBODY, NOBODY)
            os.setresuid(NOBODY, NOBODY, NOBODY)
            os.execv("/bin/true", ["/bin/true", marker, "two words"])

        before = time.time_ns()
        pid, records = in_child(source, body)
        after = time.time_ns()
        clone = only(records, "clone", child_pid=pid)
        assert (clone.pid, clone.args["child_tid"], clone.res) == (os.getpid(), pid, pid)
        only(records, "setresuid", ruid=NOBODY, euid=NOBODY, suid=NOBODY)
        only(records, "setresgid", rgid=NOBODY, egid=NOBODY, sgid=NOBODY)
        execve = only(records, "execve")
        assert (execve.pid, execve.tid, execve.res) == (pid, pid, 0)
        assert (execve.uid, execve.gid, execve.comm) == (NOBODY, NOBODY, "true")
        assert execve.args["filename"] == "/bin/true"
        assert execve.args["argv"] == ["/bin/true", marker, "two words"]
        assert execve.cgroup_id == group.stat().st_ino
        assert (execve.args["sid"], execve.args["pgid"]) == (os.getsid(0), os.getpgid(0))
        assert execve.args["vpid"] == pid  # the test runs in the host's pid namespace
        assert execve.args["exe_ino"] == os.stat("/bin/true").st_ino
        assert execve.args["cap_effective"] == execve.args["cap_permitted"] == 0  # not root
        assert before <= clone.time_ns <= execve.time_ns <= after
        kinds = [r.kind for r in records]
        assert kinds.index("clone") < kinds.index("execve") < kinds.index("procexit")
    finally:
        for _ in range(50):
            try:
                group.rmdir()
                break
            except OSError:
                time.sleep(0.02)


def test_fork_and_exit_within_a_millisecond_is_seen_in_order(source: EbpfSource) -> None:
    # The child lives under a millisecond (from fork to exit, by the kernel's clock,
    # about 0.8 ms here): gone long before anything could read its /proc entry.
    drain(source)
    pid = os.fork()
    if pid == 0:
        os._exit(7)
    os.waitpid(pid, 0)
    # (Fork handlers that libraries loaded by other tests register may close fds in the
    # child: only its birth and death are looked at.)
    records = [r for r in collect(source, exited(pid)) if r.kind in ("clone", "procexit")
               and (r.tid == pid or r.args.get("child_tid") == pid)]
    assert [r.kind for r in records] == ["clone", "procexit"]
    clone, procexit = records
    assert clone.pid == os.getpid() and clone.args["child_pid"] == pid
    assert procexit.args["status"] == 7 << 8 and procexit.args["group_dead"] == 1
    assert clone.time_ns < procexit.time_ns


def test_thread_clone_belongs_to_the_process(source: EbpfSource) -> None:
    drain(source)
    ids: list[int] = []
    thread = threading.Thread(target=lambda: ids.append(threading.get_native_id()))
    thread.start()
    thread.join()
    tid = ids[0]
    records = collect(source, exited(tid))
    clone = only(records, "clone", child_tid=tid)
    assert clone.args["child_pid"] == os.getpid() and clone.args["flags"] & 0x10000
    exit_record = only(records, "procexit")  # filtered below to this thread
    assert exit_record.tid == tid and exit_record.pid == os.getpid()
    assert exit_record.args["group_dead"] == 0


def test_failed_exec_is_reported_with_its_result(source: EbpfSource) -> None:
    def body() -> None:
        with contextlib.suppress(FileNotFoundError):
            os.execv("/nonexistent/lanner-exec", ["lanner-exec", "--flag"])

    _, records = in_child(source, body)
    execve = only(records, "execve")
    assert execve.res == -errno.ENOENT
    assert execve.args["filename"] == "/nonexistent/lanner-exec"
    assert execve.args["argv"] == ["lanner-exec", "--flag"]


def test_exec_reports_tty_and_loginuid(source: EbpfSource) -> None:
    master, slave = pty.openpty()
    rdev = os.fstat(slave).st_rdev
    major, minor = os.major(rdev), os.minor(rdev)
    falco_tty = (minor & 0xFF) | (major << 8) | ((minor & ~0xFF) << 12)

    def body() -> None:
        os.setsid()
        import fcntl
        import termios
        fcntl.ioctl(slave, termios.TIOCSCTTY, 0)
        Path("/proc/self/loginuid").write_text("4242")
        os.execv("/bin/true", ["/bin/true"])

    try:
        _, records = in_child(source, body)
    finally:
        os.close(master)
        os.close(slave)
    pid = only(records, "setsid").res
    execve = only(records, "execve")
    assert execve.args["tty"] == falco_tty != 0
    assert execve.args["loginuid"] == 4242
    assert (execve.args["sid"], execve.args["pgid"]) == (pid, pid)
    status = Path("/proc/self/status").read_text()
    bounding = int(status.split("CapBnd:")[1].split()[0], 16)
    assert execve.args["cap_effective"] == execve.args["cap_permitted"] == bounding  # root


def test_exec_from_memfd_is_flagged(source: EbpfSource) -> None:
    image = Path("/bin/true").read_bytes()

    def body() -> None:
        fd = os.memfd_create("lanner-payload")
        os.write(fd, image)
        os.execve(fd, ["payload"], {})

    _, records = in_child(source, body)
    execveat = only(records, "execveat")
    assert execveat.res == 0 and execveat.args["argv"] == ["payload"]
    assert execveat.args["flags"] & 4  # EXE_FROM_MEMFD
    assert execveat.args["filename"].startswith("/dev/fd/")


def test_exec_from_overlay_upper_and_lower_layers(source: EbpfSource, tmp_path: Path) -> None:
    for name in ("lower", "upper", "work", "merged"):
        (tmp_path / name).mkdir()
    shutil.copy("/bin/true", tmp_path / "lower" / "base-true")
    shutil.copy("/bin/true", tmp_path / "upper" / "dropped-true")
    marker = uuid.uuid4().hex
    merged = tmp_path / "merged"
    script = (f"mount -t overlay overlay -o lowerdir={tmp_path}/lower,upperdir={tmp_path}/upper,"
              f"workdir={tmp_path}/work {merged} && {merged}/base-true {marker} && "
              f"{merged}/dropped-true {marker}")
    drain(source)
    subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", script], check=True)

    def both(records: list[Record]) -> bool:
        return sum(r.kind == "execve" and marker in r.args["argv"] for r in records) == 2

    execs = {Path(r.args["filename"]).name: r.args["flags"] for r in collect(source, both)
             if r.kind == "execve" and marker in r.args["argv"]}
    assert execs == {"base-true": 8, "dropped-true": 2}  # EXE_LOWER_LAYER, EXE_UPPER_LAYER


def test_exec_in_a_pid_namespace_reports_its_vpid(source: EbpfSource) -> None:
    marker = uuid.uuid4().hex
    drain(source)
    subprocess.run(["unshare", "--pid", "--fork", "/bin/true", marker], check=True)

    def true_exec(records: list[Record]) -> list[Record]:  # not unshare's own exec
        return [r for r in records
                if r.kind == "execve" and r.args["argv"] == ["/bin/true", marker]]

    (execve,) = true_exec(collect(source, true_exec))
    assert execve.args["vpid"] == 1 and execve.pid > 1


# ---- files ------------------------------------------------------------------------------


def test_open_openat_openat2(source: EbpfSource, tmp_path: Path) -> None:
    target = tmp_path / "victim.log"
    target.write_text("x")
    flags = os.O_WRONLY | os.O_TRUNC

    class OpenHow(ctypes.Structure):
        _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64),
                    ("resolve", ctypes.c_uint64)]

    def body() -> None:
        os.open(target, flags)
        assert sys_call(SYS_OPEN, str(target).encode(), flags, 0) >= 0
        how = OpenHow(os.O_RDONLY, 0, 4)  # RESOLVE_NO_SYMLINKS
        assert sys_call(SYS_OPENAT2, AT_FDCWD, str(target).encode(), ctypes.byref(how), 24) >= 0
        dirfd = os.open(tmp_path, os.O_RDONLY)
        os.open("victim.log", os.O_RDONLY, dir_fd=dirfd)
        with contextlib.suppress(FileNotFoundError):
            os.open(tmp_path / "missing" / "file", os.O_RDONLY)

    _, records = in_child(source, body)
    openat = only(records, "openat", name=str(target))
    assert openat.args["flags"] & (os.O_ACCMODE | os.O_TRUNC) == flags
    assert openat.res >= 0 and openat.args["fd"] == openat.res
    assert openat.args["dirfd"] == AT_FDCWD
    legacy = only(records, "open", name=str(target))
    assert legacy.args["flags"] == flags and legacy.res >= 0
    openat2 = only(records, "openat2", name=str(target))
    assert (openat2.args["flags"], openat2.args["resolve"], openat2.args["dirfd"]) == (0, 4, -100)
    relative = only(records, "openat", name="victim.log")
    dir_open = only(records, "openat", name=str(tmp_path))
    assert relative.args["dirfd"] == dir_open.res
    failed = only(records, "openat", name=str(tmp_path / "missing" / "file"))
    assert failed.res == -errno.ENOENT


def test_symlink_link_dup_chdir_close(source: EbpfSource, tmp_path: Path) -> None:
    (tmp_path / "orig").write_text("x")

    def body() -> None:
        os.chdir(tmp_path)
        assert sys_call(SYS_SYMLINK, b"/etc/shadow", b"sym1") == 0
        assert sys_call(SYS_SYMLINKAT, b"/etc/passwd", AT_FDCWD, b"sym2") == 0
        assert sys_call(SYS_LINK, b"orig", b"hard1") == 0
        assert sys_call(SYS_LINKAT, AT_FDCWD, b"orig", AT_FDCWD, b"hard2", 0) == 0
        fd = os.open("orig", os.O_RDONLY)
        assert sys_call(SYS_DUP, fd) >= 0
        assert sys_call(SYS_DUP2, fd, 77) == 77
        assert sys_call(SYS_DUP3, fd, 78, os.O_CLOEXEC) == 78
        os.chdir("/")
        os.fchdir(fd_dir := os.open(tmp_path, os.O_RDONLY))
        os.close(fd)
        os.close(fd_dir)

    _, records = in_child(source, body)
    only(records, "chdir", path=str(tmp_path))
    assert only(records, "symlink", target="/etc/shadow").args["linkpath"] == "sym1"
    symlinkat = only(records, "symlinkat", target="/etc/passwd")
    assert (symlinkat.args["linkpath"], symlinkat.args["linkdirfd"]) == ("sym2", AT_FDCWD)
    assert only(records, "link", oldpath="orig").args["newpath"] == "hard1"
    linkat = only(records, "linkat", oldpath="orig")
    assert linkat.args == {"olddir": AT_FDCWD, "newdir": AT_FDCWD, "flags": 0,
                           "oldpath": "orig", "newpath": "hard2"}
    fd = only(records, "openat", name="orig").res
    assert only(records, "dup", oldfd=fd).res > fd
    assert only(records, "dup2", oldfd=fd).args["newfd"] == 77
    dup3 = only(records, "dup3", oldfd=fd)
    assert (dup3.args["newfd"], dup3.args["flags"], dup3.res) == (78, os.O_CLOEXEC, 78)
    assert only(records, "close", fd=fd).res == 0
    fd_dir = only(records, "openat", name=str(tmp_path)).res
    assert only(records, "fchdir", fd=fd_dir).res == 0


def test_creat_memfd_bind_setpgid_capset(source: EbpfSource, tmp_path: Path) -> None:
    target = tmp_path / "created"

    class CapHeader(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

    class CapData(ctypes.Structure):
        _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                    ("inheritable", ctypes.c_uint32)]

    cap_net_raw = 13

    def body() -> None:
        assert sys_call(SYS_CREAT, str(target).encode(), 0o640) >= 0
        os.memfd_create("lanner-mem", os.MFD_CLOEXEC)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind(("127.0.0.1", 0))
        os.setpgid(0, 0)
        header, data = CapHeader(0x20080522, 0), (CapData * 2)()
        assert libc.capget(ctypes.byref(header), data) == 0
        data[0].effective &= ~(1 << cap_net_raw)
        assert libc.capset(ctypes.byref(header), data) == 0

    _, records = in_child(source, body)
    creat = only(records, "creat", name=str(target))
    assert creat.args["mode"] == 0o640 and creat.res == creat.args["fd"] >= 0
    memfd = only(records, "memfd_create", name="lanner-mem")
    assert memfd.args["flags"] == os.MFD_CLOEXEC and memfd.res >= 0
    bind = only(records, "bind", addr=(socket.AF_INET, "127.0.0.1", 0))
    assert bind.res == 0
    setpgid = only(records, "setpgid")
    assert (setpgid.args["pid"], setpgid.args["pgid"], setpgid.res) == (0, 0, 0)
    capset = only(records, "capset")
    assert capset.res == 0
    assert not capset.args["cap_effective"] & (1 << cap_net_raw)
    assert capset.args["cap_permitted"] & (1 << cap_net_raw)


# ---- network and tracing ----------------------------------------------------------------


def test_connect_accept_sendto_sendmsg(source: EbpfSource) -> None:
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    udp6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    udp6.bind(("::1", 0))
    port6 = udp6.getsockname()[1]
    unix_path = f"/tmp/lanner-{uuid.uuid4().hex}.sock"

    def body() -> None:
        with socket.create_connection(("127.0.0.1", port)) as conn:
            conn.sendall(b"hi")
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.sendto(b"abc", ("127.0.0.1", port))
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as udp:
            udp.sendmsg([b"ab"], [], 0, ("::1", port6))
        with socket.socket(socket.AF_UNIX) as unix, contextlib.suppress(FileNotFoundError):
            unix.connect(unix_path)

    with server, udp6:
        _pid, records = in_child(source, body)
        accepted, peer = server.accept()
        accepted.close()
    connect = only(records, "connect", addr=(socket.AF_INET, "127.0.0.1", port))
    assert connect.res == 0 and connect.args["local"] == (socket.AF_INET, *peer)
    tcp = [r for r in records if r.kind == "socket" and r.args["domain"] == socket.AF_INET
           and r.args["type"] & 0xF == socket.SOCK_STREAM]
    assert [r.res for r in tcp] == [connect.args["fd"]]
    sendto = only(records, "sendto", tuple=(socket.AF_INET, "127.0.0.1", port))
    assert (sendto.args["size"], sendto.res) == (3, 3)
    family, address, local_port = sendto.args["local"]  # bound by the send itself
    assert (family, address) == (socket.AF_INET, "0.0.0.0") and local_port > 0
    sendmsg = only(records, "sendmsg", tuple=(socket.AF_INET6, "::1", port6))
    assert sendmsg.res == 2 and sendmsg.args["local"][:2] == (socket.AF_INET6, "::")
    unix = only(records, "connect", addr=(socket.AF_UNIX, unix_path, 0))
    assert unix.res == -errno.ENOENT and "local" not in unix.args
    mine = collect(source, lambda rs: any(r.kind == "accept4" and r.pid == os.getpid()
                                          for r in rs))
    accept = next(r for r in mine if r.kind == "accept4" and r.pid == os.getpid())
    assert accept.args["tuple"] == (socket.AF_INET, *peer) and accept.args["fd"] == accept.res
    assert accept.args["local"] == (socket.AF_INET, "127.0.0.1", port)


def test_packet_socket_and_ptrace_traceme(source: EbpfSource) -> None:
    eth_p_all = socket.htons(3)

    def body() -> None:
        socket.socket(socket.AF_PACKET, socket.SOCK_RAW, eth_p_all).close()
        assert sys_call(SYS_PTRACE, 0, 0, 0, 0) == 0  # PTRACE_TRACEME

    _, records = in_child(source, body)
    packet = only(records, "socket", domain=socket.AF_PACKET)
    assert packet.args["type"] == socket.SOCK_RAW | socket.SOCK_CLOEXEC  # as Python opens it
    assert packet.args["proto"] == eth_p_all
    assert packet.res >= 0 and packet.args["fd"] == packet.res
    ptrace = only(records, "ptrace")
    assert (ptrace.args["request"], ptrace.res) == (0, 0)


# ---- attachment and drops ---------------------------------------------------------------


def test_attaches_the_plan_and_nothing_else(source: EbpfSource) -> None:
    assert source.plan.traced == (set(TRACED_TYPES) | STATE_SYSCALLS) - source.plan.unavailable
    has_modules = Path("/sys/kernel/tracing/events/syscalls/sys_exit_init_module").exists()
    assert source.plan.unavailable == (set() if has_modules else {"init_module", "finit_module"})
    os.close(os.open("/dev/null", os.O_RDONLY))
    assert next(iter(source)), "iterating yields non-empty batches"
    assert source.attached() == sorted(
        {"sched:sched_process_exec", "sched:sched_process_exit", "sched:sched_process_fork",
         "syscalls:sys_enter_execveat"}  # the one entry probe (see program.c)
        | {f"syscalls:sys_exit_{name}" for name in source.plan.traced})


def test_only_requested_tracepoints_are_attached_and_drops_add_up(node: None) -> None:
    # openat2 for the flood: nothing else on the machine calls it (glibc does not), so every
    # openat2 drop is the child's and the sum is exact even with other processes running.
    with EbpfSource(["openat2", "unlinkat", "init_module", "procexit"], state=False,
                    ring_bytes=4 * 4096) as tiny:
        assert tiny.attached() == ["sched:sched_process_exit", "sched:sched_process_fork",
                                   "syscalls:sys_exit_openat2", "syscalls:sys_exit_unlinkat"]
        assert tiny.plan.result_only == {"unlinkat"}
        has_modules = Path("/sys/kernel/tracing/events/syscalls/sys_exit_init_module").exists()
        assert ("init_module" in tiny.plan.unavailable) != has_modules

        produced = 20_000
        marker = f"/nonexistent/lanner-flood-{uuid.uuid4().hex}"
        drain(tiny)
        pid = os.fork()
        if pid == 0:
            sys_call(SYS_UNLINKAT, AT_FDCWD, marker.encode(), 0)
            how = (ctypes.c_uint64 * 3)(0, 0, 0)
            for _ in range(produced):
                sys_call(SYS_OPENAT2, AT_FDCWD, marker.encode(), how, 24)
            os._exit(0)
        os.waitpid(pid, 0)
        received = unlinks = 0
        while batch := tiny.poll(0):
            received += sum(r.kind == "openat2" and r.pid == pid and r.args["name"] == marker
                            and r.res == -errno.ENOENT for r in batch)
            unlinks += sum(r.kind == "unlinkat" and r.pid == pid and r.res == -errno.ENOENT
                           and r.args == {} for r in batch)
        drops = tiny.drops()
        assert drops.per_kind.get("openat2", 0) > 0, "a 16 KiB ring should overflow"
        assert received + drops.per_kind["openat2"] == produced
        assert unlinks == 1
        assert drops.total == sum(drops.per_cpu) == sum(drops.per_kind.values())
        assert drops.per_category["open"] == drops.per_kind["openat2"]


def test_reading_while_the_kernel_writes_loses_nothing(node: None) -> None:
    # The ring holds the whole flood, so any loss is the reader's: a record read while the
    # kernel still writes it, or a consumer position the kernel misreads as a full ring.
    produced = 100_000
    marker = f"/nonexistent/lanner-busy-{uuid.uuid4().hex}"
    with EbpfSource(["openat2"], state=False, ring_bytes=64 << 20) as src:
        drain(src)
        pid = os.fork()
        if pid == 0:
            how = (ctypes.c_uint64 * 3)(0, 0, 0)
            for _ in range(produced):
                sys_call(SYS_OPENAT2, AT_FDCWD, marker.encode(), how, 24)
            os._exit(0)
        received = 0
        while os.waitpid(pid, os.WNOHANG) == (0, 0):
            received += sum(r.pid == pid and r.kind == "openat2" for r in src.poll(0.001))
        while batch := src.poll(0):
            received += sum(r.pid == pid and r.kind == "openat2" for r in batch)
        assert (received, src.drops().total) == (produced, 0)



# ---- kernel-side filters ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def filtered(node: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[
        tuple[EbpfSource, Path, tuple[PathTest, ...]]]:
    base = tmp_path_factory.mktemp("filtered")
    tests = (PathTest("exact", f"{base}/exact"), PathTest("prefix", f"{base}/pre"),
             PathTest("suffix", "_sfx"), PathTest("contains", "..x"),
             PathTest("directory", f"{base}/dir"), PathTest("filename", "fname"),
             PathTest("directory", "/"), PathTest("directory", f"{base}/trail/"))
    with EbpfSource(TRACED_TYPES, open_paths=tests, closes_for_state_only=True) as src:
        assert src.filters_opens
        yield src, base, tests


def test_open_filter_matches_the_reference_and_passes_what_it_cannot_judge(
        filtered: tuple[EbpfSource, Path, tuple[PathTest, ...]]) -> None:
    src, base, tests = filtered
    judged = [f"{base}/{name}" for name in (
        "exact", "exact2", "pre", "prefix-file", "pr", "a_sfx", "a_sfx/b", "c..xd", "c.x",
        "dir/f", "dir/sub/f", "dirx/f", "q/fname", "q/fname2", "fname/q", "trail/f",
        "caf\u00e9_sfx")] + ["/lanner-top-level-f", "/e"]
    unjudged = ["rel/exact", f"{base}//exact2", f"{base}/./exact2", f"{base}/q/../x",
                f"{base}/x/.", f"{base}/x/..", f"{base}/x/", f"{base}/" + "l" * 300]
    expected = {path for path in judged if passes(tests, path)} | set(unjudged)
    assert expected & set(judged) and set(judged) - expected  # both kinds are there

    def body() -> None:
        for path in judged + unjudged:
            with contextlib.suppress(OSError):
                os.open(path, os.O_RDONLY)
        for flag in (os.O_DIRECTORY, os.O_PATH):  # may become a dirfd: always reported
            with contextlib.suppress(OSError):
                os.open(f"{base}/flagged", flag)
        assert sys_call(SYS_OPEN, f"{base}/exact".encode(), os.O_RDONLY, 0) < 0
        assert sys_call(SYS_OPEN, f"{base}/exact2".encode(), os.O_RDONLY, 0) < 0
        how = (ctypes.c_uint64 * 3)(os.O_RDONLY, 0, 0)
        for path in (f"{base}/q/fname", f"{base}/q/fname2"):
            assert sys_call(SYS_OPENAT2, AT_FDCWD, path.encode(), how, 24) < 0

    _, records = in_child(src, body)
    opened = [r.args["name"] for r in records if r.kind == "openat"]
    assert sorted(opened) == sorted([*expected, f"{base}/flagged", f"{base}/flagged"])
    assert [r.args["name"] for r in records if r.kind == "open"] == [f"{base}/exact"]
    assert [r.args["name"] for r in records if r.kind == "openat2"] == [f"{base}/q/fname"]


def test_closes_are_reported_only_for_fds_the_tracker_can_hold(
        filtered: tuple[EbpfSource, Path, tuple[PathTest, ...]]) -> None:
    src, base, _ = filtered
    (base / "plain").write_text("x")
    (base / "exact").write_text("x")

    def marker(name: str) -> None:  # a relative open, always reported (it fails)
        with contextlib.suppress(OSError):
            os.open(f"exact-{name}", os.O_RDONLY)

    def body() -> None:
        os.close(os.open(base / "plain", os.O_RDONLY))  # first close: the set is unknown yet
        os.chdir(base)
        marker("1")
        os.close(os.open(base / "plain", os.O_RDONLY))  # filtered open: no close either
        marker("2")
        os.close(os.open(base / "exact", os.O_RDONLY))  # reported open: its close too
        marker("3")
        os.close(socket.socket().detach())  # a socket: reported, and so is its close
        marker("4")
        fd = os.open(base / "plain", os.O_RDONLY)
        os.dup2(fd, 100)  # names both fds: both held now
        os.close(100)
        os.close(fd)
        kept = os.open(base / "exact", os.O_RDONLY)
        marker("5")
        child = os.fork()  # a child starts with its parent's held set
        if child == 0:
            os.close(kept)
            marker("g1")
            os.close(os.open(base / "plain", os.O_RDONLY))
            marker("g2")
            os.close(os.open(base / "plain", os.O_RDONLY))
            marker("g3")
            os._exit(0)
        os.waitpid(child, 0)

    drain(src)
    pid = os.fork()
    if pid == 0:
        body()
        os._exit(0)
    os.waitpid(pid, 0)
    records = collect(src, exited(pid))  # the grandchild's too: in_child keeps only the child's

    def tokens(who: int) -> list[str]:
        out = []
        for r in records:
            if r.pid != who:
                continue
            if r.kind == "openat":
                out.append("open " + r.args["name"].rsplit("/", 1)[-1])
            elif r.kind in ("close", "socket", "dup2"):
                out.append(r.kind)
        return out

    ours = tokens(pid)
    assert ours[ours.index("open exact-1"):] == [
        "open exact-1", "open exact-2", "open exact", "close", "open exact-3", "socket",
        "close", "open exact-4", "dup2", "close", "close", "open exact", "open exact-5"]
    grandchild = next(r.args["child_pid"] for r in records
                      if r.kind == "clone" and r.pid == pid)
    theirs = tokens(grandchild)
    assert theirs[:2] == ["close", "open exact-g1"]
    assert theirs[-2:] == ["open exact-g2", "open exact-g3"]


# ---- the loader child ------------------------------------------------------------------------


def test_a_program_that_does_not_compile_says_why(node: None) -> None:
    with pytest.raises(loader.LoadError, match="did not load") as failure:
        loader.load("TRACEPOINT_PROBE(sched, sched_process_exit) { return no_such_name; }",
                    [], None)
    assert "no_such_name" in str(failure.value)


def inheritable(fd: int) -> bool:
    try:
        return os.get_inheritable(fd)
    except OSError:  # the fd os.listdir used, closed since
        return False


def test_the_detector_holds_only_fds_and_closing_them_detaches(node: None) -> None:
    before = set(os.listdir("/proc/self/fd"))
    with EbpfSource(["openat"], state=False) as src:
        maps = Path("/proc/self/maps").read_text()
        assert "libLLVM" not in maps and "libclang" not in maps, "the compiler stays behind"
        held = set(os.listdir("/proc/self/fd")) - before
        # the tracepoints' perf events, the two maps, and the ring's two mappings' own fds
        assert len(held) == len(src.attached()) + len(loader.MAPS) + 2
        # An exec (the detector restarting for new rules) must not keep this program attached.
        assert not [fd for fd in held if inheritable(int(fd))]
        def body() -> None:
            with contextlib.suppress(OSError):
                os.open("/nonexistent/lanner-loader", os.O_RDONLY)

        _, records = in_child(src, body)
        assert only(records, "openat", name="/nonexistent/lanner-loader").res == -errno.ENOENT
    assert set(os.listdir("/proc/self/fd")) == before
