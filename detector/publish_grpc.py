"""Publish alerts to the hub over gRPC (``lanner.v1.Hub/Publish``), losing none it can keep.

    publisher = GrpcPublisher(["hub-0:5060", "hub-1:5060"], token=..., spill_path=...)
    publisher.publish(alert)          # from the detect loop: never blocks on the network
    publisher.close(timeout=10)

Threading: the gRPC client runs on its own asyncio loop in a daemon thread. ``publish`` only
appends to a deque under a lock (or, when memory is full, writes one line to the spill file)
and wakes that loop when it waits for alerts. asyncio rather than a synchronous channel: a
Publish stream needs a writer and an ack reader at once, plus linger, ack-deadline and backoff
timers, and cancelling a blocked synchronous stream from another thread is awkward.

Delivery: alerts go out in batches (``batch_size``, or whatever arrived within ``linger``), at
most ``window`` batches unacknowledged. A batch stays in memory until its ack; after any failure
the publisher reconnects (round-robin over the targets, names re-resolved every time, backoff
with jitter once all failed) and first resends every unacknowledged batch, in order. Every alert
gets its uuid before it is queued, so the hub recognises a resent one and acks it as a duplicate.

Bounds and loss: see detector.publish_buffer (memory, spill file, counted and reported drops).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import random
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from detector.publish_buffer import DROPPED_RULE, INTERNAL_SOURCE, AlertBuffer
from detector.publish_hubs import Hubs, PublisherTls, Target
from sidekick.alert import Alert
from sidekick.proto import lanner_pb2, lanner_pb2_grpc
from sidekick.proto.convert import alert_to_proto

__all__ = [
    "DROPPED_RULE", "INTERNAL_SOURCE", "GrpcPublisher", "PublisherStats", "PublisherTls",
]

log = logging.getLogger("lanner.publish")

_HUB_SERVICE = lanner_pb2.DESCRIPTOR.services_by_name["Hub"].full_name


@dataclass(frozen=True, slots=True)
class PublisherStats:
    """Counts since the publisher started. At every moment,
    published + internal + recovered == acked + rejected + buffered + spill_backlog + dropped.
    """

    published: int  # alerts given to publish()
    internal: int  # "alerts dropped" reports the publisher made itself
    recovered: int  # lines found waiting in the spill file at start
    acked: int  # acknowledged by a hub (duplicates included)
    duplicates: int  # of those, already known to the hub (a resend of an earlier batch)
    rejected: int  # refused as invalid (by the hub, or not encodable); never resent
    buffered: int  # in memory, not yet acknowledged
    in_flight: int  # of those, sent and awaiting the hub's ack
    spilled: int  # written to the spill file (in total)
    spill_backlog: int  # in the spill file, not yet read back
    dropped: int  # lost: buffer (and spill file) full, an unreadable spill line, or close()
    reconnects: int  # streams that got acks, after the first one (so: recoveries, failovers)
    target: str | None  # the hub currently streamed to
    last_error: str | None  # why the last connection attempt or stream failed


class _Batch:
    __slots__ = ("alerts", "batch_id", "count", "request", "sent_at", "spill_end")

    def __init__(
        self, batch_id: int, pbs: list[lanner_pb2.Alert], alerts: list[Alert] | None,
        spill_end: int,
    ) -> None:
        self.batch_id = batch_id
        self.request = lanner_pb2.PublishRequest(batch_id=batch_id, alerts=pbs)
        self.count = len(pbs)
        self.alerts = alerts  # for close() to keep; None when read from the spill file
        self.spill_end = spill_end  # spill file offset acknowledged with this batch (0: none)
        self.sent_at = 0.0


class _SessionError(Exception):
    """A stream is no longer usable (our own diagnosis, not a gRPC status)."""


class GrpcPublisher:
    """See the module docstring. Thread-safe.

    ``targets``: "host:port" entries (a list, or one string, comma-separated); a name may
    resolve to several replicas. ``on_overflow(alert)`` is called, in the publishing thread,
    for each alert dropped because the buffer (and spill file) was full.
    """

    def __init__(
        self,
        targets: Sequence[str] | str,
        *,
        tls: PublisherTls | None = None,
        token: str | None = None,
        batch_size: int = 500,
        linger: float = 0.05,
        window: int = 4,
        buffer_limit: int = 100_000,
        spill_path: str | Path | None = None,
        spill_limit: int = 1_000_000,
        on_overflow: Callable[[Alert], None] | None = None,
        hostname: str | None = None,
        connect_timeout: float = 5.0,
        ack_timeout: float = 30.0,
        initial_backoff: float = 0.1,
        max_backoff: float = 5.0,
        report_interval: float = 10.0,
    ) -> None:
        self._hubs = Hubs(targets, tls)
        if min(batch_size, window, buffer_limit, spill_limit) < 1:
            raise ValueError("batch_size, window, buffer_limit and spill_limit must be >= 1")
        self._token = token or None
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self._batch_size, self._linger, self._window = batch_size, linger, window
        self._on_overflow = on_overflow
        self._connect_timeout, self._ack_timeout = connect_timeout, ack_timeout
        self._initial_backoff, self._max_backoff = initial_backoff, max_backoff
        self._report_interval = report_interval

        self._buffer = AlertBuffer(  # opens the spill file: may raise ValueError
            buffer_limit, spill_path, spill_limit,
            hostname if hostname is not None else socket.gethostname(), self._wake,
        )
        self._loop = asyncio.new_event_loop()
        self._data = asyncio.Event()  # alerts arrived, or a flush wants no linger
        self._ack_event = asyncio.Event()
        # Written by the loop's thread only; read by stats() as plain attributes.
        self._reconnects = self._in_flight = 0
        self._streams = 0  # streams that got an ack
        self._target: str | None = None
        self._last_error: str | None = None
        # The loop's thread only.
        self._unacked: collections.deque[_Batch] = collections.deque()
        self._batch_seq = 0
        self._cursor = 0
        self._session_acked = False
        self._draining = False  # the hub is going away: send nothing new on this stream
        self._next_report = 0.0
        self._logged: dict[str, str] = {}  # target -> last error logged for it
        self._rejection_fields: set[str] = set()

        self._closed = False
        self._main = self._loop.create_task(self._run())
        self._thread = threading.Thread(target=self._serve, name="lanner-publisher", daemon=True)
        self._thread.start()

    # -- the caller's side ------------------------------------------------------------------

    def publish(self, alert: Alert) -> None:
        """Queue one alert, giving it a uuid if it has none. Raises only after close()."""
        alert.ensure_uuid()
        if not self._buffer.add(alert) and self._on_overflow is not None:
            try:
                self._on_overflow(alert)
            except Exception:
                log.exception("on_overflow callback failed")

    def flush(self, timeout: float) -> bool:
        """Wait until the hub acknowledged everything published so far (drop reports too)."""
        return self._buffer.wait_idle(timeout)

    def close(self, timeout: float = 10.0) -> int:
        """Flush for up to ``timeout``, then stop. Returns how many alerts were not delivered.

        With a spill file they stay there (with a report of unreported drops) for the next
        publisher on that file; without one they are lost, counted in ``dropped`` and logged.
        """
        if self._closed:
            return 0
        self._closed = True
        self.flush(timeout)
        with contextlib.suppress(RuntimeError):  # the loop already ended
            self._loop.call_soon_threadsafe(self._main.cancel)
        self._thread.join()
        self._in_flight = 0
        return self._buffer.close(batch.alerts for batch in self._unacked)

    def __enter__(self) -> GrpcPublisher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def stats(self) -> PublisherStats:
        return PublisherStats(
            **self._buffer.counts(), in_flight=self._in_flight, reconnects=self._reconnects,
            target=self._target, last_error=self._last_error,
        )

    def _wake(self) -> None:
        """From any thread: the loop has alerts to look at."""
        with contextlib.suppress(RuntimeError):  # the loop is closed: nothing to wake
            self._loop.call_soon_threadsafe(self._data.set)

    # -- the loop's side --------------------------------------------------------------------

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._main)
        except asyncio.CancelledError:
            pass
        finally:
            self._loop.run_until_complete(self._loop.shutdown_asyncgens())
            self._loop.close()

    async def _run(self) -> None:
        failures = 0
        backoff = self._initial_backoff
        while True:
            targets = await self._hubs.resolve(self._failed)
            if targets:
                target = targets[self._cursor % len(targets)]
                self._cursor += 1
                if await self._session(target):
                    failures, backoff = 0, self._initial_backoff
                    continue  # it worked: try the next target at once
            failures += 1
            if failures >= len(targets):  # every target failed once since the last success
                failures = 0
                await asyncio.sleep(random.uniform(backoff / 2, backoff))
                backoff = min(backoff * 2, self._max_backoff)

    async def _session(self, target: Target) -> bool:
        """Stream to one hub until something fails; returns whether it acknowledged anything."""
        self._session_acked = self._draining = False
        channel = self._hubs.channel(target)
        call = None
        tasks: list[asyncio.Task[None]] = []
        try:
            await self._check_health(channel)
            call = lanner_pb2_grpc.HubStub(channel).Publish(metadata=self._metadata)
            self._target = target.label
            reader = asyncio.create_task(self._read(call))
            tasks = [reader, asyncio.create_task(self._write(call)),
                     asyncio.create_task(self._watch()), asyncio.create_task(self._follow(channel))]
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            # The reader sees the call's status; a writer failing on a dead call says less.
            failed = reader if reader in done else done.pop()
            failed.result()
            raise _SessionError("stopped")  # unreachable: the tasks end only by raising
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._failed(target.label, self._describe(exc), exc)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if call is not None:
                call.cancel()
            await channel.close()
            self._target = None
        return self._session_acked

    async def _check_health(self, channel: grpc.aio.Channel) -> None:
        """Fails fast on a refused connection, within connect_timeout on a silent one."""
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = await stub.Check(
                health_pb2.HealthCheckRequest(service=_HUB_SERVICE), timeout=self._connect_timeout
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.UNIMPLEMENTED:
                return  # no health service: the Publish call will tell
            raise
        if reply.status != health_pb2.HealthCheckResponse.SERVING:
            status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
            raise _SessionError(f"the hub is not serving ({status})")

    async def _write(self, call: grpc.aio.StreamStreamCall) -> None:
        for batch in list(self._unacked):  # a new stream first resends what is unacknowledged
            batch.sent_at = time.monotonic()
            await call.write(batch.request)
        while True:
            while len(self._unacked) >= self._window or self._draining:
                self._ack_event.clear()
                await self._ack_event.wait()
            batch = await self._next_batch()
            if batch is None:
                continue  # draining
            batch.sent_at = time.monotonic()
            self._unacked.append(batch)  # before the write: a batch is never out of sight
            self._in_flight += batch.count
            await call.write(batch.request)

    async def _read(self, call: grpc.aio.StreamStreamCall) -> None:
        while True:
            ack = await call.read()
            if ack is grpc.aio.EOF:
                raise _SessionError("the hub ended the stream")
            self._on_ack(ack)

    async def _watch(self) -> None:
        """The hub's health while streaming: acks must keep coming. Also reports drops."""
        while True:
            await asyncio.sleep(min(1.0, self._ack_timeout / 4))
            if self._unacked:
                waited = time.monotonic() - self._unacked[0].sent_at
                if waited > self._ack_timeout:
                    raise _SessionError(f"no ack for {waited:.0f}s")
            self._maybe_report_drops()

    async def _follow(self, channel: grpc.aio.Channel) -> None:
        """A hub shutting down (a rolling update) says so with GOAWAY, then waits a grace
        period for open calls. Stop sending, take the acks still due, and leave at once, to
        another replica, instead of holding it up and resending what it had accepted."""
        await channel.wait_for_state_change(grpc.ChannelConnectivity.READY)
        self._draining = True
        self._data.set()
        while self._unacked:
            self._ack_event.clear()
            await self._ack_event.wait()
        raise _SessionError("the hub is going away")

    async def _next_batch(self) -> _Batch | None:
        """Wait for alerts: a full batch, or a partial one after ``linger`` (none if flushing).
        None once the session is draining."""
        linger_until = None
        while not self._draining:
            # Cleared before looking: a wake-up from publish() runs on this loop, so it comes
            # after this line, however the threads interleave.
            self._data.clear()
            now = time.monotonic()
            if linger_until is None and self._buffer.queued:
                linger_until = now + self._linger
            taken = self._buffer.take(
                self._batch_size, linger_until is not None and now >= linger_until
            )
            if taken is not None:
                return self._make_batch(*taken)
            timeout = None if linger_until is None else max(0.0, linger_until - now)
            # asyncio.timeout, not wait_for: on 3.11, wait_for swallows a cancellation that
            # coincides with the event being set, and the session could never be torn down.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._data.wait()
        return None

    def _make_batch(self, alerts: list[Alert], spill_end: int | None) -> _Batch:
        """``spill_end``: the spill file offset after the alerts, if they were read from it."""
        pbs, kept = [], []
        for alert in alerts:
            try:
                pbs.append(alert_to_proto(alert))
            except TypeError as exc:  # output_fields that JSON cannot hold
                self._log_rejection("output_fields", f"not encodable: {exc}", alert.rule)
                continue
            kept.append(alert)
        if len(kept) != len(alerts):
            self._buffer.reject(len(alerts) - len(kept))
        self._batch_seq += 1
        if spill_end is not None:
            return _Batch(self._batch_seq, pbs, None, spill_end)
        return _Batch(self._batch_seq, pbs, kept, 0)

    def _on_ack(self, ack: lanner_pb2.PublishAck) -> None:
        if not self._unacked or ack.batch_id != self._unacked[0].batch_id:
            expected = self._unacked[0].batch_id if self._unacked else None
            raise _SessionError(f"ack for batch {ack.batch_id}, expected {expected}")
        batch = self._unacked.popleft()
        self._in_flight -= batch.count
        for rejection in ack.rejected:
            index = rejection.index
            rule = batch.request.alerts[index].rule if index < batch.count else "?"
            self._log_rejection(rejection.field, rejection.message, rule)
        self._buffer.acknowledge(batch.count, len(ack.rejected), ack.duplicates, batch.spill_end)
        if not self._session_acked:
            self._reconnects += self._streams > 0
            self._streams += 1
            if self._logged:
                # Failures were logged: say that it works again, and log the next ones afresh.
                log.info("hub %s acknowledges again; publishing", self._target)
                self._logged.clear()
        self._session_acked = True
        self._ack_event.set()
        self._maybe_report_drops()

    def _log_rejection(self, field: str, message: str, rule: str) -> None:
        """Once per field: a detector bug repeats on every alert of a rule."""
        if field not in self._rejection_fields:
            self._rejection_fields.add(field)
            log.error("the hub refused an alert of rule %r as invalid: %s: %s (not resent; "
                      "further refusals for %s are only counted)", rule, field, message, field)

    def _maybe_report_drops(self) -> None:
        """Once a hub acks, report drops (at most once per interval, so a hub too slow for
        the detector gets a report every interval rather than one per batch)."""
        now = time.monotonic()
        if not self._session_acked or now < self._next_report:
            return
        count = self._buffer.report_drops()
        if count:
            self._next_report = now + self._report_interval
            log.warning("%d alerts were dropped while the buffer was full; reported to the hub",
                        count)

    def _describe(self, exc: Exception) -> str:
        if isinstance(exc, grpc.aio.AioRpcError):
            code = exc.code()
            if code == grpc.StatusCode.UNAUTHENTICATED:
                why = "wrong token" if self._token else "no token configured, the hub wants one"
                return f"authentication failed: the hub refused the publisher ({why})"
            if code == grpc.StatusCode.PERMISSION_DENIED:
                return f"permission denied by the hub: {exc.details()}"
            if code == grpc.StatusCode.DEADLINE_EXCEEDED:
                return f"no answer within {self._connect_timeout:g}s"
            return f"{code.name}: {exc.details()}"
        if isinstance(exc, _SessionError):
            return str(exc)
        return f"unexpected {type(exc).__name__}: {exc}"

    def _failed(self, label: str, message: str, exc: Exception | None = None) -> None:
        """Record why a target failed; log it when it changed (a down hub is retried often)."""
        if self._token:
            message = message.replace(self._token, "***")
        message = f"hub {label}: {message}"
        self._last_error = message
        if self._logged.get(label) == message:
            return
        self._logged[label] = message
        if "authentication failed" in message:
            log.error("%s; alerts are kept in the buffer", message)
        elif exc is not None and not isinstance(exc, grpc.aio.AioRpcError | _SessionError):
            log.warning("%s", message, exc_info=exc)
        else:
            log.warning("%s; retrying (other targets first, if any)", message)
