"""Run-time helpers the generated condition code calls: globs, path prefixes, regexes, ASCII case.

Each is built once per check at compile time (a pattern compiled, a prefix set split) so the
per-event work is one call.
"""

from __future__ import annotations

import base64
import binascii
import re
import string
from collections.abc import Callable, Iterable

import re2

_LOWER = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)
_UPPER = str.maketrans(string.ascii_lowercase, string.ascii_uppercase)


def ascii_lower(text: str) -> str:
    """Falco folds case in the C locale: ASCII letters only (``str.lower`` also maps 'İ'...)."""
    return text.lower() if text.isascii() else text.translate(_LOWER)


def ascii_upper(text: str) -> str:
    return text.upper() if text.isascii() else text.translate(_UPPER)


def b64decode(value: str | bytes) -> bytes | None:
    """The ``b64()`` transformer: None (no value) when the text is not valid base64."""
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return None


def basename(path: str) -> str:
    """Last path component; ``""`` for a path ending in ``/`` (as libsinsp's transformer)."""
    return path.rpartition("/")[2]


# -- glob: fnmatch(3) with flags 0 (or FNM_CASEFOLD), so `*` and `?` also match `/` -------------

_POSIX_CLASSES = {
    "alpha": "a-zA-Z",
    "digit": "0-9",
    "alnum": "a-zA-Z0-9",
    "upper": "A-Z",
    "lower": "a-z",
    "space": " \\t\\n\\r\\f\\v",
    "blank": " \\t",
    "xdigit": "0-9a-fA-F",
    "punct": re.escape(string.punctuation),
    "cntrl": "\\x00-\\x1f\\x7f",
    "print": "\\x20-\\x7e",
    "graph": "\\x21-\\x7e",
}


def glob_regex(pattern: str, casefold: bool = False) -> re.Pattern[str]:
    """A regex that full-matches exactly what ``fnmatch(pattern, s, flags)`` accepts."""
    out: list[str] = []
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if c == "*":
            out.append(".*")
        elif c == "?":
            out.append(".")
        elif c == "\\" and i + 1 < len(pattern):
            i += 1
            out.append(re.escape(pattern[i]))
        elif c == "[":
            bracket, end = _bracket(pattern, i)
            if bracket is None:
                out.append(re.escape(c))
            else:
                out.append(bracket)
                i = end
        else:
            out.append(re.escape(c))
        i += 1
    flags = re.DOTALL | (re.IGNORECASE | re.ASCII if casefold else 0)
    return re.compile("".join(out), flags)


def _bracket(pattern: str, start: int) -> tuple[str | None, int]:
    """Translate ``[...]`` at ``start``; (None, start) when unterminated (then `[` is literal)."""
    i = start + 1
    negate = i < len(pattern) and pattern[i] in "!^"
    if negate:
        i += 1
    parts: list[str] = []
    first = True
    while i < len(pattern):
        c = pattern[i]
        if c == "]" and not first:
            body = "".join(parts) or "\\x00-\\U0010ffff"
            return ("[^" if negate else "[") + body + "]", i
        first = False
        if c == "[" and pattern.startswith("[:", i):
            close = pattern.find(":]", i + 2)
            name = pattern[i + 2 : close] if close > 0 else ""
            if name in _POSIX_CLASSES:
                parts.append(_POSIX_CLASSES[name])
                i = close + 2
                continue
        if c == "\\" and i + 1 < len(pattern):
            i += 1
            c = pattern[i]
        if c == "-" and parts and i + 1 < len(pattern) and pattern[i + 1] != "]":
            parts.append("-")
        else:
            parts.append(re.escape(c))
        i += 1
    return None, start


# -- pmatch: component-wise path prefixes, globs allowed per component ----------------------------


def _components(path: str) -> list[str]:
    return [c for c in path.split("/") if c]  # empty components are skipped, as libsinsp does


def path_prefix_matcher(prefixes: Iterable[str]) -> Callable[[str], bool]:
    """True when some prefix's components are a leading run of the path's components.

    ``/tmp/hello`` matches ``/tmp/hello`` and ``/tmp/hello/x`` but not ``/tmp/hello_world``;
    a prefix component with ``*?[`` is a glob for that one component; ``/`` matches any path.
    """
    exact: set[tuple[str, ...]] = set()
    globbed: list[tuple[Callable[[str], bool], ...]] = []
    for prefix in prefixes:
        parts = _components(prefix)
        if any(ch in part for part in parts for ch in "*?["):
            globbed.append(tuple(_component_matcher(p) for p in parts))
        else:
            exact.add(tuple(parts))
    lengths = sorted({len(p) for p in exact})

    def match(path: str) -> bool:
        parts = tuple(_components(path))
        for n in lengths:
            if n > len(parts):
                break
            if parts[:n] in exact:
                return True
        return any(
            len(g) <= len(parts) and all(m(p) for m, p in zip(g, parts, strict=False))
            for g in globbed
        )

    return match


def _component_matcher(part: str) -> Callable[[str], bool]:
    if any(ch in part for ch in "*?["):
        fullmatch = glob_regex(part).fullmatch
        return lambda value: fullmatch(value) is not None
    return part.__eq__


# -- regex: RE2 in POSIX mode, as libsinsp compiles it, full match -------------------------------

_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.posix_syntax = True  # RE2::POSIX: egrep syntax, leftmost-longest matching
_RE2_OPTIONS.longest_match = True
_RE2_OPTIONS.log_errors = False  # the error is reported to the rules author, not to stderr


def compile_regex(pattern: str) -> Callable[[str], object]:
    """The full-match function of ``pattern``; ValueError("invalid regex pattern: ...").

    RE2 rather than Python's ``re``: the same syntax Falco accepts (so a rule means the same
    in both), and matching in linear time, where ``re`` can take exponential time on a
    crafted value (rules run on command lines and paths an attacker chooses).
    """
    try:
        return re2.compile(pattern, _RE2_OPTIONS).fullmatch
    except re2.error as exc:
        detail = exc.args[0].decode(errors="replace") if exc.args else "invalid"
        raise ValueError(f"invalid regex pattern: {detail}") from None
