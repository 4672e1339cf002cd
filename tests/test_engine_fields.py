from __future__ import annotations

import ipaddress
import json
import re
from typing import Any

import pytest
import yaml

from detector.engine.fields import (
    MISSING,
    REGISTRY,
    FieldArgError,
    FieldError,
    FieldSpec,
    FieldType,
    UnknownField,
    describe_fields,
)
from tests.upstream import upstream_file

# Fields in a condition: a dotted name (with an optional [arg]) followed by an operator.
# Quoted strings are blanked first so paths and hostnames inside them are not mistaken for
# fields; list items (`org.jboss` in a list) are followed by ',' or ')', never an operator.
_QUOTED = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'')
_CONDITION_FIELD = re.compile(
    r"(?<![\w./-])([a-z][a-z0-9_]*(?:\.[a-zA-Z][a-zA-Z0-9_]*)+)(?:\[([^\]]*)\])?"
    r"(?=\s*(?:=|!=|<|>|in\(|\s(?:contains|icontains|startswith|endswith|glob|iglob|in|"
    r"intersects|pmatch|exists|regex|bcontains|bstartswith)\b))"
)


def condition_fields(name: str) -> set[tuple[str, str | None]]:
    found: set[tuple[str, str | None]] = set()
    for item in yaml.safe_load(upstream_file(name).read_text()):
        if isinstance(item, dict) and isinstance(item.get("condition"), str):
            for m in _CONDITION_FIELD.finditer(_QUOTED.sub('""', item["condition"])):
                found.add((m.group(1), m.group(2)))
    return found


@pytest.mark.parametrize(
    "name", ["falco_rules.yaml", "falco-incubating_rules.yaml", "falco-sandbox_rules.yaml"]
)
def test_every_field_in_upstream_conditions_is_registered(name: str) -> None:
    found = condition_fields(name)
    # The regex must really see the fields, or this test proves nothing.
    assert len(found) >= 45
    if name == "falco_rules.yaml":
        assert {("proc.aname", "2"), ("evt.arg.flags", None), ("fd.sip.name", None),
                ("fd.snet", None), ("proc.is_exe_from_memfd", None)} <= found
    missing = []
    for field, arg in sorted(found, key=lambda f: (f[0], f[1] or "")):
        try:
            REGISTRY.resolve(field, arg)
        except FieldError as exc:
            missing.append(f"{field}[{arg}]: {exc}")
    assert not missing


def test_registry_has_each_name_once_with_a_description() -> None:
    names = [spec.name for spec in REGISTRY.fields()]
    assert len(names) == len(set(names)) > 100
    assert all(spec.desc.strip() for spec in REGISTRY.fields())
    assert REGISTRY.get("proc.name") is REGISTRY.resolve("proc.name")[0]
    assert REGISTRY.get("evt.arg.flags") is None


# ---- resolution --------------------------------------------------------------------------

def test_resolve_exact_dotted_and_indexed() -> None:
    spec, arg = REGISTRY.resolve("evt.arg.flags", None)
    assert (spec.name, arg) == ("evt.arg", "flags")
    assert REGISTRY.resolve("evt.arg", "flags")[1] == "flags"
    spec, arg = REGISTRY.resolve("proc.aname", "2")
    assert (spec.name, arg, spec.ancestors) == ("proc.aname", "2", True)
    # An exact name beats a shorter prefix that takes a dotted argument...
    assert REGISTRY.resolve("fd.sip.name")[0].name == "fd.sip.name"
    assert REGISTRY.resolve("evt.args")[0].name == "evt.args"
    # ...and the longest registered prefix takes the rest, dots included.
    spec, arg = REGISTRY.resolve("container.label.io.kubernetes.pod.name")
    assert (spec.name, arg) == ("container.label", "io.kubernetes.pod.name")


@pytest.mark.parametrize(
    ("name", "arg", "error", "message"),
    [
        ("proc.nme", None, UnknownField, "unknown field 'proc.nme'"),
        ("proc.name.x", None, UnknownField, "unknown field 'proc.name.x'"),
        ("evt.arg", None, FieldArgError, "'evt.arg' requires an argument"),
        ("proc.name", "1", FieldArgError, "'proc.name' does not take an argument"),
        ("proc.aname", "x", FieldArgError, "proc.aname must be an index"),
        ("evt.arg.flags", "0", FieldArgError, "not both"),
        ("container.mount.dest", None, FieldArgError, "requires an argument"),
    ],
)
def test_resolve_errors(name: str, arg: str | None, error: type[Exception],
                        message: str) -> None:
    with pytest.raises(error, match=re.escape(message)):
        REGISTRY.resolve(name, arg)


def test_rawarg_type_follows_the_parameter() -> None:
    assert REGISTRY.resolve("evt.rawarg.res")[0].type is FieldType.NUMBER
    spec = REGISTRY.resolve("evt.rawarg.name")[0]
    assert spec.type is FieldType.STRING and spec.name == "evt.rawarg"


def test_flags_the_compiler_reads() -> None:
    ip = REGISTRY.resolve("fd.ip")[0]
    assert ip.either == ("fd.cip", "fd.sip") and ip.filter_only and not ip.rhs
    assert REGISTRY.resolve("fd.net")[0].type is FieldType.IPNET
    aname = REGISTRY.resolve("proc.aname")[0]
    assert aname.ancestors and not aname.transformers and not aname.rhs
    assert REGISTRY.resolve("fd.sip.name")[0].resolves == "fd.sip"
    assert REGISTRY.resolve("proc.tty")[0].numeric
    assert REGISTRY.resolve("fd.sport")[0].type is FieldType.PORT
    assert not REGISTRY.resolve("proc.name")[0].numeric
    assert REGISTRY.resolve("evt.dir")[0].deprecated
    assert not REGISTRY.resolve("proc.name")[0].filter_only


# ---- extraction --------------------------------------------------------------------------

def get(name: str, event: dict[str, Any], arg: str | None = None) -> Any:
    spec, arg = REGISTRY.resolve(name, arg)
    return spec.extractor(arg)(event)


def test_every_field_is_missing_on_an_empty_event() -> None:
    samples = {"evt.arg": "flags", "evt.rawarg": "res", "container.mount.dest": "/x",
               "container.mount.source": "0", "container.label": "a", "k8s.pod.label": "a",
               "ka.uri.param": "command", "ka.req.binding.subject.has_name": "a",
               "ka.req.volume.hostpath": "/", "json.value": "/a", "jevt.value": "/a"}
    present = {}
    for spec in REGISTRY.fields():
        value = spec.extractor(samples.get(spec.name))({})
        if value is not MISSING:
            present[spec.name] = value
    # Falco no longer sees enter events, so the direction is known without looking.
    assert present == {"evt.dir": "<"}


PROC = {
    "proc.name": "cat", "proc.pid": 40, "proc.exe": "/bin/cat", "proc.args": "/etc/shadow",
    "proc.aname": ["bash", "sshd", "systemd"], "proc.apid": [30, 20, 1],
    "proc.aexepath": ["/bin/bash", "/usr/sbin/sshd", "/usr/lib/systemd/systemd"],
}


def test_ancestors_by_index() -> None:
    assert get("proc.aname", PROC, "0") == "cat"
    assert get("proc.aname", PROC, "1") == "bash" == get("proc.pname", PROC)
    assert get("proc.aname", PROC, "3") == "systemd"
    assert get("proc.aname", PROC, "4") is MISSING
    assert get("proc.apid", PROC, "0") == 40 and get("proc.ppid", PROC) == 30
    assert get("proc.aexepath", PROC, "2") == "/usr/sbin/sshd"
    assert get("proc.pexepath", PROC) == "/bin/bash"
    # Unindexed: the whole chain from the parent up; the compiler matches any element.
    assert get("proc.aname", PROC) == ["bash", "sshd", "systemd"]
    assert get("proc.aexe", PROC, "1") is MISSING


def test_recorded_parent_wins_and_stands_in_for_the_chain() -> None:
    event = {"proc.name": "sh", "proc.pname": "runc:[0:PARENT]"}
    assert get("proc.aname", event, "1") == "runc:[0:PARENT]"
    assert get("proc.aname", event) == ["runc:[0:PARENT]"]
    assert get("proc.aname", event, "2") is MISSING
    assert get("proc.pname", {**PROC, "proc.pname": "zsh"}) == "zsh"


def test_command_lines() -> None:
    assert get("proc.cmdline", PROC) == "cat /etc/shadow"
    assert get("proc.exeline", PROC) == "/bin/cat /etc/shadow"
    assert get("proc.cmdline", {"proc.name": "ls", "proc.args": ""}) == "ls"
    assert get("proc.cmdline", {"proc.name": "ls"}) is MISSING
    assert get("proc.cmdline", {"proc.cmdline": "recorded", "proc.name": "x"}) == "recorded"
    event = {"proc.acmdline": ["bash -i", "sshd: root"]}
    assert get("proc.pcmdline", event) == "bash -i"
    assert get("proc.acmdline", event, "2") == "sshd: root"


def test_environment() -> None:
    as_list = {"proc.env": ["HOME=/root", "LD_PRELOAD=/tmp/x.so", "EMPTY="]}
    as_dict = {"proc.env": {"HOME": "/root", "LD_PRELOAD": "/tmp/x.so"}}
    for event in (as_list, as_dict):
        assert get("proc.env", event, "LD_PRELOAD") == "/tmp/x.so"
        assert get("proc.env", event, "PATH") is MISSING
        assert get("proc.env", event).startswith("HOME=/root LD_PRELOAD=/tmp/x.so")
    assert get("proc.env", as_list, "EMPTY") == ""


def test_durations() -> None:
    event = {"evt.time": 10_000_000_000, "proc.pid.ts": 4_000_000_000,
             "proc.exe_ino.ctime": 3_500_000_000}
    assert get("proc.duration", event) == 6_000_000_000
    assert get("proc.exe_ino.ctime_duration_proc_start", event) == 500_000_000
    assert get("proc.duration", {"evt.time": 1}) is MISSING
    assert get("proc.is_sid_leader", {"proc.sid": 7, "proc.vpid": 7}) is True
    assert get("proc.is_vpgid_leader", {"proc.vpgid": 7, "proc.vpid": 8}) is False


OPEN = {
    "evt.type": "openat", "evt.rawres": 3,
    "evt.args": {"fd": "3(<f>/var/log/syslog)", "dirfd": -100, "name": "/var/log/syslog",
                 "flags": "O_TRUNC|O_CREAT|O_WRONLY", "mode": "0644"},
}


def test_event_arguments() -> None:
    assert get("evt.arg.flags", OPEN) == "O_TRUNC|O_CREAT|O_WRONLY"
    assert get("evt.arg", OPEN, "flags") == "O_TRUNC|O_CREAT|O_WRONLY"
    assert get("evt.arg", OPEN, "1") == "-100"  # by position, always text
    assert get("evt.arg", OPEN, "9") is MISSING
    assert get("evt.arg.request", OPEN) is MISSING
    assert get("evt.arg.flags", {"evt.type": "openat"}) is MISSING
    assert get("evt.args", OPEN).startswith("fd=3(<f>/var/log/syslog) dirfd=-100 name=")
    # Raw values: recorded ones, else the rendered number (with what follows it dropped).
    assert get("evt.rawarg.fd", OPEN) == 3
    assert get("evt.rawarg.dirfd", OPEN) == -100
    assert get("evt.rawarg.name", OPEN) == "/var/log/syslog"
    assert get("evt.rawarg.flags", {**OPEN, "evt.rawargs": {"flags": 578}}) == 578
    assert get("evt.rawarg.flags", OPEN) is MISSING


def test_result_and_open_flags() -> None:
    assert get("evt.res", OPEN) == "SUCCESS"
    assert get("evt.res", {"evt.rawres": -115}) == "EINPROGRESS"
    assert get("evt.res", {"evt.rawres": -2}) == "ENOENT"
    assert get("evt.res", {"evt.res": "EACCES", "evt.rawres": 0}) == "EACCES"
    assert get("evt.failed", {"evt.rawres": -13}) is True
    assert get("evt.is_open_write", OPEN) is True
    assert get("evt.is_open_read", OPEN) is False
    read = {"evt.type": "open", "evt.args": {"flags": "O_RDWR"}}
    assert get("evt.is_open_read", read) is get("evt.is_open_write", read) is True
    assert get("evt.is_open_read", {"evt.type": "execve"}) is False
    assert get("evt.is_open_read", {"evt.type": "openat"}) is MISSING
    assert get("evt.category", OPEN) == "file"
    assert get("evt.category", {"evt.type": "connect"}) == "net"


@pytest.mark.parametrize(
    ("name", "kind", "directory", "filename"),
    [
        ("/etc/shadow", "file", "/etc", "shadow"),
        ("/shadow", "file", "/", "shadow"),
        ("/var/log/", None, "/var/log/", "/var/log/"),
        ("/var/log", "directory", "/var/log", MISSING),
        ("10.0.0.1:4000->10.0.0.2:80", "ipv4", MISSING, MISSING),
    ],
)
def test_directory_and_filename(name: str, kind: str | None, directory: Any,
                                filename: Any) -> None:
    event = {"fd.name": name} if kind is None else {"fd.name": name, "fd.type": kind}
    assert get("fd.directory", event) == directory
    assert get("fd.filename", event) == filename


def test_fd_kind_and_raw_name() -> None:
    assert get("fd.typechar", {"fd.type": "ipv6"}) == "6"
    assert get("fd.type", {"fd.typechar": "u"}) == "unix"
    assert get("fd.sockfamily", {"fd.type": "ipv4"}) == "ip"
    assert get("fd.nameraw", {"fd.name": "/etc/shadow"}) == "/etc/shadow"
    raw = {"fd.name": "/etc/shadow", "fd.nameraw": "/etc/../etc/shadow"}
    assert get("fd.nameraw", raw) == "/etc/../etc/shadow"


CONNECT = {
    "evt.type": "connect", "fd.type": "ipv4", "fd.l4proto": "tcp",
    "fd.cip": "10.0.0.5", "fd.cport": 40000, "fd.sip": "93.184.216.34", "fd.sport": 22,
}


def test_socket_sides() -> None:
    assert get("fd.sip", CONNECT) == ipaddress.ip_address("93.184.216.34")
    assert get("fd.lip", CONNECT) == ipaddress.ip_address("10.0.0.5")
    assert get("fd.rport", CONNECT) == 22 and get("fd.lport", CONNECT) == 40000
    accepted = {**CONNECT, "fd.is_server": True}
    assert get("fd.lip", accepted) == ipaddress.ip_address("93.184.216.34")
    assert get("fd.rport", accepted) == 40000
    assert get("fd.name", CONNECT) == "10.0.0.5:40000->93.184.216.34:22"
    assert get("fd.sproto", CONNECT) == "ssh"
    assert get("fd.cproto", CONNECT) == "40000"
    assert get("fd.sip", {"fd.sip": "not an ip"}) is MISSING


def test_either_side_fields() -> None:
    client, server = get("fd.ip", CONNECT)
    assert (str(client), str(server)) == ("10.0.0.5", "93.184.216.34")
    assert get("fd.port", CONNECT) == (40000, 22)
    assert get("fd.proto", CONNECT)[1] == "ssh"
    assert get("fd.ip", {"fd.cip": "10.0.0.5"}) == (ipaddress.ip_address("10.0.0.5"), None)
    assert get("fd.ip", {"fd.type": "unix"}) is MISSING
    # Network fields extract addresses; the literal is the network (`=` means "within").
    assert get("fd.snet", CONNECT) in REGISTRY.resolve("fd.snet")[0].convert("93.184.0.0/16")


def test_hostname_fields_read_what_the_source_resolved() -> None:
    assert get("fd.sip.name", {**CONNECT, "fd.sip.name": "example.com"}) == "example.com"
    assert get("fd.sip.name", CONNECT) is MISSING


def test_container_fields() -> None:
    event = {
        "container.id": "3ad7b26ded6d", "container.image.repository": "docker.io/nginx",
        "container.image.tag": "1.27", "container.labels": {"io.kubernetes.pod.name": "web"},
        "container.mounts": [
            {"source": "/var/run/docker.sock", "dest": "/run/docker.sock", "mode": "",
             "rdwr": True, "propagation": "rprivate"},
            {"source": "/etc", "dest": "/host/etc", "mode": "ro", "rdwr": False,
             "propagation": "rprivate"},
        ],
        "proc.pidns_init_start_ts": 5, "evt.time": 12,
    }
    assert get("container.image", event) == "docker.io/nginx:1.27"
    assert get("container.mount.dest", event, "/var/run/docker.sock") == "/run/docker.sock"
    assert get("container.mount.dest", event, "/et*") == "/host/etc"
    assert get("container.mount.dest", event, "1") == "/host/etc"
    assert get("container.mount.dest", event, "/proc*") is MISSING
    assert get("container.mount.source", event, "/host/*") == "/etc"
    assert get("container.mounts", event) == (
        "/var/run/docker.sock:/run/docker.sock::true:rprivate,/etc:/host/etc:ro:false:rprivate")
    assert get("container.label.io.kubernetes.pod.name", event) == "web"
    assert get("container.label", event, "missing") is MISSING
    assert get("container.labels", event) == "io.kubernetes.pod.name:web"
    assert get("container.start_ts", event) == 5 and get("container.duration", event) == 7
    assert get("k8s.pod.id", {"k8s.pod.uid": "u-1"}) == "u-1"


# ---- literals ----------------------------------------------------------------------------

def convert(name: str, text: str) -> Any:
    return REGISTRY.resolve(name)[0].convert(text)


@pytest.mark.parametrize(
    ("name", "text", "value"),
    [
        ("proc.pid", "42", 42), ("proc.pid", "-1", -1), ("proc.pid", "+7", 7),
        ("proc.pid", "0x1F", 31), ("evt.rawres", "-0x10", -16),
        ("proc.duration", "5000000000", 5_000_000_000),
        ("fd.sport", "443", 443), ("fd.sport", "ssh", 22), ("fd.port", "https", 443),
        ("container.privileged", "true", True), ("fd.connected", "false", False),
        ("fd.sip", "10.0.0.1", ipaddress.ip_address("10.0.0.1")),
        ("fd.ip", "::1", ipaddress.ip_address("::1")),
        ("fd.net", "127.0.0.0/8", ipaddress.ip_network("127.0.0.0/8")),
        ("fd.snet", "10.1.2.3/8", ipaddress.ip_network("10.0.0.0/8")),
        ("fd.snet", "fd00::/8", ipaddress.ip_network("fd00::/8")),
        ("proc.name", " 0x1 ", " 0x1 "), ("evt.buffer", "ab", b"ab"),
    ],
)
def test_literals(name: str, text: str, value: Any) -> None:
    assert convert(name, text) == value


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("proc.pid", "abc", "'abc' is not a number for proc.pid"),
        ("proc.pid", "1.5", "'1.5' is not a number for proc.pid"),
        ("proc.pid", "", "'' is not a number for proc.pid"),
        ("fd.sport", "no-such-service", "'no-such-service' is not a port number or a known"),
        ("fd.sport", "70000", "'70000' is not a port (0-65535) for fd.sport"),
        ("container.privileged", "True", "'True' is not a boolean for container.privileged"),
        ("fd.sip", "10.0.0", "'10.0.0' is not an IP address for fd.sip"),
        ("fd.net", "10.0.0.1", "'10.0.0.1' is not an IP network for fd.net"),
        ("fd.net", "10.0.0.0/33", "'10.0.0.0/33' is not an IP network for fd.net"),
    ],
)
def test_bad_literals(name: str, text: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        convert(name, text)


# ---- listing -----------------------------------------------------------------------------

def test_describe_fields_text() -> None:
    text = describe_fields("text")
    assert "Field Class:                  process (Processes)" in text
    line = next(ln for ln in text.splitlines() if ln.startswith("proc.name "))
    assert line[30:].startswith("Process name")
    # A name longer than the column goes on its own line, the description under it.
    lines = text.splitlines()
    at = lines.index("proc.exe_ino.ctime_duration_proc_start")
    assert lines[at + 1].startswith(" " * 30 + "Nanoseconds")
    assert "\nevt.dir " not in text  # deprecated fields are not listed


def test_describe_fields_json() -> None:
    data = json.loads(describe_fields("json"))
    classes = {c["name"]: c for c in data["fieldclasses"]}
    assert {"evt", "process", "user", "group", "fd", "container", "k8s"} <= set(classes)
    fields = {f["name"]: f for c in data["fieldclasses"] for f in c["fields"]}
    assert fields["proc.aname"]["argument"] == {"required": False}
    assert fields["evt.arg"]["argument"] == {"required": True}
    assert fields["proc.tty"] == {"name": "proc.tty", "type": "number", "is_list": False,
                                  "argument": None, "filter_only": False,
                                  "desc": REGISTRY.resolve("proc.tty")[0].desc}
    assert fields["fd.net"]["filter_only"] is True
    with pytest.raises(ValueError, match="unknown format"):
        describe_fields("yaml")


def test_field_spec_contract_defaults() -> None:
    spec = FieldSpec("x.y", FieldType.STRING, "demo")
    assert spec.extractor(None)({"x.y": "v"}) == "v"
    assert not spec.is_list and not spec.numeric and spec.source == "syscall"
    assert FieldSpec("x.l", FieldType.LIST, "demo").is_list
