"""The hub's gRPC side: ``lanner.v1.Hub`` (Publish, Subscribe) and the standard health service.

Publish is a bidirectional stream of batches. Each batch is validated alert by alert (invalid
ones are reported in the ack, the rest go on), handed to ``accept`` (which stores them durably
and says which were new), and then acknowledged. Batches are accepted and acked strictly in the
order they arrived, but the next requests are read and validated while one is being accepted.
A sender that resends a batch after a reconnect gets its alerts counted as duplicates.

Optional mutual TLS (``GrpcTls`` with ``cacertfile``) and an optional bearer token
(``authorization: Bearer <token>`` metadata on every RPC except the health checks).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from sidekick.alert import Alert, AlertError, Priority
from sidekick.broadcast import Broadcaster
from sidekick.proto import lanner_pb2, lanner_pb2_grpc
from sidekick.proto.convert import alert_from_proto, alert_to_proto

log = logging.getLogger("lanner.grpc")

SERVICE_NAME = "lanner.v1.Hub"
MAX_MESSAGE_BYTES = 16 * 1024 * 1024
# Batches read and validated ahead of the one being accepted, per Publish stream. Beyond this,
# the server stops reading and HTTP/2 flow control pushes back on the sender.
MAX_IN_FLIGHT = 4

SERVER_OPTIONS: list[tuple[str, int]] = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    # Ping idle clients so dead peers (node gone, NAT dropped the flow) are noticed.
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    # Clients may ping as often as every 10 s, even with no call open, before strikes count.
    ("grpc.http2.min_recv_ping_interval_without_data_ms", 10_000),
    ("grpc.http2.max_ping_strikes", 2),
    # Fail loudly when the port is taken instead of silently sharing it with another process.
    ("grpc.so_reuseport", 0),
]

Accept = Callable[[list[Alert]], Awaitable[list[bool]]]

_UNAUTHENTICATED_MESSAGE = "missing or wrong bearer token (metadata authorization: Bearer <token>)"
_HEALTH_PREFIX = "/grpc.health.v1.Health/"


@dataclass(frozen=True, slots=True)
class GrpcTls:
    """Server TLS. With ``cacertfile``, clients must present a certificate signed by it."""

    certfile: str
    keyfile: str
    cacertfile: str | None = None


class GrpcSetupError(ValueError):
    """The gRPC server cannot start as configured (unreadable cert file, port in use...)."""


def _read_file(path: str, what: str) -> bytes:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise GrpcSetupError(f"grpc.{what} {path}: {exc.strerror or exc}") from None
    if not data.strip():
        raise GrpcSetupError(f"grpc.{what} {path}: file is empty")
    return data


def server_credentials(tls: GrpcTls) -> grpc.ServerCredentials:
    cert = _read_file(tls.certfile, "certfile")
    key = _read_file(tls.keyfile, "keyfile")
    ca = _read_file(tls.cacertfile, "cacertfile") if tls.cacertfile else None
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=ca, require_client_auth=ca is not None
    )


# -- authentication -------------------------------------------------------------------------


async def _deny(request_or_iterator: object, context: grpc.aio.ServicerContext) -> None:
    await context.abort(grpc.StatusCode.UNAUTHENTICATED, _UNAUTHENTICATED_MESSAGE)


def _denying(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    """A handler of the same shape as ``handler`` that refuses the call."""
    req, resp = handler.request_deserializer, handler.response_serializer
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(_deny, req, resp)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(_deny, req, resp)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(_deny, req, resp)
    return grpc.unary_unary_rpc_method_handler(_deny, req, resp)


class TokenAuth(grpc.aio.ServerInterceptor):
    """Every RPC but the health checks must carry ``authorization: Bearer <token>``.

    Health checks stay open so probes (kubelet's gRPC probe cannot send metadata) keep working;
    they reveal nothing but "SERVING". The token is never logged.
    """

    def __init__(self, token: str) -> None:
        if not token:
            raise ValueError("empty token")
        self._expected = b"Bearer " + token.encode()

    def _authorized(self, metadata: object) -> bool:
        for key, value in metadata or ():  # type: ignore[attr-defined]
            if key == "authorization":
                got = value.encode() if isinstance(value, str) else bytes(value)
                return hmac.compare_digest(got, self._expected)
        return False

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None or handler_call_details.method.startswith(_HEALTH_PREFIX):
            return handler
        if self._authorized(handler_call_details.invocation_metadata):
            return handler
        return _denying(handler)


# -- the service ----------------------------------------------------------------------------

_END = object()


class _Batch:
    __slots__ = ("alerts", "batch_id", "rejected")

    def __init__(
        self, batch_id: int, alerts: list[Alert], rejected: list[lanner_pb2.Rejection]
    ) -> None:
        self.batch_id = batch_id
        self.alerts = alerts
        self.rejected = rejected


def _validate(request: lanner_pb2.PublishRequest) -> _Batch:
    alerts: list[Alert] = []
    rejected: list[lanner_pb2.Rejection] = []
    for index, pb in enumerate(request.alerts):
        try:
            alert = alert_from_proto(pb)
        except AlertError as exc:
            rejected.append(lanner_pb2.Rejection(index=index, field=exc.field, message=exc.message))
            continue
        except Exception as exc:  # defensive: a bad alert must not fail its whole batch
            log.warning("unexpected error validating an alert: %r", exc)
            rejected.append(lanner_pb2.Rejection(index=index, field="alert", message="invalid"))
            continue
        alert.ensure_uuid()
        alerts.append(alert)
    return _Batch(request.batch_id, alerts, rejected)


class HubService(lanner_pb2_grpc.HubServicer):
    """``accept`` stores alerts durably and returns, per alert, whether it was new.

    ``accept`` is also what offers new alerts to the live feed (the hub does that in one place
    for every ingest, HTTP and gRPC); this service only reads ``broadcaster`` for Subscribe.
    """

    def __init__(
        self, accept: Accept, broadcaster: Broadcaster, max_in_flight: int = MAX_IN_FLIGHT
    ) -> None:
        self._accept = accept
        self._broadcaster = broadcaster
        self._max_in_flight = max_in_flight

    async def _read(
        self,
        requests: AsyncIterator[lanner_pb2.PublishRequest],
        pending: asyncio.Queue[object],
    ) -> None:
        """Read and validate requests ahead of the acceptor; ends with _END or an exception."""
        try:
            async for request in requests:
                await pending.put(_validate(request))
        except Exception as exc:
            await pending.put(exc)
        else:
            await pending.put(_END)

    async def _accept_batch(self, batch: _Batch, context: grpc.aio.ServicerContext) -> int:
        """Accept a batch's valid alerts; returns how many were new. Aborts the call on failure."""
        alerts = batch.alerts
        if not alerts:
            return 0
        try:
            fresh = await self._accept(alerts)
        except Exception:
            log.exception("accepting batch %d (%d alerts) failed", batch.batch_id, len(alerts))
            await context.abort(
                grpc.StatusCode.UNAVAILABLE, "the hub could not store the batch; resend it"
            )
        if len(fresh) != len(alerts):
            log.error("accept returned %d results for %d alerts", len(fresh), len(alerts))
            await context.abort(grpc.StatusCode.INTERNAL, "the hub could not store the batch")
        return sum(1 for is_new in fresh if is_new)

    async def Publish(
        self,
        request_iterator: AsyncIterator[lanner_pb2.PublishRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[lanner_pb2.PublishAck]:
        pending: asyncio.Queue[object] = asyncio.Queue(maxsize=self._max_in_flight)
        reader = asyncio.create_task(self._read(request_iterator, pending))
        try:
            while True:
                item = await pending.get()
                if item is _END:
                    return
                if isinstance(item, BaseException):
                    # The stream broke (client gone, undecodable message): nothing to ack.
                    log.info("publish stream from %s ended: %r", context.peer(), item)
                    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "malformed request")
                assert isinstance(item, _Batch)
                accepted = await self._accept_batch(item, context)
                valid = len(item.alerts)
                yield lanner_pb2.PublishAck(
                    batch_id=item.batch_id,
                    accepted=accepted,
                    duplicates=valid - accepted,
                    rejected=item.rejected,
                )
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader

    async def Subscribe(
        self, request: lanner_pb2.SubscribeRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[lanner_pb2.Alert]:
        text = request.min_priority
        try:
            floor = Priority.parse(text) if text.strip() else Priority.DEBUG
        except ValueError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"min_priority: {exc}")
        async with self._broadcaster.subscribe(floor) as feed:
            try:
                while True:
                    batch = await feed.next_batch()
                    if not batch:
                        return
                    for alert in batch:
                        yield alert_to_proto(alert)
            finally:
                if feed.dropped:
                    log.warning(
                        "subscriber %s was too slow: %d alerts dropped",
                        context.peer(),
                        feed.dropped,
                    )


# -- server ---------------------------------------------------------------------------------


def _address(host: str, port: int) -> str:
    if not host:
        host = "[::]"  # all interfaces, IPv4 and IPv6
    elif ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"{host}:{port}"


async def start_grpc_server(
    accept: Accept,
    broadcaster: Broadcaster,
    host: str,
    port: int,
    tls: GrpcTls | None = None,
    token: str | None = None,
) -> grpc.aio.Server:
    """Build, bind and start the server; the caller stops it (``await server.stop(grace)``).

    ``accept(alerts) -> [was_new, ...]`` must store the alerts durably before returning, and
    offer the new ones to ``broadcaster`` (the server does not, so HTTP and gRPC ingest share
    one path); every alert it gets is valid and has a uuid. ``broadcaster`` feeds Subscribe.
    Raises GrpcSetupError for unreadable cert files or a port that cannot be bound.
    """
    interceptors = [TokenAuth(token)] if token else []
    server = grpc.aio.server(options=SERVER_OPTIONS, interceptors=interceptors)
    lanner_pb2_grpc.add_HubServicer_to_server(HubService(accept, broadcaster), server)

    health_servicer = health.aio.HealthServicer()
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    await health_servicer.set(SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)

    address = _address(host, port)
    try:
        if tls is None:
            bound = server.add_insecure_port(address)
        else:
            bound = server.add_secure_port(address, server_credentials(tls))
    except RuntimeError as exc:
        raise GrpcSetupError(f"grpc: cannot listen on {address}: {exc}") from None
    if not bound:
        raise GrpcSetupError(f"grpc: cannot listen on {address}")
    await server.start()
    log.info(
        "gRPC listening on %s (tls: %s, token: %s)",
        _address(host, bound),
        "mutual" if tls and tls.cacertfile else ("on" if tls else "off"),
        "required" if token else "off",
    )
    return server
