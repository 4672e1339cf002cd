"""A recording HTTP receiver for tests: a real server on 127.0.0.1 in a background thread.

Every request is recorded (method, path, query, headers, body bytes, parsed JSON, monotonic
time of arrival, status answered). Answers follow a programmable plan::

    with Receiver() as rx:
        rx.respond_with(status=503, headers={"Retry-After": "1"}, times=5)  # then the default
        rx.fail_until(time.monotonic() + 2)      # 503 to everything until that moment
        rx.respond_with(status=200, delay=3)     # times=None: becomes the default answer
        rx.set_responder(lambda req: Reply(400) if req.json["rule"] == "x" else None)
        ... point a client at rx.url ...
        rx.wait_for(10, timeout=5)
        assert rx.uuids() == [...]

Which answer a request gets, first match wins: the responder (if set and it returns a Reply),
then ``fail_until`` while its deadline is in the future, then the queued ``times=N`` replies
in order, then the default (200 with an empty JSON object unless changed).

Forwarding: ``Receiver(forward_to="http://127.0.0.1:PORT")`` puts the receiver in front of a
real service (moto, for the AWS outputs). A request that the responder, ``fail_until`` and the
plan leave unanswered is proxied there and the service's answer returned, so a test can inject
429/503 answers in front of a real backend. ``set_middleware(fn)`` intercepts forwarded
requests: ``await fn(request, forward)`` returns the Reply, where ``await forward(body)`` sends
``body`` (the original or a rewritten one) upstream and returns its answer as a Reply. The
recorded status of a forwarded request is the upstream's (0 while it is in flight).

It runs uvicorn (httptools, uvloop when available) on its own event loop, so delays do not
block other requests. It answers ~30,000 keep-alive requests/s from a raw client; an httpx
client is the bottleneck (~1,000 requests/s per process, slower with many connections).
"""

from __future__ import annotations

import asyncio
import collections
import socket
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
import uvicorn
import yarl


@dataclass(frozen=True, slots=True)
class Reply:
    """One answer: status, headers, body, and how long to wait before sending it."""

    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b"{}"
    delay: float = 0.0


@dataclass(slots=True)
class Request:
    """One recorded request. ``headers`` has lower-cased names (repeated ones joined by ", ")."""

    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes
    json: Any  # the parsed body, None if it is not JSON
    received_at: float  # time.monotonic()
    status: int  # what the receiver answered (or will, after the reply's delay)

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


Forward = Callable[[bytes], Awaitable[Reply]]
Middleware = Callable[[Request, Forward], Awaitable[Reply]]

# Hop-by-hop or recomputed headers, never copied between the client and the upstream.
_NOT_FORWARDED = frozenset(
    {"host", "content-length", "connection", "transfer-encoding", "expect", "keep-alive"}
)


class Receiver:
    def __init__(
        self, default: Reply | None = None, *, delay: float = 0.0, forward_to: str = ""
    ) -> None:
        self._lock = threading.Condition()
        self._requests: list[Request] = []
        self._plan: collections.deque[list[Any]] = collections.deque()  # [Reply, remaining]
        self._default = default or Reply()
        self._delay = delay
        self._fail_deadline = 0.0
        self._fail_reply = Reply(503)
        self._responder: Callable[[Request], Reply | None] | None = None
        self._forward_to = forward_to.rstrip("/")
        self._middleware: Middleware | None = None
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._sock: socket.socket | None = None
        self.port = 0

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> Receiver:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        sock.listen(1024)
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            self._app,
            interface="asgi3",
            log_level="warning",
            access_log=False,
            lifespan="off",
            backlog=1024,
            timeout_keep_alive=30,
            timeout_graceful_shutdown=1,  # in-flight delayed replies are dropped
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [sock]}, name="test-receiver", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("test receiver did not start")
            time.sleep(0.01)
        self._sock = sock
        return self

    def stop(self) -> None:
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(timeout=10)
        if self._sock is not None:
            self._sock.close()
        self._server = self._thread = self._sock = None

    def __enter__(self) -> Receiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # -- the plan --------------------------------------------------------------------------

    def respond_with(
        self,
        status: int = 200,
        headers: dict[str, str] | None = None,
        body: bytes | str | Any = b"{}",
        *,
        times: int | None = None,
        delay: float | None = None,
    ) -> None:
        """Queue ``times`` answers; with ``times=None`` this becomes the default answer.

        ``body``: bytes/str sent as is, anything else JSON-encoded. ``delay`` defaults to the
        receiver's ``delay``.
        """
        wait = self._delay if delay is None else delay
        reply = Reply(status, dict(headers or {}), _body(body), wait)
        with self._lock:
            if times is None:
                self._default = reply
            elif times > 0:
                self._plan.append([reply, times])

    def fail_until(
        self, deadline: float, status: int = 503, headers: dict[str, str] | None = None
    ) -> None:
        """Answer ``status`` to every request until ``time.monotonic()`` reaches ``deadline``."""
        with self._lock:
            self._fail_deadline = deadline
            self._fail_reply = Reply(status, dict(headers or {}), b"", self._delay)

    def fail_for(
        self, seconds: float, status: int = 503, headers: dict[str, str] | None = None
    ) -> None:
        """``fail_until`` ``seconds`` from now."""
        self.fail_until(time.monotonic() + seconds, status, headers)

    def set_responder(self, responder: Callable[[Request], Reply | None] | None) -> None:
        """A function choosing the answer per request (None: fall through to the plan).

        It runs on the server's event loop: keep it quick and do not block.
        """
        with self._lock:
            self._responder = responder

    def set_middleware(self, middleware: Middleware | None) -> None:
        """Intercept forwarded requests (see the module docstring); None: forward as is."""
        with self._lock:
            self._middleware = middleware

    @property
    def delay(self) -> float:
        return self._delay

    @delay.setter
    def delay(self, seconds: float) -> None:
        """Delay for the default answer and for answers queued later without their own."""
        with self._lock:
            self._delay = seconds
            self._default = Reply(self._default.status, self._default.headers,
                                  self._default.body, seconds)

    def reset(self) -> None:
        """Forget recorded requests and the plan; back to 200 without delay."""
        with self._lock:
            self._requests.clear()
            self._plan.clear()
            self._default = Reply()
            self._delay = 0.0
            self._fail_deadline = 0.0
            self._responder = None
            self._middleware = None

    def _choose(self, request: Request) -> Reply | None:
        """The answer, or None when the request is to be forwarded."""
        responder = self._responder
        if responder is not None:
            reply = responder(request)
            if reply is not None:
                return reply
        if time.monotonic() < self._fail_deadline:
            return self._fail_reply
        if self._plan:
            entry = self._plan[0]
            entry[1] -= 1
            if entry[1] <= 0:
                self._plan.popleft()
            return entry[0]
        return None if self._forward_to else self._default

    # -- recorded requests -----------------------------------------------------------------

    @property
    def requests(self) -> list[Request]:
        with self._lock:
            return list(self._requests)

    @property
    def count(self) -> int:
        with self._lock:
            return len(self._requests)

    def wait_for(self, n: int, timeout: float = 10.0, *, ok: bool = False) -> list[Request]:
        """Block until ``n`` requests (``ok=True``: answered 2xx) were recorded; return them all.

        Raises TimeoutError saying how many arrived.
        """

        def have() -> int:
            if ok:
                return sum(1 for r in self._requests if r.ok)
            return len(self._requests)

        with self._lock:
            if not self._lock.wait_for(lambda: have() >= n, timeout):
                raise TimeoutError(f"receiver got {have()} of {n} requests in {timeout}s")
            return list(self._requests)

    def json_bodies(self, *, ok: bool = False) -> list[Any]:
        return [r.json for r in self.requests if r.ok or not ok]

    def uuids(self, *, ok: bool = False) -> list[str]:
        """The ``uuid`` of each JSON object body, in arrival order (``ok``: 2xx answers only)."""
        return [
            r.json["uuid"]
            for r in self.requests
            if (r.ok or not ok) and isinstance(r.json, dict) and "uuid" in r.json
        ]

    # -- the ASGI app ----------------------------------------------------------------------

    async def _app(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        chunks = []
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        body = b"".join(chunks)
        headers: dict[str, str] = {}
        for raw_name, raw_value in scope["headers"]:
            name, value = raw_name.decode("latin-1").lower(), raw_value.decode("latin-1")
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        try:
            parsed = orjson.loads(body) if body else None
        except orjson.JSONDecodeError:
            parsed = None
        request = Request(
            method=scope["method"],
            path=scope["path"],
            query=scope["query_string"].decode("latin-1"),
            headers=headers,
            body=body,
            json=parsed,
            received_at=time.monotonic(),
            status=0,
        )
        with self._lock:
            chosen = self._choose(request)
            request.status = chosen.status if chosen is not None else 0
            self._requests.append(request)
            self._lock.notify_all()
            middleware = self._middleware
        if chosen is None:
            reply = await self._forward(request, scope.get("raw_path") or b"", middleware)
            with self._lock:
                request.status = reply.status
                self._lock.notify_all()
        else:
            reply = chosen
        if reply.delay > 0:
            await asyncio.sleep(reply.delay)
        out_headers = [
            (k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in reply.headers.items()
        ]
        if not any(k == b"content-type" for k, _ in out_headers):
            out_headers.append((b"content-type", b"application/json"))
        if not any(k == b"content-length" for k, _ in out_headers):
            out_headers.append((b"content-length", str(len(reply.body)).encode()))
        await send({"type": "http.response.start", "status": reply.status, "headers": out_headers})
        await send({"type": "http.response.body", "body": reply.body})

    async def _forward(
        self, request: Request, raw_path: bytes, middleware: Middleware | None
    ) -> Reply:
        headers = {k: v for k, v in request.headers.items() if k not in _NOT_FORWARDED}
        # The path as the client encoded it: S3 keys must reach the upstream byte for byte.
        path = raw_path.decode("latin-1") or request.path
        url = yarl.URL(
            self._forward_to + path + (f"?{request.query}" if request.query else ""), encoded=True
        )

        async def forward(body: bytes) -> Reply:
            # A session per request: the receiver's loop has no shutdown hook to close one.
            # auto_decompress off: a gzip'd object must reach the client as stored.
            async with (
                aiohttp.ClientSession(auto_decompress=False) as session,
                session.request(request.method, url, data=body, headers=headers) as answer,
            ):
                content = await answer.read()
                kept = {
                    k: v for k, v in answer.headers.items() if k.lower() not in _NOT_FORWARDED
                }
                return Reply(answer.status, kept, content)

        if middleware is not None:
            return await middleware(request, forward)
        return await forward(request.body)


def _body(body: bytes | str | Any) -> bytes:
    if isinstance(body, bytes):
        return body
    if isinstance(body, str):
        return body.encode()
    return orjson.dumps(body)
