"""The Kubernetes audit webhook: the API server posts its audit events here, rules see them as
events of source ``k8s_audit``.

    webhook = AuditWebhook(WebhookConfig(port=9765), detector.submit, detector.has_room)
    webhook.start()          # serves POST /k8s-audit in background threads
    ...
    webhook.close()

It does what Falco's k8saudit plugin does with the API server's webhook backend: accepts an
``audit.k8s.io/v1`` EventList (what the API server sends), a single Event, or a JSON array of
either; takes each event's stageTimestamp as its time; refuses events over 256 KiB (as their
compact JSON) and bodies over 12 MiB. Unlike the plugin, which answers 200 before reading a
body, it parses the body first, so that a sender learns what was wrong:

    200  every event accepted                    {"accepted": N}
    400  not JSON, not audit events, or some events malformed (the others are accepted)
    401  a token is configured and the request does not carry it
    404  another path; 405 another method (GET /healthz answers 200)
    411  no Content-Length; 413 body or an event over its limit; 415 not application/json
    429  the detector's queue is full: nothing accepted, Retry-After: 1 (the API server retries
         429; it does not retry other 4xx, so an accepted part is never delivered twice)
    503  the detector is stopping, or too many connections

Error bodies are JSON: ``{"error": "...", "accepted": N, "rejected": [...]}``. A bad request
never stops the source. Event contents are attacker-controlled (any user of the cluster names
objects and commands): they are parsed as JSON and read as data, never interpreted, and only
cut-down ``repr``s of them appear in answers and logs.

Each event becomes the mapping the engine reads (``detector.engine.fielddefs_k8saudit``):
``{"evt.source": "k8s_audit", "evt.time": <stageTimestamp ns>, "ka.event": <the Event>}``.
"""

from __future__ import annotations

import contextlib
import hmac
import logging
import socket
import ssl
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

import orjson

from detector.engine.auditjson import rfc3339_ns
from detector.engine.fielddefs_k8saudit import EVENT_KEY, SOURCE

log = logging.getLogger("lanner.k8saudit")

DEFAULT_PORT = 9765
DEFAULT_PATH = "/k8s-audit"
MAX_EVENT_BYTES = 256 * 1024  # the plugin's maxEventSize
MAX_BODY_BYTES = 12 * 1024 * 1024  # its webhookMaxBatchSize: 1.2x the API server's 10 MiB batches
TOKEN_ENV = "LANNER_K8S_AUDIT_TOKEN"  # not a flag: a flag's value shows in `ps`
MAX_CONNECTIONS = 32  # each may hold a body of up to MAX_BODY_BYTES while it is parsed
IDLE_TIMEOUT = 30.0  # seconds a connection may stay silent (mid-request or between requests)
_MAX_NESTING = 8  # arrays of EventLists of arrays...: deeper is not something an API server sends
_SHOWN_ERRORS = 20

Deliver = Callable[[list[dict[str, Any]]], bool]  # False: refused (queue full or closed)


class WebhookError(Exception):
    """The webhook cannot start (address in use, unreadable certificate); says why."""


class PayloadError(ValueError):
    """The body as a whole is not audit events."""


@dataclass(frozen=True)
class WebhookConfig:
    host: str = "0.0.0.0"
    port: int = DEFAULT_PORT  # 0: any free port (see AuditWebhook.port)
    path: str = DEFAULT_PATH
    token: str | None = None  # Authorization: Bearer <token> required when set
    certfile: str | None = None  # HTTPS when set
    keyfile: str | None = None  # default: the key is in certfile, as the plugin's sslCertificate
    client_ca: str | None = None  # also require a client certificate signed by this CA
    max_event_bytes: int = MAX_EVENT_BYTES
    max_body_bytes: int = MAX_BODY_BYTES


@dataclass
class Parsed:
    events: list[dict[str, Any]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # one per rejected event, where and why
    too_large: bool = False  # some event was rejected for its size


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def parse_events(body: bytes, max_event_bytes: int = MAX_EVENT_BYTES) -> Parsed:
    """The audit events of a request body. Raises PayloadError when the body as a whole is not
    audit events; a malformed or oversized event is listed in ``errors``, the others kept."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise PayloadError(f"the body is not JSON: {exc}") from None
    parsed = Parsed()
    # An event is never longer than the body it came in (its compact JSON is not longer than
    # its text, but for numbers written shorter than JSON writes them back, e.g. 1e5): only
    # a larger body needs its events measured, which costs a JSON encoding each.
    limit = max_event_bytes if len(body) > max_event_bytes else None
    if isinstance(data, list):
        _walk_array(data, "", parsed, limit, 1)
    elif not isinstance(data, dict) or data.get("kind") not in ("Event", "EventList"):
        kind = data.get("kind") if isinstance(data, dict) else type(data).__name__
        raise PayloadError("not Kubernetes audit events: expected an audit.k8s.io/v1 EventList "
                           f"or Event (got kind {_shown(kind)})")
    else:
        _walk(data, "", parsed, limit, 1)
    return parsed


def _walk(item: Any, where: str, parsed: Parsed, limit: int | None, depth: int) -> None:
    if isinstance(item, list):
        _walk_array(item, where, parsed, limit, depth)
    elif isinstance(item, dict) and item.get("kind") == "EventList":
        if not _audit_version(item, where, parsed):
            return
        items = item.get("items")
        if not isinstance(items, list):
            parsed.errors.append(f"{where or 'body'}: EventList without an items array")
            return
        for i, event in enumerate(items):
            _event(event, f"{where}items[{i}]", parsed, limit)
    else:
        _event(item, where or "event", parsed, limit)


def _walk_array(items: list[Any], where: str, parsed: Parsed, limit: int | None,
                depth: int) -> None:
    if depth > _MAX_NESTING:
        parsed.errors.append(f"{where or 'body'}: arrays nested more than {_MAX_NESTING} deep")
        return
    for i, item in enumerate(items):
        _walk(item, f"{where}[{i}].", parsed, limit, depth + 1)


def _audit_version(item: dict[str, Any], where: str, parsed: Parsed) -> bool:
    version = item.get("apiVersion")
    if version is None or (isinstance(version, str) and version.startswith("audit.k8s.io/")):
        return True
    parsed.errors.append(f"{where.rstrip('.') or 'body'}: apiVersion {_shown(version)} is not "
                         "audit.k8s.io (a core v1 Event is not an audit event)")
    return False


def _event(item: Any, where: str, parsed: Parsed, limit: int | None) -> None:
    where = where.rstrip(".")
    if not isinstance(item, dict):
        parsed.errors.append(f"{where}: not a JSON object")
        return
    if item.get("kind", "Event") != "Event":
        parsed.errors.append(f"{where}: kind {_shown(item.get('kind'))} is not Event")
        return
    if not _audit_version(item, where, parsed):
        return
    stamp = item.get("stageTimestamp")
    time_ns = rfc3339_ns(stamp) if isinstance(stamp, str) else None
    if time_ns is None:
        parsed.errors.append(f"{where}: no valid stageTimestamp (RFC 3339), got {_shown(stamp)}")
        return
    if limit is not None:
        try:
            size = len(orjson.dumps(item))  # as the plugin measures it: its compact JSON
        except orjson.JSONEncodeError:
            parsed.errors.append(f"{where}: nested too deeply (over 254 levels)")
            return
        if size > limit:
            parsed.too_large = True
            parsed.errors.append(f"{where}: {size} bytes, over the {limit}-byte limit per "
                                 "event")
            return
    parsed.events.append({"evt.source": SOURCE, "evt.time": time_ns, EVENT_KEY: item})


class AuditWebhook:
    """The HTTP(S) server. ``deliver`` gets each request's events (in a server thread) and
    returns False to refuse them; ``has_room`` (optional) says beforehand whether it would take
    some, so that an overloaded detector does not spend its time parsing batches it must refuse.
    ``stats`` counts requests by answer and events accepted."""

    def __init__(self, config: WebhookConfig, deliver: Deliver,
                 has_room: Callable[[], bool] | None = None) -> None:
        self.config = config
        self.deliver = deliver
        self.has_room = has_room
        self.stats: Counter[str] = Counter()
        self._stats_lock = threading.Lock()
        self._closing = False
        context = _tls_context(config) if config.certfile else None
        try:
            self._server = _Server((config.host, config.port), self, context)
        except OSError as exc:
            raise WebhookError(f"cannot listen on {config.host}:{config.port}: "
                               f"{exc.strerror or exc}") from None
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.2},
                                        name="lanner-k8s-audit", daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        scheme = "https" if self.config.certfile else "http"
        host = self.config.host
        host = f"[{host}]" if ":" in host else host
        return f"{scheme}://{host}:{self.port}{self.config.path}"

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._closing = True
        if self._thread.is_alive():
            self._server.shutdown()
        self._server.server_close()

    def count(self, key: str, n: int = 1) -> None:
        with self._stats_lock:
            self.stats[key] += n

    # ---- one request (in a server thread) --------------------------------------------------

    def handle(self, req: _Handler) -> None:
        cfg = self.config
        path = urlsplit(req.path).path
        if req.command == "GET" and path == "/healthz":
            return self.reply(req, 200, {"status": "ok"})
        if path != cfg.path:
            return self.refuse(req, 404, f"not found: the audit webhook is {cfg.path}")
        if req.command != "POST":
            return self.refuse(req, 405, f"method {_shown(req.command)} not allowed: POST audit "
                                         "events", {"Allow": "POST"})
        if cfg.token is not None and not _authorized(req.headers.get("Authorization"),
                                                     cfg.token):
            return self.refuse(req, 401, "missing or wrong bearer token",
                               {"WWW-Authenticate": 'Bearer realm="k8s-audit"'})
        kind = req.headers.get("Content-Type", "")
        if "application/json" not in kind:
            return self.refuse(req, 415, "Content-Type must be application/json, not "
                                         f"{_shown(kind)}")
        if req.headers.get("Content-Encoding", "identity") not in ("", "identity"):
            return self.refuse(req, 415, "compressed bodies are not supported")
        length = _content_length(req)
        if length is None:
            return self.refuse(req, 411, "a Content-Length is required (chunked bodies are "
                                         "not supported)")
        if length < 0:
            return self.refuse(req, 400, "bad Content-Length")
        if length > cfg.max_body_bytes:
            return self.refuse(req, 413, f"body of {length} bytes is over the "
                                         f"{cfg.max_body_bytes}-byte limit")
        body = req.rfile.read(length)
        if len(body) < length:
            req.close_connection = True  # the client went away mid-body
            return None
        return self.accept(req, body)

    def accept(self, req: _Handler, body: bytes) -> None:
        if self.has_room is not None and not self.has_room():
            return self.busy(req)
        try:
            parsed = parse_events(body, self.config.max_event_bytes)
        except PayloadError as exc:
            return self.refuse(req, 400, str(exc), keep_alive=True)
        if parsed.events:
            if self._closing:
                return self.refuse(req, 503, "the detector is stopping", keep_alive=True)
            if not self.deliver(parsed.events):
                return self.busy(req)
            self.count("events", len(parsed.events))
        if not parsed.errors:
            return self.reply(req, 200, {"accepted": len(parsed.events)})
        self.count("events_rejected", len(parsed.errors))
        status = 413 if parsed.too_large else 400
        answer = {
            "error": f"{len(parsed.errors)} event(s) rejected, {len(parsed.events)} accepted",
            "accepted": len(parsed.events),
            "rejected": parsed.errors[:_SHOWN_ERRORS],
        }
        self._log(status, f"{answer['error']}; first: {parsed.errors[0]}")
        return self.reply(req, status, answer)

    def busy(self, req: _Handler) -> None:
        self.refuse(req, 429, "the detector is busy: retry later", {"Retry-After": "1"},
                    keep_alive=True)

    def refuse(self, req: _Handler, status: int, message: str,
               headers: dict[str, str] | None = None, keep_alive: bool = False) -> None:
        """An error answer; the connection is closed unless the body was read."""
        if not keep_alive:
            req.close_connection = True
        self._log(status, message)
        self.reply(req, status, {"error": message, "accepted": 0}, headers)

    def reply(self, req: _Handler, status: int, answer: dict[str, Any],
              headers: dict[str, str] | None = None) -> None:
        self.count(str(status))
        data = orjson.dumps(answer)
        req.send_response(status)
        req.send_header("Content-Type", "application/json")
        req.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            req.send_header(name, value)
        if req.close_connection:
            req.send_header("Connection", "close")
        req.end_headers()
        req.wfile.write(data)

    def _log(self, status: int, message: str) -> None:
        # A misconfigured API server repeats the same mistake in every batch: say it once in a
        # while, not at its rate.
        seen = self.stats[str(status)]
        if seen == 0 or seen % 1000 == 0:
            log.warning("k8s audit webhook answered %d (%d so far): %s", status, seen + 1,
                        message)


def _authorized(header: str | None, token: str) -> bool:
    given = (header or "").encode("latin-1", "replace")
    return hmac.compare_digest(given, f"Bearer {token}".encode())


def _content_length(req: _Handler) -> int | None:
    if req.headers.get("Transfer-Encoding"):
        return None
    value = req.headers.get("Content-Length")
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        return -1


def _tls_context(config: WebhookConfig) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(config.certfile or "", config.keyfile or None)
    except (OSError, ssl.SSLError) as exc:
        raise WebhookError(f"cannot use the certificate {config.certfile} (key "
                           f"{config.keyfile or 'in the same file'}): {exc}") from None
    if config.client_ca:
        try:
            context.load_verify_locations(config.client_ca)
        except (OSError, ssl.SSLError) as exc:
            raise WebhookError(f"cannot use the client CA {config.client_ca}: {exc}") from None
        context.verify_mode = ssl.CERT_REQUIRED
    return context


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: the API server reuses its connection
    # Headers and body go out in two writes: without TCP_NODELAY the body would wait for the
    # client's delayed ACK (40 ms) on every request of a keep-alive connection.
    disable_nagle_algorithm = True
    server_version = "lanner-k8s-audit"
    sys_version = ""
    server: _Server

    def _dispatch(self) -> None:
        self.server.webhook.handle(self)

    do_POST = do_GET = do_PUT = do_PATCH = do_DELETE = _dispatch

    def version_string(self) -> str:
        return self.server_version

    def log_message(self, format: str, *args: Any) -> None:
        """No access log: the API server posts many times a second; answers are counted."""


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 64

    def __init__(self, address: tuple[str, int], webhook: AuditWebhook,
                 context: ssl.SSLContext | None) -> None:
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.webhook = webhook
        self.context = context
        self.slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self.slots.acquire(blocking=False):
            with contextlib.suppress(OSError):
                request.settimeout(1.0)
                request.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n"
                                b"Retry-After: 1\r\nConnection: close\r\n\r\n")
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self.slots.release()
            raise

    def handle_error(self, request: Any, client_address: Any) -> None:
        # One line, no traceback: what failed is one client's connection (it hung up, sent
        # garbage), never the server.
        log.info("k8s audit webhook: connection from %s failed", client_address[0],
                 exc_info=log.isEnabledFor(logging.DEBUG))

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()

    def finish_request(self, request: Any, client_address: Any) -> None:
        # TLS handshakes happen here, in the connection's thread, so that a slow or silent
        # client cannot hold up accept() for everyone else.
        request.settimeout(IDLE_TIMEOUT)
        if self.context is None:
            self.RequestHandlerClass(request, client_address, self)
            return
        try:
            tls = self.context.wrap_socket(request, server_side=True)
        except (OSError, ssl.SSLError) as exc:
            log.info("k8s audit webhook: TLS handshake with %s failed: %s", client_address[0],
                     exc)
            return
        try:
            self.RequestHandlerClass(tls, client_address, self)
        finally:
            tls.close()
