"""Rule outputs: compile a format string once, render it per alert, build Falco's JSON alert.

A format is text with ``%field`` tokens: ``%proc.name``, ``%proc.aname[2]``, ``%evt.arg.flags``,
``%20proc.name`` (padded or cut to 20 characters), ``%tolower(proc.name)``. As in Falco, a token
is the longest prefix that names a field (``%proc.name)`` and ``file=%fd.name,`` work), every
``%`` starts a token (there is no escape for a literal ``%``), and a missing value prints
``<NA>`` in the text and ``null`` in ``output_fields``. ``%container.info`` is a legacy alias
Falco now drops: it renders as nothing, with a deprecation warning.

The alert's text line is ``<HH:MM:SS.nnnnnnnnn>: <Priority> <message>``. Falco prints the time
in the host's zone; we use UTC so that alerts do not depend on where the detector runs.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from json.encoder import encode_basestring
from typing import Any, Protocol

from detector.engine.errors import RuleError
from detector.engine.fielddefs_event import clock
from detector.engine.fields import (
    REGISTRY,
    Extractor,
    FieldArgError,
    FieldRegistry,
    FieldSpec,
    FieldType,
    ForeignField,
    UnknownField,
)
from sidekick.alert import Alert, Priority, new_uuid, now_ns

NA = "<NA>"
_FIELD = re.compile(r"[a-zA-Z][a-zA-Z0-9_]*(?:\.[a-zA-Z][a-zA-Z0-9_]*)+")
_ARG = re.compile(r"\[([^\]]*)\]")
_TRANSFORMER = re.compile(r"(tolower|toupper|b64|basename|len)\(")
_LEGACY_INFO = "container.info"
_UPPER = str.maketrans("abcdefghijklmnopqrstuvwxyz", "ABCDEFGHIJKLMNOPQRSTUVWXYZ")
_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")

Warn = Callable[[str, int], None]  # (message, 1-based column into the format)


class UnknownOutputField(RuleError):
    """An output names a field nobody registered: with skip-if-unknown-filter Falco drops the
    rule with a warning instead of failing the load, so callers need to tell it apart."""


# ---- values as text and as JSON ----------------------------------------------------------

def _printable(data: bytes) -> str:
    # Falco prints buffers with non-printable bytes as dots.
    return "".join(chr(b) if 32 <= b < 127 else "." for b in data)


def _plain_text(value: Any) -> str:
    if value.__class__ is str:
        return value
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, bytes):
        return _printable(value)
    return str(value)


def _list_text(value: Any) -> str:
    return "(" + ",".join(_plain_text(v) for v in value) + ")"


def _ancestors_text(value: Any) -> str:
    return " ".join(_plain_text(v) for v in value)


def _json_value(value: Any) -> Any:
    if value is None or value.__class__ in (str, int, bool, float):
        return value
    if isinstance(value, bytes):
        return _printable(value)
    if isinstance(value, list | tuple):
        return [_json_value(v) for v in value]
    return str(value)  # addresses


def _ancestors_json(value: Any) -> Any:
    return None if value is None else _ancestors_text(value)


def _renderers(spec: FieldSpec, arg: str | None) -> tuple[Callable[[Any], str],
                                                          Callable[[Any], Any]]:
    if spec.ancestors and arg is None:
        return _ancestors_text, _ancestors_json
    if spec.text is not None:
        return spec.text, _json_value
    if spec.is_list:
        return _list_text, _json_value
    return _plain_text, _json_value


# ---- transformers (outputs only need them for the text) ---------------------------------

def _basename(value: str) -> str:
    return value[value.rfind("/") + 1:]


def _b64(value: Any) -> Any:
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return None


_TRANSFORMS: dict[str, tuple[Callable[[Any], Any], frozenset[FieldType]]] = {
    "tolower": (lambda v: v.translate(_LOWER), frozenset({FieldType.STRING})),
    "toupper": (lambda v: v.translate(_UPPER), frozenset({FieldType.STRING})),
    "basename": (_basename, frozenset({FieldType.STRING})),
    "b64": (_b64, frozenset({FieldType.STRING, FieldType.BYTES})),
    "len": (len, frozenset({FieldType.STRING, FieldType.BYTES, FieldType.LIST})),
}
_RESULT_TYPE = {"b64": FieldType.BYTES, "len": FieldType.NUMBER}


def _transformed(func: Callable[[Any], Any], inner: Extractor) -> Extractor:
    def extract(event: Mapping[str, Any]) -> Any:
        value = inner(event)
        return None if value is None else func(value)

    return extract


# ---- compiling ---------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class _Token:
    extract: Extractor
    text: Callable[[Any], str]
    width: int  # 0: as is
    key: str | None  # output_fields key; None for a transformed token (Falco leaves it out)
    json: Callable[[Any], Any]


@dataclass(frozen=True, slots=True)
class _Operand:
    spec: FieldSpec
    arg: str | None
    key: str  # the field as written, e.g. proc.aname[2]
    type: FieldType
    extract: Extractor
    transformed: bool


class Formatter:
    """A compiled output format. ``render`` is called once per alert."""

    def __init__(self, fmt: str, pieces: list[str | _Token],
                 extra: list[tuple[str, Extractor, Callable[[Any], Any]]]) -> None:
        self.format = fmt
        self._pieces = tuple(pieces)
        self._extra = tuple(extra)  # fields under transformers, for output_fields only
        keys = [p.key for p in pieces if isinstance(p, _Token) and p.key is not None]
        self.keys: tuple[str, ...] = tuple(dict.fromkeys(keys + [k for k, _, _ in extra]))

    def render(self, event: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
        """The message text (raw: ``escape_text`` makes it safe for one line) and the
        ``output_fields`` (typed JSON values, None when missing), keyed as written."""
        out: list[str] = []
        fields: dict[str, Any] = {}
        for piece in self._pieces:
            if isinstance(piece, str):
                out.append(piece)
                continue
            value = piece.extract(event)
            if piece.key is not None:
                fields[piece.key] = piece.json(value)
            text = NA if value is None else piece.text(value)
            if piece.width:
                text = text[: piece.width].ljust(piece.width)
            out.append(text)
        for key, extract, to_json in self._extra:
            if key not in fields:
                fields[key] = to_json(extract(event))
        return "".join(out), fields


def compile_output(fmt: str, registry: FieldRegistry = REGISTRY,
                   on_warning: Warn | None = None, source: str | None = None) -> Formatter:
    """Compile a rule's output; ``source``: the rule's event source, whose fields it may use
    (None: any). Raises RuleError (column: 1-based into ``fmt``)."""
    return _Compiler(fmt, registry, on_warning, source).run()


class _Compiler:
    def __init__(self, fmt: str, registry: FieldRegistry, on_warning: Warn | None,
                 source: str | None) -> None:
        self.fmt = fmt
        self.registry = registry
        self.on_warning = on_warning
        self.source = source
        self.pieces: list[str | _Token] = []
        self.extra: dict[str, tuple[str, Extractor, Callable[[Any], Any]]] = {}

    def error(self, message: str, at: int, length: int = 1,
              kind: type[RuleError] = RuleError) -> RuleError:
        # One line, same offsets: the caret must stay under the column it names.
        text = self.fmt.replace("\n", " ").replace("\r", " ")
        return kind(message, column=at + 1, text=text, length=length)

    def warn(self, message: str, at: int) -> None:
        if self.on_warning is not None:
            self.on_warning(message, at + 1)

    def run(self) -> Formatter:
        fmt = self.fmt
        # Falco marks rule outputs "print even with missing values" by a leading '*' and
        # does not add a second one when the output already starts with it.
        i = start = 1 if fmt.startswith("*") else 0
        n = len(fmt)
        while i < n:
            if fmt[i] != "%":
                i += 1
                continue
            if i > start:
                self.pieces.append(fmt[start:i])
            i = self.token(i)
            start = i
        if start < n:
            self.pieces.append(fmt[start:])
        return Formatter(fmt, self.pieces, list(self.extra.values()))

    def token(self, at: int) -> int:
        """Compile the token whose '%' is at ``at``; returns the offset after it."""
        fmt = self.fmt
        j = at + 1
        if j == len(fmt):
            raise self.error("output cannot end with a '%' (there is no escape for '%')", at)
        while j < len(fmt) and fmt[j].isdigit():
            j += 1
        width = int(fmt[at + 1:j]) if j > at + 1 else 0
        if j == len(fmt):
            raise self.error("output cannot end with '%' and a width", at, j - at)
        if not width and fmt.startswith(_LEGACY_INFO, j):
            self.warn("%container.info is deprecated and prints nothing; container id and "
                      "name are added to outputs as container_id and container_name", at)
            return j + len(_LEGACY_INFO)
        operand, end = self.operand(j)
        if operand is None:
            raise self.error("'%' must be followed by a field name (outputs have no escape "
                             "for a literal '%')", at)
        if operand.transformed:
            text, to_json = _plain_text, _json_value
        else:
            text, to_json = _renderers(operand.spec, operand.arg)
        self.pieces.append(_Token(
            extract=operand.extract, text=text, width=width,
            key=None if operand.transformed else operand.key, json=to_json,
        ))
        return end

    def operand(self, at: int) -> tuple[_Operand | None, int]:
        """A field or transformer call starting at ``at``: (None, at) if nothing looks like one."""
        call = _TRANSFORMER.match(self.fmt, at)
        if call is not None:
            return self.transformer(call.group(1), at, call.end())
        name = _FIELD.match(self.fmt, at)
        if name is None:
            return None, at
        foreign: ForeignField | None = None
        for candidate, arg, end in self.candidates(name.group(), at):
            try:
                spec, spec_arg = self.registry.resolve(candidate, arg, self.source)
            except ForeignField as exc:
                foreign = foreign or exc
                continue
            except UnknownField:
                continue
            except FieldArgError as exc:
                raise self.error(str(exc), at, name.end() - at) from None
            return self.field(spec, spec_arg, at, end), end
        message = str(foreign) if foreign else f"unknown field '{name.group()}'"
        raise self.error(f"{message} in output", at, name.end() - at, UnknownOutputField)

    def candidates(self, name: str, at: int) -> Iterable[tuple[str, str | None, int]]:
        """(name, arg, end of token), longest first: the whole name with its [arg], then ever
        shorter prefixes, the rest being plain text."""
        arg = _ARG.match(self.fmt, at + len(name))
        if arg is None:
            yield name, None, at + len(name)
        else:
            yield name, arg.group(1), arg.end()
        for cut in range(len(name) - 1, 0, -1):
            yield name[:cut], None, at + cut

    def field(self, spec: FieldSpec, arg: str | None, at: int, end: int) -> _Operand:
        key = self.fmt[at:end]
        if spec.filter_only:
            raise self.error(f"field '{spec.name}' can only be used in conditions, not in "
                             "outputs", at, end - at)
        if spec.deprecated:
            self.warn(f"field '{spec.name}' is deprecated", at)
        return _Operand(spec, arg, key, spec.type, spec.extractor(arg), transformed=False)

    def transformer(self, func: str, at: int, inner_at: int) -> tuple[_Operand, int]:
        inner, end = self.operand(inner_at)
        if inner is None:
            raise self.error(f"{func}() needs a field", inner_at)
        if end >= len(self.fmt) or self.fmt[end] != ")":
            raise self.error(f"expected ')' to close {func}(", end)
        if not inner.spec.transformers:
            raise self.error(f"field '{inner.spec.name}' does not support transformers",
                             inner_at, end - inner_at)
        apply, accepts = _TRANSFORMS[func]
        if inner.type not in accepts:
            raise self.error(f"{func}() does not accept a {inner.type.value} field", at,
                             end + 1 - at)
        if not inner.transformed:
            # Falco still reports the plain field in output_fields.
            _, to_json = _renderers(inner.spec, inner.arg)
            self.extra.setdefault(inner.key, (inner.key, inner.extract, to_json))
        operand = _Operand(
            inner.spec, inner.arg, self.fmt[at:end + 1], _RESULT_TYPE.get(func, inner.type),
            _transformed(apply, inner.extract), transformed=True,
        )
        return operand, end + 1


# ---- alerts ------------------------------------------------------------------------------

class AlertRule(Protocol):
    """What an alert needs from a rule (``detector.engine.model.Rule`` fits)."""

    @property
    def name(self) -> str: ...
    @property
    def priority(self) -> Priority: ...
    @property
    def tags(self) -> Iterable[str]: ...
    @property
    def source(self) -> str: ...


def clean_text(value: str) -> str:
    """Text that encodes as UTF-8: bytes that were not (kept as surrogates) become U+FFFD."""
    try:
        value.encode("utf-8")
        return value
    except UnicodeEncodeError:
        pass
    try:  # one U+FFFD per undecodable byte of the original
        raw = value.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # surrogates that never were bytes
        raw = value.encode("utf-8", "surrogatepass")
    return raw.decode("utf-8", "replace")


def escape_text(text: str) -> str:
    """One safe line, as Falco prints it: JSON string escaping without the quotes."""
    return encode_basestring(clean_text(text))[1:-1]


def _clean_json(value: Any) -> Any:
    if value.__class__ is str:
        return clean_text(value)
    if value.__class__ is list:
        return [_clean_json(v) for v in value]
    return value


def make_alert(rule: AlertRule, event: Mapping[str, Any], hostname: str,
               formatter: Formatter) -> Alert:
    """Falco's alert for ``rule`` matching ``event``; ``formatter`` is the rule's compiled output.

    ``output_fields`` holds every token of the output plus ``evt.time``, sorted by key as Falco
    emits them. An event without ``evt.time`` is stamped with the current time.
    """
    time_ns = event.get("evt.time")
    if time_ns is None:
        time_ns = now_ns()
    message, fields = formatter.render(event)
    fields["evt.time"] = time_ns
    return Alert(
        rule=rule.name,
        priority=rule.priority,
        time_ns=time_ns,
        output_fields={key: _clean_json(fields[key]) for key in sorted(fields)},
        output=escape_text(f"{clock(time_ns)}: {rule.priority.label} {message}"),
        source=rule.source,
        tags=sorted(rule.tags),
        hostname=hostname,
        uuid=new_uuid(),
    )
