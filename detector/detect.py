"""The detect loop: kernel events in, alerts out.

    reader thread:  source.poll() -> batches of Records -> bounded queue (full: counted, dropped)
    main thread:    queue -> tracker.apply(record) -> engine.process(view) -> sinks

The queue decouples the reader, which must keep the kernel's ring buffer drained, from rule
evaluation, which can fall behind in a burst. A live source never waits for the engine: when
the queue is full a batch is dropped and counted (``userspace_drops``). A finite source (a
recording) waits instead, so a replay is complete.

Drops are counted in both places: the kernel's (the source's ring buffer was full) and ours.
Once per second, if more than ``drop_threshold`` of the events produced in that second were
lost, an internal alert says so, at most once per ``drop_alert_interval`` (Falco's
syscall_event_drops, with our wording).

Sources (``detector.sources.opener``) are anything with ``poll(timeout)`` and ``close()``.

Events of other sources (the Kubernetes audit webhook, ``detector.sources.k8saudit``) come in
through ``submit()``, from the webhook's threads, into the same queue: the main thread evaluates
them with the same engine and writes their alerts to the same sinks. They are engine mappings
already, so the state tracker does not see them. A full queue refuses them instead of dropping
them: the webhook answers 429 and the API server sends them again.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from detector.engine.engine import Engine
from detector.engine.fielddefs_event import clock
from detector.publish import Sink
from detector.sources.opener import Source
from detector.sources.record import Record
from detector.state.tracker import Tracker
from sidekick.alert import Alert, Priority

log = logging.getLogger("lanner.detect")

DROP_RULE = "Lanner internal: syscall events dropped"
INTERNAL_SOURCE = "internal"
# Submitted events wait only behind this many: a sender that is refused sends again (the API
# server does), and a long queue of decoded JSON costs the garbage collector more than the
# rules (every full collection walks all of it).
SUBMIT_BACKLOG = 2048


def kernel_drops(source: Any) -> int:
    """Events the source's kernel side lost since it started."""
    drops = getattr(source, "drops", None)
    if callable(drops):
        return int(drops().total)
    stats = getattr(source, "stats", None)
    if callable(stats):
        return int(stats().get("proc_lost", 0))
    return 0


class EventBatch(list[Mapping[str, Any]]):
    """Events of a source that has no kernel records (k8s audit): engine mappings, evaluated
    as they are."""


class RecordQueue:
    """Bounded by records (not batches); ``put`` never blocks a live source."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._batches: deque[list[Record]] = deque()
        self._size = 0
        self._cond = threading.Condition()
        self._closed = False

    def put(self, batch: list[Record], *, wait: bool) -> bool:
        """Queue a batch; False if it was dropped because the queue is full (or closed)."""
        with self._cond:
            while wait and not self._closed and self._size + len(batch) > self.capacity \
                    and self._size:
                self._cond.wait()
            if self._closed or (self._size and self._size + len(batch) > self.capacity):
                return False
            self._batches.append(batch)
            self._size += len(batch)
            self._cond.notify_all()
            return True

    def get(self, timeout: float) -> list[Record] | None:
        """The oldest batch; None after ``timeout`` with nothing, or once closed and empty."""
        with self._cond:
            if not self._batches and not self._closed:
                self._cond.wait(timeout)
            if not self._batches:
                return None
            batch = self._batches.popleft()
            self._size -= len(batch)
            self._cond.notify_all()
            return batch

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    @property
    def closed(self) -> bool:
        return self._closed

    def __len__(self) -> int:
        return self._size


@dataclass
class Metrics:
    """Counters since start. received == processed + userspace_drops + queued (+ errors
    among processed); kernel_drops never reached us."""

    received: int = 0  # records the reader got from the source
    processed: int = 0  # records applied and evaluated
    userspace_drops: int = 0  # records dropped because the queue was full
    kernel_drops: int = 0  # the source's own count
    alerts: int = 0  # rule alerts (internal ones not included)
    drop_alerts: int = 0
    errors: int = 0  # records the tracker or engine failed on

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass
class AuditCounts:
    """Events submitted by the k8s audit webhook (not in Metrics: they are no records). Their
    alerts and errors count in Metrics.alerts and Metrics.errors."""

    audit_events: int = 0  # queued for the rules
    audit_refused: int = 0  # refused because the queue was full (the API server resends)

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


class Detector:
    """One run of the loop. ``run()`` returns when the source is exhausted or ``stop()``."""

    def __init__(self, engine: Engine, tracker: Tracker, source: Source, sinks: Sequence[Sink],
                 *, queue_records: int = 16384, live: bool = True, drop_threshold: float = 0.1,
                 drop_alert_interval: float = 30.0, purge_interval: float = 60.0,
                 clock_s: Callable[[], float] = time.monotonic) -> None:
        self.engine = engine
        self.tracker = tracker
        self.source = source
        self.sinks = list(sinks)
        self.queue = RecordQueue(queue_records)
        self.live = live
        self.drop_threshold = drop_threshold
        self.drop_alert_interval = drop_alert_interval
        self.purge_interval = purge_interval
        self.metrics = Metrics()
        self.audit = AuditCounts()
        self._now = clock_s
        self._stop = threading.Event()
        self._window = (self._now(), 0, 0, 0)  # start, received, kernel, userspace drops
        self._last_drop_alert = float("-inf")
        self._last_purge = self._now()
        self._reader: threading.Thread | None = None
        self._reader_error: BaseException | None = None
        self._submitted = threading.Lock()
        self._next_engine: Engine | None = None
        self._engine_swap = threading.Lock()
        # Per record kind, whether the engine has rules for it: most closes, say, only keep
        # the state right, and asking the engine about them costs a third of their time.
        self._tested: dict[str, bool] = {}

    def submit(self, events: list[Mapping[str, Any]]) -> bool:
        """Queue events of another source for the main thread (any thread may call it).
        False when the queue is full or closed, or already holds SUBMIT_BACKLOG events: the
        caller refuses them, so that the sender retries rather than loses them."""
        queued = self.has_room() and self.queue.put(EventBatch(events), wait=False)
        with self._submitted:
            if queued:
                self.audit.audit_events += len(events)
            else:
                self.audit.audit_refused += len(events)
        return queued

    def has_room(self) -> bool:
        """Whether submit() would find room in the queue now (it may not, a moment later)."""
        return len(self.queue) < min(self.queue.capacity, SUBMIT_BACKLOG)

    def replace_engine(self, engine: Engine) -> None:
        """Evaluate events with these rules from the next batch on (any thread may call it)."""
        with self._engine_swap:
            self._next_engine = engine

    def stop(self) -> None:
        """Stop reading; what was read is still processed, then run() returns. (The reader
        closes the queue once it has stopped, so nothing read is dropped for stopping.)"""
        self._stop.set()

    def run(self) -> Metrics:
        self._reader = threading.Thread(target=self._read, name="lanner-reader", daemon=True)
        self._reader.start()
        try:
            while True:
                batch = self.queue.get(0.2)
                if self._next_engine is not None:
                    with self._engine_swap:
                        self.engine, self._next_engine = self._next_engine, None
                    self._tested = {}
                if batch is not None:
                    self._process(batch)
                elif self.queue.closed:
                    break
                self._check_drops()
                self._purge()
        finally:
            self._stop.set()
            self.queue.close()
            self._reader.join(timeout=5)
            self._check_drops(final=True)
            for sink in self.sinks:
                sink.flush()
        if self._reader_error is not None:
            raise RuntimeError(f"the event source failed: {self._reader_error}") \
                from self._reader_error
        return self.metrics

    # ---- reader thread -------------------------------------------------------------------

    def _read(self) -> None:
        m = self.metrics
        # A live source must be drained or it loses events, unless what is not read yet waits
        # in a kernel buffer of its own (eBPF's ring): then a full queue just stops the reading,
        # and the backlog stays in the ring as compact bytes, not as decoded objects here.
        wait = not self.live or getattr(self.source, "backlog_in_kernel", False)
        sampled = self._now()
        try:
            while not self._stop.is_set():
                batch = self.source.poll(0.1)
                if batch is None:
                    break
                if batch:
                    m.received += len(batch)
                    if not self.queue.put(batch, wait=wait):
                        m.userspace_drops += len(batch)
                if self._now() - sampled >= 0.25:
                    sampled = self._now()
                    m.kernel_drops = kernel_drops(self.source)
            m.kernel_drops = kernel_drops(self.source)
        except BaseException as exc:  # reported by run() in the main thread
            self._reader_error = exc
        finally:
            self.queue.close()

    # ---- main thread ---------------------------------------------------------------------

    def _process(self, batch: list[Record]) -> None:
        if isinstance(batch, EventBatch):
            self._process_events(batch)
            return
        apply, process, m = self.tracker.apply, self.engine.process, self.metrics
        tested = self._tested
        for record in batch:
            try:
                view = apply(record)
                wanted = tested.get(record.kind)
                if wanted is None:
                    wanted = tested[record.kind] = self.engine.tests_syscall(record.kind)
                if not wanted:
                    continue
                alerts = process(view)
            except Exception:
                m.errors += 1
                if m.errors == 1 or m.errors % 10000 == 0:
                    log.exception("event %s of pid %d could not be processed (%d so far)",
                                  record.kind, record.pid, m.errors)
                continue
            for alert in alerts:
                self._emit(alert)
                m.alerts += 1
        m.processed += len(batch)
        for sink in self.sinks:
            sink.flush()

    def _process_events(self, batch: EventBatch) -> None:
        process, m = self.engine.process, self.metrics
        for event in batch:
            try:
                alerts = process(event)
            except Exception:
                m.errors += 1
                if m.errors == 1 or m.errors % 10000 == 0:
                    log.exception("a %s event could not be processed (%d so far)",
                                  event.get("evt.source"), m.errors)
                continue
            for alert in alerts:
                self._emit(alert)
                m.alerts += 1
        for sink in self.sinks:
            sink.flush()

    def _emit(self, alert: Alert) -> None:
        for sink in self.sinks:
            try:
                sink.write(alert)
            except OSError as exc:  # a full disk must not stop detection for the other sinks
                log.error("cannot write an alert to %s: %s", sink.name, exc)

    def _purge(self) -> None:
        """Processes whose exit was lost (dropped events) would stay forever: every so often
        those /proc no longer has are removed."""
        now = self._now()
        if now - self._last_purge >= self.purge_interval:
            self._last_purge = now
            gone = self.tracker.table.purge()
            if gone:
                log.info("removed %d processes that exited unseen", gone)

    def _check_drops(self, final: bool = False) -> None:
        now = self._now()
        start, received, kernel, user = self._window
        if now - start < 1.0 and not final:
            return
        m = self.metrics
        self._window = (now, m.received, m.kernel_drops, m.userspace_drops)
        lost_kernel, lost_user = m.kernel_drops - kernel, m.userspace_drops - user
        produced = m.received - received + lost_kernel
        dropped = lost_kernel + lost_user
        if not produced or dropped / produced <= self.drop_threshold:
            return
        if now - self._last_drop_alert < self.drop_alert_interval:
            return
        self._last_drop_alert = now
        m.drop_alerts += 1
        self._emit(self._drop_alert(dropped, produced, lost_kernel, lost_user))

    def _drop_alert(self, dropped: int, produced: int, kernel: int, user: int) -> Alert:
        now = time.time_ns()
        share = 100.0 * dropped / produced
        message = (f"{DROP_RULE}: {dropped} of {produced} events ({share:.1f}%) lost in the "
                   f"last second (kernel ring buffer {kernel}, detector queue {user}); rules "
                   "did not see them")
        log.warning(message)
        priority = Priority.WARNING
        return Alert(
            rule=DROP_RULE, priority=priority, time_ns=now, source=INTERNAL_SOURCE, tags=[],
            output=f"{clock(now)}: {priority.label} {message}",
            output_fields={"n_drops": dropped, "n_drops_kernel": kernel,
                           "n_drops_userspace": user, "n_evts": produced,
                           "drop_pct": round(share, 2)},
            hostname=self.engine.hostname,
        )


def serve_metrics(address: str, detector: Detector) -> Any:
    """Prometheus metrics on ``HOST:PORT``, read from the counters at scrape time. Returns
    the HTTP server (``shutdown()`` stops it)."""
    from prometheus_client import CollectorRegistry, start_http_server
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
    from prometheus_client.registry import Collector as BaseCollector

    class Collector(BaseCollector):
        def collect(self) -> Iterator[Any]:
            m = detector.metrics
            for name, value, text in (
                ("events_received", m.received, "Events read from the source."),
                ("events_processed", m.processed, "Events evaluated by the rules."),
                ("userspace_drops", m.userspace_drops,
                 "Events dropped because the detector's queue was full."),
                ("kernel_drops", m.kernel_drops,
                 "Events the kernel could not queue (ring buffer full)."),
                ("alerts", m.alerts, "Rule alerts."),
                ("drop_alerts", m.drop_alerts, "Internal alerts about dropped events."),
                ("event_errors", m.errors, "Events the detector failed to process."),
                ("k8s_audit_events", detector.audit.audit_events,
                 "Kubernetes audit events the webhook queued for the rules."),
                ("k8s_audit_refused", detector.audit.audit_refused,
                 "Kubernetes audit events refused (queue full; the API server resends them)."),
                ("proc_lookups", detector.tracker.table.lookups,
                 "Processes read from /proc on a table miss."),
                ("fd_lookups", detector.tracker.fd_lookups,
                 "File descriptors read from /proc because no event had shown them."),
                ("container_metadata_fetched", detector.tracker.containers.fetched,
                 "Containers a runtime described."),
                ("container_metadata_failed", detector.tracker.containers.failed,
                 "Container lookups no runtime answered (retried later)."),
            ):
                yield CounterMetricFamily(f"lanner_detector_{name}", text, value=value)
            yield GaugeMetricFamily("lanner_detector_queue_events", "Events waiting.",
                                    value=len(detector.queue))
            yield GaugeMetricFamily("lanner_detector_processes", "Processes in the table.",
                                    value=len(detector.tracker.table.procs))

    host, _, port = address.rpartition(":")
    registry = CollectorRegistry(auto_describe=True)
    registry.register(Collector())
    server, _ = start_http_server(int(port), addr=host or "127.0.0.1", registry=registry)
    return server
