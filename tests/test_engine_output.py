from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import pytest
import yaml

from detector.engine.errors import RuleError
from detector.engine.output import UnknownOutputField, compile_output, escape_text, make_alert
from sidekick.alert import Alert, Priority
from tests.upstream import upstream_file

T = 1767258764123456789  # 2026-01-01T09:12:44.123456789Z


def render(fmt: str, event: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    return compile_output(fmt).render(event)


@pytest.mark.parametrize(
    "name", ["falco_rules.yaml", "falco-incubating_rules.yaml", "falco-sandbox_rules.yaml"]
)
def test_upstream_outputs_compile(name: str) -> None:
    outputs = [item["output"].strip()
               for item in yaml.safe_load(upstream_file(name).read_text())
               if isinstance(item, dict) and "output" in item]
    assert len(outputs) >= 25
    for output in outputs:
        formatter = compile_output(output)
        assert formatter.keys, output


def test_stable_output_with_missing_values() -> None:
    rule = next(item for item in yaml.safe_load(upstream_file("falco_rules.yaml").read_text())
                if item.get("rule") == "Read sensitive file untrusted")
    event = {"evt.type": "openat", "proc.name": "cat", "fd.name": "/etc/shadow",
             "user.uid": 0, "proc.tty": 34816, "proc.aname": ["bash"]}
    text, fields = compile_output(rule["output"].strip()).render(event)
    assert text.startswith("Sensitive file opened for reading by non-trusted program | "
                           "file=/etc/shadow gparent=<NA> ggparent=<NA> gggparent=<NA> ")
    assert "user=<NA> user_uid=0 " in text and "terminal=34816" in text
    assert fields["proc.aname[2]"] is None and fields["user.name"] is None
    assert fields["user.uid"] == 0 and fields["proc.tty"] == 34816


def test_values_are_typed_in_json_and_text() -> None:
    text, fields = render(
        "%evt.time %proc.pid %container.privileged %fd.sip %fd.sport %proc.duration %evt.res",
        {"evt.time": T, "proc.pid": 7, "container.privileged": False, "fd.sip": "10.0.0.2",
         "fd.sport": 443, "proc.pid.ts": T - 5, "evt.rawres": -115},
    )
    assert text == "09:12:44.123456789 7 false 10.0.0.2 443 5 EINPROGRESS"
    assert fields == {"evt.time": T, "proc.pid": 7, "container.privileged": False,
                      "fd.sip": "10.0.0.2", "fd.sport": 443, "proc.duration": 5,
                      "evt.res": "EINPROGRESS"}


def test_widths_pad_or_cut() -> None:
    text, fields = render("[%6proc.name][%3proc.name][%6user.name]", {"proc.name": "bash"})
    assert text == "[bash  ][bas][<NA>  ]"
    assert fields == {"proc.name": "bash", "user.name": None}


def test_keys_are_kept_as_written() -> None:
    event = {"proc.name": "sh", "proc.aname": ["bash", "sshd"],
             "evt.args": {"flags": "O_RDONLY"}}
    text, fields = render("%proc.aname[2] %evt.arg.flags %evt.arg[flags] %proc.aname", event)
    assert text == "sshd O_RDONLY O_RDONLY bash sshd"
    assert fields == {"proc.aname[2]": "sshd", "evt.arg.flags": "O_RDONLY",
                      "evt.arg[flags]": "O_RDONLY", "proc.aname": "bash sshd"}


@pytest.mark.parametrize(
    ("fmt", "text", "keys"),
    [
        ("(%proc.name)", "(sh)", ["proc.name"]),
        ("file=%fd.name, next", "file=/tmp/x, next", ["fd.name"]),
        ("%user.names", "roots", ["user.name"]),  # longest prefix that is a field
        ("%proc.name_x", "sh_x", ["proc.name"]),
        ("%proc.name.", "sh.", ["proc.name"]),
        ("a=%proc.aname[1]=b", "a=bash=b", ["proc.aname[1]"]),
        ("*%proc.name", "sh", ["proc.name"]),  # Falco's leading '*' is not text
        ("%%proc.name", None, None),
    ],
)
def test_longest_prefix_rule(fmt: str, text: str | None, keys: list[str] | None) -> None:
    event = {"proc.name": "sh", "fd.name": "/tmp/x", "user.name": "root", "proc.pname": "bash"}
    if text is None:
        with pytest.raises(RuleError):
            compile_output(fmt)
        return
    formatter = compile_output(fmt)
    assert formatter.render(event)[0] == text
    assert list(formatter.keys) == keys


@pytest.mark.parametrize(
    ("fmt", "message", "column"),
    [  # a stray '%' is pointed at; a bad field is underlined from its first character
        ("Shell spawned %", "output cannot end with a '%'", 15),
        ("cpu at %12", "output cannot end with '%' and a width", 8),
        ("50% done by %proc.name", "'%' must be followed by a field name", 3),
        ("user=%user.nme x", "unknown field 'user.nme' in output", 7),
        ("ip=%fd.ip", "field 'fd.ip' can only be used in conditions", 5),
        ("x %proc.aname[two]", "proc.aname must be an index", 4),
        ("x %evt.arg", "field 'evt.arg' requires an argument", 4),
        ("x %tolower(proc.aname)", "does not support transformers", 12),
        ("x %tolower(proc.name", "expected ')' to close tolower(", 21),
        ("x %len(proc.pid)", "len() does not accept a number field", 4),
    ],
)
def test_errors_name_the_column(fmt: str, message: str, column: int) -> None:
    with pytest.raises(RuleError, match=re.escape(message)) as info:
        compile_output(fmt)
    assert info.value.column == column
    assert info.value.text == fmt
    assert "^" in str(info.value)


def test_unknown_field_has_its_own_error_class() -> None:
    with pytest.raises(UnknownOutputField):
        compile_output("x %proc.nme")
    with pytest.raises(RuleError) as info:
        compile_output("x %evt.arg")
    assert not isinstance(info.value, UnknownOutputField)


def test_error_columns_stay_aligned_on_multiline_outputs() -> None:
    with pytest.raises(RuleError) as info:
        compile_output("first line\nsecond %nope.field")
    assert info.value.column == 20 and "\n" not in (info.value.text or "")


def test_container_info_is_dropped_with_a_warning() -> None:
    warnings: list[tuple[str, int]] = []
    formatter = compile_output("Shell (%container.info user=%user.name)",
                               on_warning=lambda msg, col: warnings.append((msg, col)))
    assert formatter.render({"user.name": "root"})[0] == "Shell ( user=root)"
    assert len(warnings) == 1 and warnings[0][1] == 8
    assert "container.info is deprecated" in warnings[0][0]
    compile_output("%container.info")  # no hook: no error either


def test_deprecated_field_warns() -> None:
    warnings: list[tuple[str, int]] = []
    compile_output("dir=%evt.dir", on_warning=lambda msg, col: warnings.append((msg, col)))
    assert warnings == [("field 'evt.dir' is deprecated", 6)]


def test_transformers_render_text_and_report_the_plain_field() -> None:
    event = {"proc.name": "BaSh", "proc.exepath": "/usr/bin/bash", "proc.env": ["X=aGk="]}
    text, fields = render(
        "%tolower(proc.name) %toupper(proc.name) %basename(proc.exepath) "
        "%len(proc.exepath) %b64(proc.env[X]) %toupper(basename(proc.exepath))", event)
    assert text == "bash BASH bash 13 hi BASH"
    assert fields == {"proc.name": "BaSh", "proc.exepath": "/usr/bin/bash", "proc.env[X]": "aGk="}
    assert render("%b64(proc.name)", {"proc.name": "***"})[0] == "<NA>"


@dataclass
class FakeRule:
    name: str = "Read sensitive file untrusted"
    priority: Priority = Priority.WARNING
    tags: list[str] = field(default_factory=lambda: ["mitre_credential_access", "T1555",
                                                     "filesystem"])
    source: str = "syscall"


def test_make_alert_is_falcos_json_alert() -> None:
    formatter = compile_output("Sensitive file opened | file=%fd.name tty=%proc.tty "
                               "gparent=%proc.aname[2]")
    event = {"evt.time": T, "fd.name": "/etc/shadow", "proc.tty": 0}
    alert = make_alert(FakeRule(), event, "node-1", formatter)
    assert alert.output == ("09:12:44.123456789: Warning Sensitive file opened | "
                            "file=/etc/shadow tty=0 gparent=<NA>")
    assert list(alert.output_fields) == ["evt.time", "fd.name", "proc.aname[2]", "proc.tty"]
    assert alert.output_fields == {"evt.time": T, "fd.name": "/etc/shadow",
                                   "proc.aname[2]": None, "proc.tty": 0}
    assert alert.tags == ["T1555", "filesystem", "mitre_credential_access"]
    assert (alert.rule, alert.source, alert.hostname) == (FakeRule.name, "syscall", "node-1")
    assert alert.time == "2026-01-01T09:12:44.123456789Z" and alert.time_ns == T
    assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}",
                        alert.uuid)
    again = Alert.from_json(alert.to_json())
    assert again.output_fields == alert.output_fields and again.uuid == alert.uuid
    assert make_alert(FakeRule(), event, "node-1", formatter).uuid != alert.uuid


def test_hostile_strings_stay_on_one_safe_line() -> None:
    cmdline = 'sh -c "echo \\"pwned\\"\nrm -rf /"\t\x1b[31m\x00 \udcff end'
    formatter = compile_output("Shell | cmd=%proc.cmdline")
    event = {"evt.time": T, "proc.cmdline": cmdline}
    alert = make_alert(FakeRule(priority=Priority.INFORMATIONAL), event, "h", formatter)
    assert "\n" not in alert.output and "\x1b" not in alert.output and "\x00" not in alert.output
    assert alert.output == (
        '09:12:44.123456789: Informational Shell | cmd=sh -c \\"echo \\\\\\"pwned\\\\\\"\\n'
        'rm -rf /\\"\\t\\u001b[31m\\u0000 \ufffd end')
    # output_fields keep the real value (JSON escapes it), minus bytes that are not UTF-8.
    assert alert.output_fields["proc.cmdline"] == cmdline.replace("\udcff", "\ufffd")
    assert Alert.from_json(alert.to_json()).output_fields["proc.cmdline"] == \
        cmdline.replace("\udcff", "\ufffd")


def test_escape_text_matches_json_string_escaping() -> None:
    assert escape_text('a"b\\c\nd\re\x01') == 'a\\"b\\\\c\\nd\\re\\u0001'
    assert escape_text("ünïcode ✓") == "ünïcode ✓"


def test_alert_without_event_time_is_stamped_now() -> None:
    alert = make_alert(FakeRule(), {}, "h", compile_output("x %proc.name"))
    assert alert.output_fields["evt.time"] == alert.time_ns > T
    assert alert.output.endswith(": Warning x <NA>")
