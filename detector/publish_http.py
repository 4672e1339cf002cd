"""``--output http://HOST:PORT/PATH`` (or https): alerts POSTed one by one, as Falco's
``http_output`` posts them, to a Falcosidekick or the hub's HTTP ingest.

Each request's body is the alert's JSON (``Alert.to_json``: Falco's keys plus ``uuid``), with
``Content-Type: application/json`` and ``User-Agent: lanner/<version>``. The uuid is set before
the first attempt, so a request retried after a lost answer is recognised by the hub (and by
Falcosidekick, which keeps a sender's uuid) rather than stored twice.

Alerts wait in the publisher's ``AlertBuffer`` (bounded; beyond it dropped, counted, and
reported by one alert once the endpoint accepts again). One thread sends them in order over a
kept-alive connection: 2xx is delivered; 400, 413 and 422 refuse that alert (counted as
rejected, never resent); anything else, or no answer, is retried with backoff and jitter (never
sooner than a ``Retry-After`` in seconds), so a wrong path or token loses nothing until the
buffer is full. ``userinfo@`` in the URL becomes Basic authentication, as curl (Falco's client)
does; it and the query string never appear in logs.
"""

from __future__ import annotations

import base64
import collections
import http.client
import importlib.metadata
import logging
import random
import socket
import ssl
import threading
import time
import urllib.parse

from detector.publish import SinkError
from detector.publish_buffer import AlertBuffer
from sidekick.alert import Alert

log = logging.getLogger("lanner.publish")

# The alert itself is at fault: sending it again cannot help.
_REFUSED = frozenset({400, 413, 422})
_MAX_RETRY_AFTER = 60.0


def _version() -> str:
    try:
        return importlib.metadata.version("lanner")
    except importlib.metadata.PackageNotFoundError:  # run from a checkout never installed
        return "unknown"


class HttpSink:
    """A detector sink (``detector.publish.Sink``); ``stats()`` counts as ``AlertBuffer``."""

    def __init__(
        self, url: str, *, buffer_limit: int = 100_000, timeout: float = 10.0,
        initial_backoff: float = 0.1, max_backoff: float = 5.0, report_interval: float = 10.0,
        hostname: str | None = None,
    ) -> None:
        parts = urllib.parse.urlsplit(url)
        try:
            port = parts.port
        except ValueError:  # not a number, or out of range
            raise SinkError(_unusable(parts)) from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise SinkError(_unusable(parts))
        self.name = f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}{parts.path or '/'}"
        self._https = parts.scheme == "https"
        self._host, self._port = parts.hostname, port
        self._path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self._headers = {"Content-Type": "application/json",
                         "User-Agent": f"lanner/{_version()}"}
        if parts.username is not None:
            user = urllib.parse.unquote(parts.username)
            secret = urllib.parse.unquote(parts.password or "")
            token = base64.b64encode(f"{user}:{secret}".encode()).decode()
            self._headers["Authorization"] = f"Basic {token}"
        self._timeout = timeout
        self._initial_backoff, self._max_backoff = initial_backoff, max_backoff
        self._report_interval = report_interval
        self._next_report = 0.0
        self._conn: http.client.HTTPConnection | None = None
        self._logged: str | None = None  # the last failure logged
        self._refusals: set[int] = set()  # statuses already logged as refusals
        self._data = threading.Event()
        self._stopping = threading.Event()
        self._buffer = AlertBuffer(buffer_limit, None, 0, hostname or socket.gethostname(),
                                   self._data.set)
        self._current: collections.deque[Alert] = collections.deque()  # taken, not answered
        self._thread = threading.Thread(target=self._run, name="lanner-http", daemon=True)
        self._thread.start()

    # -- the detect loop's side -------------------------------------------------------------

    def write(self, alert: Alert) -> None:
        alert.ensure_uuid()
        self._buffer.add(alert)

    def flush(self) -> None:
        """Nothing to do: the detect loop must not wait for the endpoint."""

    def drain(self, timeout: float) -> bool:
        """Wait until everything written so far was answered (drop reports included)."""
        return self._buffer.wait_idle(timeout)

    def close(self, timeout: float = 10.0) -> int:
        """Deliver for up to ``timeout``, then stop; returns how many alerts were lost."""
        if self._stopping.is_set():
            return 0
        self.drain(timeout)
        self._stopping.set()
        self._data.set()
        self._thread.join()
        lost = self._buffer.close([list(self._current)])
        if lost:
            log.warning("%s: %d alert(s) not delivered at exit", self.name, lost)
        return lost

    def stats(self) -> dict[str, int]:
        return self._buffer.counts()

    # -- the sending thread -----------------------------------------------------------------

    def _run(self) -> None:
        try:
            while True:
                self._data.clear()  # before looking: a wake-up after this is not missed
                taken = self._buffer.take(100, linger_over=True)  # sent one by one anyway
                if taken is None:
                    if self._stopping.is_set():
                        return
                    self._data.wait()
                    continue
                self._current.extend(taken[0])
                while self._current:
                    if not self._deliver(self._current[0]):
                        return
                    self._current.popleft()
        finally:
            self._drop_connection()

    def _deliver(self, alert: Alert) -> bool:
        """Send one alert until it is answered for good; False if stopped meanwhile."""
        try:
            body = alert.to_json()
        except TypeError as exc:  # output_fields that JSON cannot hold
            self._refused(alert, 0, f"not encodable: {exc}")
            return True
        backoff = self._initial_backoff
        while not self._stopping.is_set():
            try:
                status, retry_after, text = self._post(body)
            except (OSError, http.client.HTTPException) as exc:
                why = "no answer" if isinstance(exc, TimeoutError) else \
                    f"{type(exc).__name__}: {exc}"
                status, retry_after = 0, None
            else:
                if 200 <= status < 300:
                    self._buffer.acknowledge(1, 0, 0, 0)
                    self._delivered()
                    return True
                if status in _REFUSED:
                    self._refused(alert, status, text)
                    return True
                why = f"HTTP {status}" + (f": {text}" if text else "")
            self._failed(why)
            delay = random.uniform(backoff / 2, backoff)
            if retry_after is not None:
                delay = max(delay, retry_after)
            backoff = min(backoff * 2, self._max_backoff)
            self._stopping.wait(delay)
        return False

    def _post(self, body: bytes) -> tuple[int, float | None, str]:
        """One POST: status, Retry-After seconds, the start of the answer's body."""
        reused = self._conn is not None
        try:
            return self._exchange(body)
        except ConnectionError:
            if not reused:
                raise
        # The endpoint had closed our idle kept-alive connection: once more, on a new one.
        return self._exchange(body)

    def _exchange(self, body: bytes) -> tuple[int, float | None, str]:
        if self._conn is None:
            self._conn = self._connect()
        try:
            self._conn.request("POST", self._path, body, self._headers)
            reply = self._conn.getresponse()
            text = reply.read(300).decode("utf-8", "replace").strip()
            reply.read()  # the rest, so that the connection can be used again
        except (OSError, http.client.HTTPException):
            self._drop_connection()
            raise
        if reply.will_close:
            self._drop_connection()
        return reply.status, _seconds(reply.getheader("Retry-After")), text

    def _connect(self) -> http.client.HTTPConnection:
        if self._https:
            return http.client.HTTPSConnection(self._host, self._port, timeout=self._timeout,
                                               context=ssl.create_default_context())
        return http.client.HTTPConnection(self._host, self._port, timeout=self._timeout)

    def _drop_connection(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _delivered(self) -> None:
        if self._logged is not None:
            log.info("%s accepts alerts again", self.name)
            self._logged = None
        now = time.monotonic()
        if now >= self._next_report:
            count = self._buffer.report_drops()
            if count:
                self._next_report = now + self._report_interval
                log.warning("%s: %d alerts were dropped while the buffer was full; reported",
                            self.name, count)

    def _refused(self, alert: Alert, status: int, why: str) -> None:
        self._buffer.reject(1)
        if status not in self._refusals:  # a detector bug repeats on every alert of a rule
            self._refusals.add(status)
            log.error("%s refused an alert of rule %r (%s): not resent; further refusals "
                      "like it are only counted", self.name, alert.rule,
                      f"HTTP {status}: {why}" if status else why)

    def _failed(self, why: str) -> None:
        """Logged when the reason changes, not at every retry."""
        if why != self._logged:
            self._logged = why
            log.warning("%s: %s; retrying, alerts kept in the buffer", self.name, why)


def _unusable(parts: urllib.parse.SplitResult) -> str:
    """The message for a URL that cannot be used, without its credentials or query."""
    shown = f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}{parts.path}"
    return (f"--output {shown}: not a usable URL; expected http(s)://HOST[:PORT]/PATH, "
            "e.g. http://falcosidekick:2801/")


def _seconds(value: str | None) -> float | None:
    """Retry-After in seconds (its HTTP-date form is ignored), capped."""
    if value is None or not value.strip().isdigit():
        return None
    return min(float(value), _MAX_RETRY_AFTER)
