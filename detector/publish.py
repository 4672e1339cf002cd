"""Where ``lanner detect`` writes alerts: stdout or a file, as Falco writes them.

JSON is Falco's ``json_output`` line: the keys ``hostname output output_fields priority rule
source tags time`` in that (alphabetical) order, one object per line. Text is Falco's line,
``<HH:MM:SS.nnnnnnnnn>: <Priority> <message>``, which is the alert's ``output``.

    --output stdout            the default
    --output file:/var/log/lanner/alerts.json
    --output grpc://hub:5060   the hub over gRPC (several: grpc://hub-a:5060,hub-b:5060); the
                               bearer token, if the hub wants one, from env LANNER_HUB_TOKEN
    --output http://falcosidekick:2801/   as Falco's http_output (or https): a Falcosidekick,
                               or the hub's HTTP ingest (detector.publish_http)
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, BinaryIO, Protocol

import orjson

from sidekick.alert import Alert

if TYPE_CHECKING:  # the gRPC stack is imported only for a grpc:// output
    from detector.publish_hubs import PublisherTls

FORMATS = ("json", "text")
BUFFER_LIMIT = 100_000  # alerts a grpc:// or http(s):// output holds while nothing accepts them
TOKEN_ENV = "LANNER_HUB_TOKEN"  # not a flag: a flag's value shows in `ps`

log = logging.getLogger("lanner.publish")


class SinkError(ValueError):
    """An --output that cannot be used; the message says why."""


class Sink(Protocol):
    name: str

    def write(self, alert: Alert) -> None: ...
    def flush(self) -> None: ...
    def close(self) -> None: ...


def falco_json(alert: Alert) -> bytes:
    """One line of Falco's JSON output (no uuid: Falco has none; the hub adds its own)."""
    return orjson.dumps({
        "hostname": alert.hostname,
        "output": alert.output,
        "output_fields": alert.output_fields,
        "priority": alert.priority.label,
        "rule": alert.rule,
        "source": alert.source,
        "tags": alert.tags,
        "time": alert.time,
    }, option=orjson.OPT_APPEND_NEWLINE | orjson.OPT_SORT_KEYS)


def text_line(alert: Alert) -> bytes:
    return alert.output.encode("utf-8", "replace") + b"\n"


class StreamSink:
    """Lines to a binary stream, written as alerts come and flushed after each batch of
    events, so a burst costs one write to the file rather than one per alert."""

    def __init__(self, name: str, stream: BinaryIO, fmt: str, *, owned: bool) -> None:
        if fmt not in FORMATS:
            raise SinkError(f"unknown output format {fmt!r} (json or text)")
        self.name = name
        self.stream = stream
        self.encode = falco_json if fmt == "json" else text_line
        self.owned = owned

    def write(self, alert: Alert) -> None:
        self.stream.write(self.encode(alert))

    def flush(self) -> None:
        self.stream.flush()

    def close(self) -> None:
        self.stream.flush()
        if self.owned:
            self.stream.close()


@dataclass(frozen=True)
class HubLink:
    """How grpc:// outputs reach the hub (docs/publisher.md): TLS (``tls.cacertfile`` verifies
    the hub, ``certfile``/``keyfile`` for mutual TLS) and a spill file for the overflow of
    the memory buffer."""

    tls: PublisherTls | None = None
    spill_path: str | None = None


def open_sink(spec: str, fmt: str = "json", buffer_limit: int = BUFFER_LIMIT,
              link: HubLink = HubLink()) -> Sink:
    """A sink from an --output value. ``buffer_limit``: for grpc:// and http(s)://, the
    publisher's bound (docs/publisher.md); ``link``: for grpc://. Raises SinkError."""
    if spec == "stdout":
        return StreamSink("stdout", sys.stdout.buffer, fmt, owned=False)
    if spec.startswith("file:"):
        path = spec[len("file:"):]
        if not path:
            raise SinkError("--output file: needs a path, e.g. file:/var/log/lanner/alerts.json")
        try:
            # Appended, as Falco's file_output does: a restart must not erase earlier alerts.
            stream = open(os.path.expanduser(path), "ab")  # noqa: SIM115 - closed by close()
        except OSError as exc:
            raise SinkError(f"cannot open {path} for alerts: {exc.strerror or exc}") from None
        return StreamSink(f"file:{path}", stream, fmt, owned=True)
    if spec.startswith("grpc://"):
        targets = spec[len("grpc://"):]
        if not targets:
            raise SinkError("--output grpc:// needs the hub's address, e.g. grpc://hub:5060")
        return GrpcSink(targets, buffer_limit, link)
    if spec.startswith(("http://", "https://")):
        from detector.publish_http import HttpSink

        return HttpSink(spec, buffer_limit=buffer_limit)
    raise SinkError(f"unknown --output {spec!r}: use stdout, file:PATH, grpc://HOST:PORT or "
                    "http(s)://HOST:PORT/PATH")


class GrpcSink:
    """Alerts to the hub through the publisher: acked, resent after a reconnect, buffered
    (bounded, drops counted and reported to the hub) while no hub answers."""

    def __init__(self, targets: str, buffer_limit: int = BUFFER_LIMIT,
                 link: HubLink = HubLink()) -> None:
        from detector.publish_grpc import GrpcPublisher

        self.name = f"grpc://{targets}"
        try:
            # The node's name, as the rules' alerts carry it (FALCO_HOSTNAME in a pod).
            self.publisher = GrpcPublisher(
                targets, token=os.environ.get(TOKEN_ENV) or None, buffer_limit=buffer_limit,
                tls=link.tls, spill_path=link.spill_path,
                hostname=os.environ.get("FALCO_HOSTNAME") or None)
        except (ValueError, OSError) as exc:  # a malformed target, an unreadable TLS file
            raise SinkError(f"--output {self.name}: {exc}") from None

    def write(self, alert: Alert) -> None:
        self.publisher.publish(alert)

    def flush(self) -> None:
        """Nothing to do: the publisher sends on its own thread, and the detect loop must not
        wait for the hub's acks."""

    def close(self) -> None:
        lost = self.publisher.close(timeout=10.0)
        if lost:
            log.warning("%s: %d alert(s) not acknowledged by a hub at exit", self.name, lost)
