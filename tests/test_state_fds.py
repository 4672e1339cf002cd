"""The fd table: files, sockets and their tuples, dup and close, and lazy /proc lookups."""

from __future__ import annotations

import ipaddress
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from detector.sources.record import Record
from detector.state import render
from detector.state.containers import CgroupMap, ContainerRegistry
from detector.state.fds import Fd, absolute, from_link
from detector.state.processes import ProcessTable, ProcFs
from detector.state.tracker import Tracker
from detector.state.users import Users
from tests.state_support import Node

AF_INET, AF_INET6, AF_UNIX = 2, 10, 1
O_WRONLY, O_CREAT, O_TRUNC = 1, render.O_CREAT, render.O_TRUNC


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    scratch = Node(tmp_path)
    scratch.apply("execve", 7, comm="app", filename="/usr/bin/app", argv=["app"])
    scratch.tracker.table.procs[7].cwd = "/srv/app/"
    yield scratch
    scratch.close()


def test_paths_are_made_absolute_and_normalised(node: Node) -> None:
    view = node.apply("openat", 7, res=3, dirfd=-100, name="../../etc//./shadow", flags=0)
    assert view.get("fd.name") == "/etc/shadow"
    assert view.get("fd.nameraw") == "../../etc//./shadow"
    assert (view.get("fd.num"), view.get("fd.type"), view.get("fd.typechar")) == (3, "file", "f")
    node.apply("openat", 7, res=4, dirfd=-100, name="/var/lib", flags=render.O_DIRECTORY)
    view = node.apply("openat", 7, res=5, dirfd=4, name="dpkg/status", flags=0)
    assert view.get("fd.name") == "/var/lib/dpkg/status"
    assert node.tracker.table.procs[7].fds[4].type == "directory"
    view = node.apply("open", 7, res=6, name="notes.txt", flags=O_WRONLY | O_CREAT, mode=0o644)
    assert view.get("fd.name") == "/srv/app/notes.txt"
    assert absolute("//a/../b", "/") == "/b"


def test_a_failed_open_has_a_name_and_fd_minus_one(node: Node) -> None:
    view = node.apply("openat", 7, res=-13, dirfd=-100, name="/etc/shadow", flags=0)
    assert (view.get("fd.num"), view.get("fd.name"), view.get("fd.typechar")) == \
        (-1, "/etc/shadow", "f")
    assert view.get("evt.args")["fd"] == "-13(EACCES)"
    assert 0 not in node.tracker.table.procs[7].fds and -13 not in node.tracker.table.procs[7].fds


def test_close_removes_the_fd_but_its_event_still_shows_it(node: Node) -> None:
    node.apply("openat", 7, res=3, dirfd=-100, name="/var/log/syslog", flags=O_WRONLY)
    view = node.apply("close", 7, fd=3)
    assert view.get("fd.name") == "/var/log/syslog"
    assert view.get("evt.args") == {"res": "0", "fd": "3(<f>/var/log/syslog)"}
    assert 3 not in node.tracker.table.procs[7].fds
    view = node.apply("close", 7, res=-9, fd=3)
    assert view.get("fd.name") is None


def test_dup_copies_and_dup3_sets_close_on_exec(node: Node) -> None:
    node.apply("socket", 7, res=3, domain=AF_INET, type=1, proto=0)
    node.apply("connect", 7, fd=3, addr=(AF_INET, "203.0.113.50", 4444),
               local=(AF_INET, "10.0.0.5", 51022))
    view = node.apply("dup2", 7, res=0, oldfd=3, newfd=0)
    assert view.get("evt.rawres") == 0
    assert view.get("fd.type") == "ipv4"
    assert view.get("fd.name") == "10.0.0.5:51022->203.0.113.50:4444"
    assert view.get("evt.args") == {"res": "0", "oldfd": "3(<4t>10.0.0.5:51022->203.0.113.50:4444)",
                                    "newfd": "0"}
    fds = node.tracker.table.procs[7].fds
    assert fds[0].sip == ipaddress.ip_address("203.0.113.50") and fds[0] is not fds[3]
    node.apply("dup3", 7, res=9, oldfd=3, newfd=9, flags=render.O_CLOEXEC)
    assert fds[9].cloexec and not fds[0].cloexec


def test_socket_tuples_client_and_server(node: Node) -> None:
    view = node.apply("socket", 7, res=3, domain=AF_INET6, type=1, proto=0)
    assert view.get("evt.args") == {"fd": "3(<6t>)", "domain": "AF_INET6",
                                    "type": "SOCK_STREAM", "proto": "0"}
    view = node.apply("connect", 7, res=-115, fd=3, addr=(AF_INET6, "2001:db8::1", 443))
    assert view.get("fd.sip") == ipaddress.ip_address("2001:db8::1")
    assert (view.get("fd.sport"), view.get("fd.l4proto"), view.get("fd.connected")) == \
        (443, "tcp", True)
    assert view.get("fd.cip") is None  # the source did not say which local end
    assert view.get("fd.name") == ":::0->2001:db8::1:443"
    assert view.get("fd.is_server") is False
    view = node.apply("accept4", 7, res=8, tuple=(AF_INET, "198.51.100.7", 40000),
                      local=(AF_INET, "10.0.0.5", 22), flags=render.SOCK_CLOEXEC)
    assert view.get("fd.is_server") is True
    assert view.get("fd.cip") == ipaddress.ip_address("198.51.100.7")
    assert (view.get("fd.sport"), view.get("fd.cport")) == (22, 40000)
    assert view.get("fd.name") == "198.51.100.7:40000->10.0.0.5:22"
    view = node.apply("socket", 7, res=4, domain=AF_UNIX, type=1, proto=0)
    view = node.apply("connect", 7, fd=4, addr=(AF_UNIX, "/run/docker.sock", 0))
    assert (view.get("fd.type"), view.get("fd.name")) == ("unix", "/run/docker.sock")
    assert view.get("fd.sip") is None


def test_unconnected_udp_names_its_peer_per_datagram(node: Node) -> None:
    node.apply("socket", 7, res=5, domain=AF_INET, type=2, proto=0)
    view = node.apply("sendto", 7, res=40, fd=5, size=40, tuple=(AF_INET, "8.8.8.8", 53))
    assert (view.get("fd.l4proto"), view.get("fd.connected")) == ("udp", False)
    assert view.get("fd.name_changed") is True
    view = node.apply("sendto", 7, res=40, fd=5, size=40, tuple=(AF_INET, "8.8.8.8", 53))
    assert view.get("fd.name_changed") is False
    view = node.apply("sendmsg", 7, res=40, fd=5, tuple=(AF_INET, "1.1.1.1", 53))
    assert view.get("fd.name_changed") is True
    assert view.get("fd.sip") == ipaddress.ip_address("1.1.1.1")


def test_memfd_exec_is_recognised_from_the_fd_table(node: Node) -> None:
    node.apply("memfd_create", 7, res=3, name="payload", flags=0)
    view = node.apply("execveat", 7, comm="3", dirfd=3, filename="", argv=["x"])
    assert view.get("proc.is_exe_from_memfd") is True
    assert view.get("proc.exepath") == "memfd:payload"
    node.apply("memfd_create", 7, res=4, name="other", flags=0)
    view = node.apply("execve", 7, comm="4", filename="/proc/self/fd/4", argv=["y"])
    assert view.get("proc.is_exe_from_memfd") is True
    view = node.apply("execve", 7, comm="ls", filename="/bin/ls", argv=["ls"])
    assert view.get("proc.is_exe_from_memfd") is False
    view = node.apply("execve", 7, comm="z", filename="/tmp/z", argv=["z"], flags=4)
    assert view.get("proc.is_exe_from_memfd") is True  # the kernel's flag wins
    assert view.get("evt.args")["flags"] == "EXE_FROM_MEMFD"


def test_links_of_fds_opened_before_the_detector() -> None:
    assert (from_link("/etc/hosts").type, from_link("/etc/hosts").name) == ("file", "/etc/hosts")
    assert from_link("/tmp/x (deleted)").name == "/tmp/x"
    assert (from_link("/memfd:jit (deleted)").type, from_link("/memfd:jit").name) == \
        ("memfd", "memfd:jit")
    assert from_link("pipe:[1234]").type == "pipe"
    assert from_link("socket:[99]").type is None
    assert from_link("anon_inode:[eventpoll]").type == "eventpoll"


def test_an_unknown_fd_is_read_from_proc_once(tmp_path: Path) -> None:
    """This test process's own fds, which no event showed: read lazily, only when used."""
    path = tmp_path / "opened-before.txt"
    path.write_text("x")
    registry = ContainerRegistry(CgroupMap(str(tmp_path)))
    tracker = Tracker(ProcessTable(ProcFs()), registry, Users())
    tracker.table.seed()
    me = os.getpid()
    read_end, write_end = os.pipe()
    with open(path) as handle, socket.socket() as sock:
        num = handle.fileno()
        rec = Record("dup", 1, me, me, os.geteuid(), os.getegid(), "pytest", 0, 99,
                     {"oldfd": num})
        assert tracker.fd_lookups == 0
        view = tracker.apply(rec)
        assert view.get("fd.name") == str(path)
        assert tracker.fd_lookups == 1
        tracker.apply(rec)
        assert tracker.fd_lookups == 1  # known now, and copied to fd 99
        assert tracker.table.procs[me].fds[99].name == str(path)
        view = tracker.apply(Record("connect", 2, me, me, 0, 0, "pytest", 0, 0,
                                    {"fd": sock.fileno(), "addr": (AF_INET, "127.0.0.1", 9)}))
        assert view.get("fd.type") == "ipv4"  # /proc said socket; the address said IPv4
        assert view.get("fd.sport") == 9
        view = tracker.apply(Record("dup2", 3, me, me, 0, 0, "pytest", 0, 0,
                                    {"oldfd": write_end, "newfd": 1}))
        assert (view.get("fd.type"), view.get("fd.typechar")) == ("pipe", "p")
    os.close(read_end)
    os.close(write_end)
    assert isinstance(tracker.table.procs[me].fds[num], Fd)


def test_an_exec_of_an_fd_reads_it_without_keeping_it(tmp_path: Path) -> None:
    # An exec does not name its fd to the kernel's close filter, so the fd's close may never
    # be reported: an entry kept now could go stale.
    path = tmp_path / "binary"
    path.write_text("x")
    tracker = Tracker(ProcessTable(ProcFs()), ContainerRegistry(CgroupMap(str(tmp_path))),
                      Users())
    tracker.table.seed()
    me = os.getpid()
    with open(path) as handle:
        proc = tracker.table.procs[me]
        assert tracker.fd(proc, handle.fileno(), remember=False).name == str(path)
        assert handle.fileno() not in proc.fds
        assert tracker.fd(proc, handle.fileno()).name == str(path)
        assert handle.fileno() in proc.fds
