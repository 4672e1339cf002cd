"""Event sources by name: what ``lanner detect --source`` opens, and the simple ones.

A source is anything with ``poll(timeout) -> list[Record] | None`` (None: it has no more,
a recording's end) and ``close()``; the eBPF source also has ``drops()`` (``.total``), the
fallback source ``stats()`` (``proc_lost``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Protocol

import orjson

from detector.engine.pathtests import PathTest, open_path_tests
from detector.sources.record import Record
from detector.sources.replay import content_lines


class Source(Protocol):
    def poll(self, timeout: float | None = None) -> list[Record] | None: ...
    def close(self) -> None: ...


class IterSource:
    """Records from an iterable (a recording, a test's list), in batches; finite. With
    ``rate`` (records/s), paced to it: a replay at a steady rate, in batches of 10 ms."""

    def __init__(self, records: Iterable[Record], batch: int = 1024,
                 rate: float | None = None) -> None:
        self._records: Iterator[Record] = iter(records)
        self._batch = batch if rate is None else max(1, min(batch, int(rate / 100)))
        self._rate = rate
        self._started: float | None = None
        self._sent = 0

    def poll(self, timeout: float | None = None) -> list[Record] | None:
        if self._rate is not None:
            now = time.monotonic()
            if self._started is None:
                self._started = now
            ahead = self._started + self._sent / self._rate - now
            if ahead > 0:
                time.sleep(ahead)
        batch = [r for _, r in zip(range(self._batch), self._records, strict=False)]
        self._sent += len(batch)
        return batch or None

    def close(self) -> None:
        self._records = iter(())


def read_records(path: str) -> Iterator[Record]:
    """Records saved as JSON lines, one object per line with Record's field names (addresses
    as [family, address, port]); blank and ``#`` lines skipped. Raises ValueError at a bad
    line, naming it."""
    with open(path, "rb") as handle:
        for number, text in content_lines(handle):
            try:
                data = orjson.loads(text)
                yield Record(**data)
            except (orjson.JSONDecodeError, TypeError) as exc:
                raise ValueError(f"{path}:{number}: not a Record: {exc}") from None


class NoKernelSource:
    """``--source k8saudit``: a detector that only serves the audit webhook reads no kernel
    events; its reader waits for the end."""

    def __init__(self) -> None:
        self._closed = threading.Event()

    def poll(self, timeout: float | None = None) -> list[Record] | None:
        return None if self._closed.wait(0.1 if timeout is None else timeout) else []

    def close(self) -> None:
        self._closed.set()


class SourceError(Exception):
    """No event source could be opened; the message says why (already told to the user)."""


def open_source(spec: str, event_types: frozenset[str], *, fallback: bool,
                rules: Sequence[Any], say: Callable[[str], None],
                ring_bytes: int | None = None, headers: str | None = None,
                cgroup_root: str | None = None,
                replay_rate: float | None = None) -> tuple[Source, bool]:
    """The source ``--source`` names and whether it is live: ``records:PATH`` (a recording),
    ``ebpf``, ``fallback``, ``auto`` (eBPF, else, when ``fallback``, the fallback source), or
    ``k8saudit`` (no kernel events: the audit webhook only). Every reason eBPF cannot load is
    told through ``say``. Raises SourceError."""
    if spec.startswith("records:"):
        return IterSource(read_records(spec[len("records:"):]), rate=replay_rate), False
    if spec == "k8saudit":
        return NoKernelSource(), True
    if spec not in ("auto", "ebpf", "fallback"):
        raise SourceError(f"unknown --source {spec!r}: auto, ebpf, fallback, k8saudit or "
                          "records:PATH")
    if spec != "fallback":
        reasons = _ebpf_reasons()
        if not reasons:
            from detector.sources.ebpf.source import DEFAULT_RING_BYTES, EbpfError, EbpfSource

            path_tests, closes_in_rules = kernel_filters(rules)
            try:
                ebpf = EbpfSource(event_types, ring_bytes=ring_bytes or DEFAULT_RING_BYTES,
                                  headers=headers, open_paths=path_tests,
                                  closes_for_state_only=not closes_in_rules)
            except EbpfError as exc:
                reasons = exc.reasons
            else:
                # Operators (and tests) need to know when events are being captured, and
                # which rules can never fire on this kernel: never silently blind.
                missing = sorted(ebpf.plan.unavailable)
                say(f"eBPF source attached to {len(ebpf.attached())} tracepoints"
                    + (f"; not traceable on this kernel: {', '.join(missing)}"
                       if missing else ""))
                say("opens: " + (f"only paths passing the rules' {len(path_tests or ())} path "
                                 "tests are reported (docs/detector.md)" if ebpf.filters_opens
                                 else "all reported (a rule can match any path)")
                    + "; closes: " + ("all reported" if closes_in_rules else
                                      "only of fds the state tracker holds"))
                return ebpf, True
        say("eBPF cannot load:\n" + "\n".join(f"  - {reason}" for reason in reasons))
        if spec == "ebpf" or not fallback:
            raise SourceError("no event source: eBPF cannot load"
                              + ("" if spec == "ebpf" else " and the fallback is disabled"))
        say("falling back to the source without eBPF")
    from detector.sources.fallback import ConnectorError, FallbackSource

    try:
        source = FallbackSource(cgroup_root=cgroup_root)
    except ConnectorError as exc:
        raise SourceError(f"no event source: the fallback source cannot start either: {exc}"
                          ) from None
    say(source.describe(rules))
    return source, True


def kernel_filters(rules: Sequence[Any]) -> tuple[list[PathTest] | None, bool]:
    """What the rules let the eBPF program leave out: the path tests an open must pass (None:
    every open is reported), and whether any rule looks at close events (if none does, only
    closes of fds the state tracker holds are reported). docs/detector.md explains both."""
    closes_in_rules = any(
        rule.enabled and rule.source == "syscall"
        and (rule.event_types is None or "close" in rule.event_types) for rule in rules)
    return open_path_tests(rules), closes_in_rules


def restart_reason(source: Source, event_types: frozenset[str],
                   rules: Sequence[Any]) -> str | None:
    """Why ``source``, opened for other rules, would miss events these rules need (None: it
    would not). Only the eBPF source can: it traces a fixed set of syscalls and filters in
    the kernel for the rules it was opened with."""
    cannot_serve = getattr(source, "cannot_serve", None)
    if cannot_serve is None:
        return None
    path_tests, closes_in_rules = kernel_filters(rules)
    return cannot_serve(event_types, path_tests, not closes_in_rules)


def _ebpf_reasons() -> list[str]:
    """Why the eBPF source cannot even be imported (empty when it can)."""
    try:
        import detector.sources.ebpf.source  # noqa: F401
    except ImportError as exc:
        return [f"the eBPF source is not available yet in this build ({exc})"]
    return []
