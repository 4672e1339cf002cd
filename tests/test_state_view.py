"""The field view: what the rule engine reads from a Record and the tables."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from pathlib import Path

import pytest

from detector.engine.fields import REGISTRY
from detector.state import render, required_event_types
from detector.state.view import FIELDS
from tests.state_support import Node, wait_for

AF_INET = 2


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    scratch = Node(tmp_path)
    yield scratch
    scratch.close()


def field(view: object, name: str, arg: str | None = None) -> object:
    """A field read through the engine's own extractor, derived fields included."""
    spec, arg = REGISTRY.resolve(name, arg)
    return spec.extractor(arg)(view)  # type: ignore[arg-type]


def test_every_view_key_is_a_registered_field() -> None:
    # evt.rawargs is the one recorded key that is not a field: evt.rawarg.X reads it.
    assert [key for key in FIELDS if REGISTRY.get(key) is None] == ["evt.rawargs"]


def test_a_process_lifecycle_from_fork_to_exit(node: Node) -> None:
    """clone -> execve -> openat -> connect -> dup2 -> procexit, as the eBPF source emits."""
    node.apply("execve", 1, comm="systemd", filename="/lib/systemd/systemd", argv=["/sbin/init"])
    node.apply("clone", 1, comm="systemd", child_pid=900, child_tid=900)
    node.apply("execve", 900, comm="sshd", filename="/usr/sbin/sshd", argv=["sshd", "-D"])
    node.apply("clone", 900, comm="sshd", child_pid=901, child_tid=901)
    node.tracker.table.procs[901].cwd = "/home/alice/"
    view = node.apply("execve", 901, comm="nc", uid=1000, gid=1000,
                      filename="/usr/bin/nc.openbsd", argv=["nc", "-v", "198.51.100.9", "80"],
                      tty=34816, loginuid=1000)
    assert (field(view, "proc.name"), field(view, "proc.exe")) == ("nc", "nc")
    assert field(view, "proc.exepath") == "/usr/bin/nc.openbsd"
    assert field(view, "proc.args") == "-v 198.51.100.9 80"
    assert field(view, "proc.cmdline") == "nc -v 198.51.100.9 80"
    assert (field(view, "proc.pname"), field(view, "proc.ppid")) == ("sshd", 900)
    assert field(view, "proc.aname") == ["sshd", "systemd"]
    assert (field(view, "proc.aname", "1"), field(view, "proc.aname", "2")) == ("sshd", "systemd")
    assert field(view, "proc.aname", "3") is None
    assert field(view, "proc.apid") == [900, 1]
    assert field(view, "proc.pcmdline") == "sshd -D"
    assert field(view, "evt.type") == "execve"
    assert field(view, "evt.arg", "exe") == "nc"
    assert field(view, "user.name") == "alice"

    view = node.apply("openat", 901, uid=1000, gid=1000, res=3, dirfd=-100,
                      name="../alice/.ssh/id_rsa", flags=render.O_CLOEXEC)
    assert field(view, "fd.name") == "/home/alice/.ssh/id_rsa"
    assert (field(view, "fd.directory"), field(view, "fd.filename")) == \
        ("/home/alice/.ssh", "id_rsa")
    assert (field(view, "fd.type"), field(view, "fd.typechar")) == ("file", "f")
    assert field(view, "fd.nameraw") == "../alice/.ssh/id_rsa"
    assert field(view, "evt.arg", "flags") == "O_RDONLY|O_CLOEXEC"
    assert (field(view, "evt.is_open_read"), field(view, "evt.is_open_write")) == (True, False)
    assert (field(view, "evt.rawres"), field(view, "evt.res")) == (3, "SUCCESS")

    node.apply("socket", 901, uid=1000, res=4, domain=AF_INET, type=1, proto=0)
    view = node.apply("connect", 901, uid=1000, res=0, fd=4,
                      addr=(AF_INET, "198.51.100.9", 80), local=(AF_INET, "10.1.2.3", 41000))
    assert field(view, "fd.sip") == ipaddress.ip_address("198.51.100.9")
    assert (field(view, "fd.sport"), field(view, "fd.l4proto")) == (80, "tcp")
    assert (field(view, "fd.lport"), field(view, "fd.rport")) == (41000, 80)
    assert (field(view, "fd.type"), field(view, "fd.typechar")) == ("ipv4", "4")
    assert field(view, "fd.name") == "10.1.2.3:41000->198.51.100.9:80"
    assert field(view, "fd.sproto") == "http"
    assert field(view, "evt.args") == ("res=0 tuple=10.1.2.3:41000->198.51.100.9:80 "
                                       "fd=4(<4t>10.1.2.3:41000->198.51.100.9:80) "
                                       "addr=198.51.100.9:80")

    view = node.apply("dup2", 901, uid=1000, res=1, oldfd=4, newfd=1)
    assert (field(view, "evt.rawres"), field(view, "fd.type")) == (1, "ipv4")
    assert field(view, "fd.sip") == ipaddress.ip_address("198.51.100.9")

    view = node.apply("procexit", 901, uid=1000, group_dead=1, status=0)
    assert field(view, "proc.pname") == "sshd"
    assert field(view, "proc.cmdline") == "nc -v 198.51.100.9 80"
    assert field(view, "proc.tty") == 34816


def test_failed_results_read_as_errno_names(node: Node) -> None:
    view = node.apply("connect", 5, res=-115, fd=3, addr=(AF_INET, "10.0.0.1", 22))
    assert (field(view, "evt.res"), field(view, "evt.failed")) == ("EINPROGRESS", True)
    view = node.apply("openat", 5, res=-2, dirfd=-100, name="/nope", flags=0)
    assert (field(view, "evt.res"), field(view, "fd.num")) == ("ENOENT", -1)


def test_arguments_render_as_falco_renders_them(node: Node) -> None:
    node.apply("execve", 5, comm="sh", filename="/bin/sh", argv=["sh"])
    node.tracker.table.procs[5].cwd = "/tmp/"
    view = node.apply("symlinkat", 5, target="/etc/shadow", linkdirfd=-100, linkpath="s")
    assert field(view, "evt.arg", "target") == "/etc/shadow"
    assert field(view, "evt.arg", "linkpath") == "/tmp/s"
    assert field(view, "evt.arg", "linkdirfd") == "-100(AT_FDCWD)"
    view = node.apply("linkat", 5, olddir=-100, oldpath="/etc/shadow", newdir=-100,
                      newpath="../var/h", flags=0x400)
    assert field(view, "evt.args") == ("res=0 olddir=-100(AT_FDCWD) oldpath=/etc/shadow "
                                       "newdir=-100(AT_FDCWD) newpath=/var/h "
                                       "flags=AT_SYMLINK_FOLLOW")
    view = node.apply("ptrace", 5, request=0x4206, pid=77, addr=0, data=0)
    assert field(view, "evt.arg", "request") == "PTRACE_SEIZE"
    assert field(view, "evt.arg", "0") == "0"  # by position: res
    view = node.apply("socket", 5, res=3, domain=17, type=3, proto=768)
    assert field(view, "evt.arg", "domain") == "AF_PACKET"
    assert field(view, "evt.rawarg", "domain") == 17
    view = node.apply("openat", 5, res=4, dirfd=-100, name="/var/log/syslog",
                      flags=1 | render.O_CREAT | render.O_TRUNC | 0o2000, mode=0o640)
    assert field(view, "evt.arg", "flags") == "O_WRONLY|O_CREAT|O_TRUNC|O_APPEND"
    assert field(view, "evt.arg", "mode") == "0640"
    view = node.apply("finit_module", 5, res=-1, fd=4, uargs="", flags=0)
    assert field(view, "evt.args") == "res=-1(EPERM) fd=4(<f>/var/log/syslog) uargs= flags=0"
    view = node.apply("unshare", 5, flags=0x20000000)  # no table: plain text
    assert field(view, "evt.args") == "res=0 flags=536870912"


def test_fields_are_computed_when_read_and_kept(node: Node) -> None:
    view = node.apply("execve", 5, comm="sh", filename="/bin/sh", argv=["sh", "-c", "id"])
    assert "proc.cmdline" not in view  # nothing computed until a rule asks
    assert view.get("proc.cmdline") == "sh -c id"
    assert "proc.cmdline" in view
    node.tracker.table.procs[5].args = "changed"
    assert view.get("proc.cmdline") == "sh -c id"  # one value per event
    assert view.get("fd.name") is None and view.get("no.such.field") is None
    fields = view.fields()
    assert fields["proc.cmdline"] == "sh -c id" and fields["evt.type"] == "execve"
    assert "fd.name" not in fields and None not in fields.values()


def test_derived_path_fields_agree_with_the_engine(node: Node) -> None:
    """The view computes fd.directory and fd.filename itself (one step instead of the
    engine's derivation): the same values the engine derives from fd.name and fd.type."""
    node.apply("execve", 5, comm="sh", filename="/bin/sh", argv=["sh"])
    cases = [("/etc/shadow", 0), ("/shadow", 0), ("/var/log/", render.O_DIRECTORY),
             ("/var/log", render.O_DIRECTORY), ("/", 0), ("/etc/pam.d/sudo", 0)]
    for path, flags in cases:
        view = node.apply("openat", 5, res=3, dirfd=-100, name=path, flags=flags)
        recorded = {"fd.name": view.get("fd.name"), "fd.type": view.get("fd.type")}
        for name in ("fd.directory", "fd.filename"):
            assert field(view, name) == field(recorded, name), (path, name)


def test_container_fields_wait_for_the_runtime(node: Node) -> None:
    cid = "c" * 64
    box = node.cgroup(f"/libpod_parent/libpod-{cid}")
    view = node.apply("execve", 9, comm="sh", filename="/bin/sh", argv=["sh"])
    assert (field(view, "container.id"), field(view, "container.name")) == ("host", "host")
    view = node.apply("execve", 9, comm="sh", cgroup_id=box, filename="/bin/sh", argv=["sh"])
    assert field(view, "container.id") == "cccccccccccc"
    assert field(view, "container.name") is None  # no runtime answer yet: checks are false
    node.metadata[cid] = {"name": "web", "image_repository": "docker.io/library/nginx",
                          "image_tag": "1.25", "privileged": False,
                          "pod_name": "web-0", "pod_namespace": "shop"}
    # The runtime did not know it when asked; the registry asks again, a little later.
    wait_for(lambda: field(node.apply("setsid", 9, cgroup_id=box, res=9), "container.name"),
             what="container metadata")
    view = node.apply("setsid", 9, cgroup_id=box, res=9)
    assert field(view, "container.image") == "docker.io/library/nginx:1.25"
    assert (field(view, "k8s.ns.name"), field(view, "k8s.pod.name")) == ("shop", "web-0")
    assert field(view, "container.privileged") is False


def test_required_event_types() -> None:
    assert required_event_types({"execve"}) >= {"clone", "execve", "procexit", "chdir"}
    assert "close" not in required_event_types({"execve"})
    assert required_event_types({"connect"}) >= {"socket", "close", "dup2", "openat"}
