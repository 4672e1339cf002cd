"""The C text of path_tests(), the kernel half of the open filter (see syscalls.c and
detector/engine/pathtests.py): the rules' path tests as byte comparisons.

Strings from rule files go into the C program, so each byte is written as a number, never as
a character literal. A test longer than the filter reads (PF_MAX - 1 bytes) is left out: the
paths it could match are never filtered. Too many tests for the verifier to follow, and the
filter is off (None: every open reported).
"""

from __future__ import annotations

from collections.abc import Sequence

from detector.engine.pathtests import PathTest

PF_MAX = 256  # syscalls.c's PF_MAX: bytes of a path the filter reads
_MAX_TESTS = 256
_MAX_BYTES = 8192


def render(tests: Sequence[PathTest] | None) -> str | None:
    """The definition of path_tests() for ``tests``, to append to the program compiled with
    -DPATH_FILTER; None for no filter."""
    if tests is None:
        return None
    usable = [(t.kind, t.text.encode()) for t in tests if len(t.text.encode()) < PF_MAX]
    if len(usable) > _MAX_TESTS or sum(len(text) for _, text in usable) > _MAX_BYTES:
        return None
    helpers: list[str] = []
    checks: list[str] = []
    for kind, text in usable:
        check = _check(kind, text, helpers)
        if check is not None:
            checks.append(f"    if ({check})\n        return true;\n")
    return ("".join(helpers)
            + "static __always_inline bool path_tests(const char *p, u32 len, u32 slash)\n{\n"
            + "".join(checks) + "    return false;\n}\n")


def _bytes_at(text: bytes, index: str) -> str:
    """``p[index + k] == text[k]`` for every k, the index masked for the verifier."""
    return " && ".join(f"p[({index} + {k}) & PF_MASK] == {byte}" for k, byte in enumerate(text))


def _check(kind: str, text: bytes, helpers: list[str]) -> str | None:
    n = len(text)
    if kind == "exact":
        return f"len == {n} && {_bytes_at(text, '0')}" if n else None
    if kind == "prefix":
        return f"len >= {n} && {_bytes_at(text, '0')}" if n else "true"
    if kind == "suffix":
        return f"len >= {n} && {_bytes_at(text, f'len - {n}')}" if n else "true"
    if kind == "directory":
        if text == b"/":
            return "slash == 0"
        if not n or text.endswith(b"/"):
            return None  # a parent directory is never written with a trailing slash
        return f"slash == {n} && {_bytes_at(text, '0')}"
    if kind == "filename":
        return f"len - slash - 1 == {n} && {_bytes_at(text, 'slash + 1')}" if n else None
    if kind == "contains":
        if not n:
            return "true"
        name = f"contains_{len(helpers)}"
        helpers.append(
            f"static __always_inline bool {name}(const char *p, u32 len)\n{{\n"
            f"    for (u32 i = 0; i < PF_MAX - {n}; i++) {{\n"
            f"        if (i + {n} > len)\n            return false;\n"
            f"        if ({_bytes_at(text, 'i')})\n            return true;\n"
            f"    }}\n    return false;\n}}\n")
        return f"{name}(p, len)"
    raise ValueError(f"unknown path test kind {kind!r}")
