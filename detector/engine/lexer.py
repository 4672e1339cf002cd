"""Tokens of Falco's condition language, read on demand by the parser.

As in libsinsp there is no separate token stream: what a piece of text is depends on where
the grammar stands (``proc.name`` is a field on the left of an operator and a bare string on
the right, ``in(`` is an operator, ``basename`` a transformer only when ``(`` follows), so the
scanner offers one method per token shape and the parser asks for those it can accept.

Token shapes follow libsinsp's POSIX regexes. Python's ``re`` is leftmost-first rather than
leftmost-longest, which gives the same matches here because no pattern has overlapping
alternatives; none can backtrack more than linearly.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from detector.engine.errors import RuleError

# What the parser skips between tokens. \b is there and \v, \f are not, as in libsinsp.
BLANKS = frozenset(" \t\b\r\n")

IDENTIFIER = re.compile(r"[a-zA-Z][a-zA-Z0-9_]*")
# One lexeme however many dots: `evt.arg.flags` is split by the field registry, not here.
FIELD_NAME = re.compile(r"[a-zA-Z][a-zA-Z0-9_]*(?:\.[a-zA-Z][a-zA-Z0-9_]*)+")
# A bare field argument runs up to `]` and may hold `/`, `.`, `(`...: docker.sock paths, JSON
# pointers. Token regexes exclude POSIX [:space:], which is not quite BLANKS.
ARG_BARE = re.compile(r"[^\[\]\"' \t\n\v\f\r]+")
# libsinsp accepts any letter after 0x and lets the compiler reject the value.
HEX_NUMBER = re.compile(r"0[xX][0-9a-zA-Z]+")
NUMBER = re.compile(r"[+-]?[0-9]+\.?[0-9]*(?:[eE][+-][0-9]+)?")
BARE_STRING = re.compile(r"[^()\"'=, \t\n\v\f\r]+")
# `not` must be followed by a blank to be the keyword (else `notify` could not be a macro);
# `not(` is matched on its own.
NOT_BLANK = re.compile(r"not[ \t\n\v\f\r]+")
_WORD = re.compile(r"[^ \t\b\r\n()\"',]+")
_HEX2 = re.compile(r"[0-9a-fA-F]{2}")

_ESCAPES = {
    "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "\\": "\\", "/": "/",
    # A backslash before a blank stands for itself: upstream rules once relied on it, and
    # libsinsp kept the behaviour for compatibility.
    " ": "\\",
}


def error_at(source: str, offset: int, message: str, length: int | None = None) -> RuleError:
    """A RuleError pointing at ``offset``: line and column within the condition, that line's
    text for the underline, and the offending token's length unless given."""
    line_start = source.rfind("\n", 0, offset) + 1
    line_end = source.find("\n", offset)
    if line_end < 0:
        line_end = len(source)
    if length is None:
        word = _WORD.match(source, offset)
        length = len(word.group()) if word else 1
    return RuleError(
        message,
        line=source.count("\n", 0, line_start) + 1,
        column=offset - line_start + 1,
        text=source[line_start:line_end].rstrip("\r"),
        length=max(1, min(length, line_end - offset)),
    )


class Scanner:
    """A cursor over the condition text. ``last`` is the text of the last token read, which
    Falco names in "unexpected token after '...'"; ``last_end`` is where it ended, so node spans
    stop at their last token rather than after the blanks that follow it."""

    def __init__(self, source: str) -> None:
        self.source = source
        # libsinsp reads the condition as a C string: a NUL ends it for every token, and only
        # the final "whole input consumed" check sees what follows.
        nul = source.find("\0")
        self.text = source if nul < 0 else source[:nul]
        self.pos = 0
        self.last = ""
        self.last_end = 0

    def error(
        self, message: str, offset: int | None = None, length: int | None = None
    ) -> RuleError:
        return error_at(self.source, self.pos if offset is None else offset, message, length)

    def _took(self, end: int) -> str:
        token = self.text[self.pos : end]
        self.last = token
        self.pos = self.last_end = end
        return token

    def skip_blanks(self) -> bool:
        text, start = self.text, self.pos
        pos = start
        while pos < len(text) and text[pos] in BLANKS:
            pos += 1
        self.pos = pos
        return pos > start

    def literal(self, literal: str) -> bool:
        if self.text.startswith(literal, self.pos):
            self._took(self.pos + len(literal))
            return True
        return False

    def first_of(self, literals: Iterable[str]) -> str | None:
        for literal in literals:
            if self.literal(literal):
                return literal
        return None

    def word_followed_by_blank(self, words: Iterable[str]) -> str | None:
        """Word operators (``contains``...) need a blank after them; libsinsp insists on a
        space, we take any blank (its own TODO says it should)."""
        text = self.text
        for word in words:
            end = self.pos + len(word)
            if text.startswith(word, self.pos) and end < len(text) and text[end] in BLANKS:
                return self._took(end)
        return None

    def match(self, pattern: re.Pattern[str]) -> str | None:
        found = pattern.match(self.text, self.pos)
        return self._took(found.end()) if found else None

    def quoted(self) -> str | None:
        """A quoted string's value (quotes removed, escapes applied), or None if no quote is
        here. As in libsinsp the string ends at the first same quote whose previous character
        is not a backslash, even when that backslash is itself escaped (write a trailing
        backslash as ``\\ ``)."""
        text, start = self.text, self.pos
        if start >= len(text) or text[start] not in "\"'":
            return None
        quote = text[start]
        end = start + 1
        while True:
            end = text.find(quote, end)
            if end < 0:
                raise self.error(
                    f"unterminated string: expected a closing {quote}", start, len(text) - start
                )
            if text[end - 1] != "\\":
                break
            end += 1
        inner = text[start + 1 : end]
        value = inner if "\\" not in inner else self._unescape(inner, quote, start + 1)
        self._took(end + 1)
        return value

    def _unescape(self, inner: str, quote: str, offset: int) -> str:
        out: list[str] = []
        i = 0
        # The closing-quote rule guarantees inner never ends with a lone backslash.
        while i < len(inner):
            char = inner[i]
            if char != "\\":
                out.append(char)
                i += 1
                continue
            code = inner[i + 1]
            if code in _ESCAPES:
                out.append(_ESCAPES[code])
            elif code in "\"'":
                if code != quote:
                    raise self.error(
                        f"invalid \\{code} escape in {quote}-quoted string", offset + i, 2
                    )
                out.append(code)
            elif code == "x":
                digits = _HEX2.match(inner, i + 2)
                if digits is None:
                    raise self.error("invalid \\x escape: expected two hex digits", offset + i, 4)
                out.append(chr(int(digits.group(), 16)))
                i += 2
            else:
                raise self.error(
                    f"unsupported string escape sequence: \\{code}", offset + i, 2
                )
            i += 2
        return "".join(out)


_WRITE_ESCAPES = {
    "\\": "\\\\", '"': '\\"', "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t"
}


def write_string(text: str, bare: re.Pattern[str] | None) -> str:
    """Condition text that reads back as ``text``: bare if the ``bare`` token shape allows it
    (and nothing would be lost), otherwise double-quoted with escapes."""
    # A leading \b would be skipped as a blank, and NUL ends the condition as in libsinsp.
    if bare is not None and bare.fullmatch(text) and text[0] not in BLANKS and "\0" not in text:
        return text
    out = []
    for char in text:
        if char in _WRITE_ESCAPES:
            out.append(_WRITE_ESCAPES[char])
        elif char < " " or char == "\x7f":
            out.append(f"\\x{ord(char):02x}")
        else:
            out.append(char)
    if text.endswith("\\"):
        # An escaped backslash right before the closing quote would hide that quote (see
        # Scanner.quoted); backslash-blank also means one backslash and does not.
        out[-1] = "\\ "
    return '"' + "".join(out) + '"'
