"""Building blocks for the field definition modules: small extractor factories.

Extractors run for every event a rule looks at, so each is a closure that does the least work
possible: a dict lookup, and a derivation only when the source did not record the value.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping
from functools import lru_cache
from operator import methodcaller
from typing import Any

from detector.engine.fields import Extractor, Factory, FieldArgError

Event = Mapping[str, Any]


def derived(key: str, derive: Callable[[Event], Any]) -> Factory:
    """The recorded value of ``key`` when there is one, else ``derive(event)``."""

    def extract(event: Event) -> Any:
        value = event.get(key)
        return derive(event) if value is None else value

    return lambda _arg: extract


def computed(compute: Callable[[Event], Any]) -> Factory:
    """A field that is never recorded, only computed."""
    return lambda _arg: compute


def alias(key: str) -> Factory:
    """Another name for a recorded key (k8s.pod.id is k8s.pod.uid)."""
    getter = methodcaller("get", key)
    return lambda _arg: getter


def is_index(arg: str) -> bool:
    return arg.isascii() and arg.isdigit()


def index_arg(field: str, arg: str) -> int:
    if not is_index(arg):
        raise FieldArgError(f"the argument of {field} must be an index (a number), got [{arg}]")
    return int(arg)


@lru_cache(maxsize=8192)
def _parse_ip(text: str) -> Any:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def ip_of(value: Any) -> Any:
    """Recorded addresses are strings (JSON) or ipaddress objects (live sources)."""
    if value is None or not isinstance(value, str):
        return value
    return _parse_ip(value)


def key_lookup(key: str) -> Factory:
    """``field[name]`` (and the dotted form) read from a recorded dict ``key``; unindexed, the
    whole mapping as Falco's text ``k1:v1, k2:v2``."""

    def whole(event: Event) -> Any:
        value = event.get(key)
        if value is None or isinstance(value, str):
            return value
        return ", ".join(f"{k}:{v}" for k, v in value.items())

    def factory(arg: str | None) -> Extractor:
        if arg is None:
            return whole

        def one(event: Event) -> Any:
            mapping = event.get(key)
            return None if mapping is None else mapping.get(arg)

        return one

    return factory


def ancestry(field: str, chain_key: str, self_extract: Extractor,
             parent_extract: Extractor) -> Factory:
    """proc.aname and friends over a recorded list of ancestors, parent first.

    [0] is the process itself and [1] its parent (both also read the process's and parent's own
    keys); [N] is element N-1; beyond the end there is no value. Unindexed, the whole chain (or
    just the parent when only that was recorded): a check matches if any ancestor does.
    """

    def chain(event: Event) -> Any:
        ancestors = event.get(chain_key)
        if ancestors is not None:
            return ancestors
        parent = parent_extract(event)
        return None if parent is None else [parent]

    def factory(arg: str | None) -> Extractor:
        if arg is None:
            return chain
        level = index_arg(field, arg)
        if level == 0:
            return self_extract
        if level == 1:
            return parent_extract
        at = level - 1

        def nth(event: Event) -> Any:
            ancestors = event.get(chain_key)
            if ancestors is None or at >= len(ancestors):
                return None
            return ancestors[at]

        return nth

    return factory


def first_of(chain_key: str) -> Callable[[Event], Any]:
    """The parent's value from a recorded ancestor list."""

    def first(event: Event) -> Any:
        ancestors = event.get(chain_key)
        return ancestors[0] if ancestors else None

    return first


def since(start_key: str) -> Callable[[Event], Any]:
    """Nanoseconds from a recorded start time to the event."""

    def elapsed(event: Event) -> Any:
        start = event.get(start_key)
        now = event.get("evt.time")
        if start is None or now is None:
            return None
        return now - start

    return elapsed


def equal(left: str, right: str) -> Callable[[Event], Any]:
    """True when two recorded keys hold the same value (proc.is_sid_leader: sid == vpid)."""

    def same(event: Event) -> Any:
        a = event.get(left)
        b = event.get(right)
        if a is None or b is None:
            return None
        return a == b

    return same
