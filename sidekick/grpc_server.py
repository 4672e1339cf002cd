"""The hub's gRPC side: ``lanner.v1.Hub`` (Publish, Subscribe, LocalRules) and the standard
health service.

Publish is a bidirectional stream of batches. Each batch is validated alert by alert (invalid
ones are reported in the ack, the rest go on), handed to ``accept`` (which stores them durably
and says which were new), and then acknowledged. Up to MAX_IN_FLIGHT batches of a stream are
inside ``accept`` at once (so a group-committing store merges them into one transaction), but
acks go out strictly in the order the batches arrived, each only once its batch and every
earlier one are durably accepted. A sender that resends a batch after a reconnect gets its
alerts counted as duplicates.

LocalRules answers with the version of the hub's local rules file (the exceptions saved in the
UI, shared by replicas) and, when the caller's ``known_version`` differs, the file itself.

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
from sidekick.store.base import LocalRulesDoc

log = logging.getLogger("lanner.grpc")

SERVICE_NAME = "lanner.v1.Hub"
MAX_MESSAGE_BYTES = 16 * 1024 * 1024
# Batches of one Publish stream inside ``accept`` (or accepted but not yet acked) at once. The
# server reads and validates one more batch ahead, then stops reading until the oldest is acked,
# and HTTP/2 flow control pushes back on the sender.
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
# The hub's local rules file as detectors get it (version 0: none saved, a header-only file).
LocalRulesSource = Callable[[], Awaitable[LocalRulesDoc]]

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
    __slots__ = ("accepting", "alerts", "batch_id", "rejected")

    def __init__(
        self, batch_id: int, alerts: list[Alert], rejected: list[lanner_pb2.Rejection]
    ) -> None:
        self.batch_id = batch_id
        self.alerts = alerts
        self.rejected = rejected
        # How many alerts were new, once accepted; None when there was nothing to accept.
        self.accepting: asyncio.Task[int] | None = None


class _WrongResultCount(Exception):
    """``accept`` returned a result list that does not match the batch."""


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


def _report_unacked_failure(task: asyncio.Task[int]) -> None:
    """Done-callback for the accepts of batches a stream ended without acking."""
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.warning("accepting an unacknowledged batch failed: %r", exc)


class HubService(lanner_pb2_grpc.HubServicer):
    """``accept`` stores alerts durably and returns, per alert, whether it was new.

    ``accept`` is also what offers new alerts to the live feed (the hub does that in one place
    for every ingest, HTTP and gRPC); this service only reads ``broadcaster`` for Subscribe.

    Several batches of one stream may be inside ``accept`` at once (``max_in_flight``), each
    call started in batch order. If the same uuid is in two of them, exactly one call reports
    it as new (not necessarily the earlier batch's: that is up to ``accept``).
    """

    def __init__(
        self, accept: Accept, broadcaster: Broadcaster, max_in_flight: int = MAX_IN_FLIGHT,
        local_rules: LocalRulesSource | None = None,
    ) -> None:
        if max_in_flight < 1:
            raise ValueError("max_in_flight must be at least 1")
        self._accept = accept
        self._broadcaster = broadcaster
        self._local_rules = local_rules
        self._max_in_flight = max_in_flight
        # Accepts still running. Once started, an accept runs to completion even if its stream
        # ends first (client gone, an earlier batch failed, server stopping): cancelling it
        # half-way could leave alerts stored but never counted or offered to the live feed.
        self._accepting: set[asyncio.Task[int]] = set()

    async def _accept_count(self, alerts: list[Alert]) -> int:
        """Accept a batch's valid alerts; returns how many were new."""
        fresh = await self._accept(alerts)
        if len(fresh) != len(alerts):
            raise _WrongResultCount(f"accept returned {len(fresh)} results for {len(alerts)}")
        return sum(1 for is_new in fresh if is_new)

    def _start_accept(self, batch: _Batch) -> None:
        if not batch.alerts:
            return  # acked like any other batch, in order; accept is not called for nothing
        task = asyncio.create_task(self._accept_count(batch.alerts))
        self._accepting.add(task)
        task.add_done_callback(self._accepting.discard)
        batch.accepting = task

    async def _read(
        self,
        requests: AsyncIterator[lanner_pb2.PublishRequest],
        ready: asyncio.Queue[object],
        slots: asyncio.Semaphore,
    ) -> None:
        """Read, validate and start accepting requests, in order; ends with _END or an exception.

        Each batch takes a slot before its accept starts; Publish frees it once the batch is
        acked. So at most ``max_in_flight`` batches are in ``ready`` (accepting or accepted,
        not yet acked), plus the one validated here while waiting for a slot.
        """
        try:
            async for request in requests:
                batch = _validate(request)
                await slots.acquire()
                self._start_accept(batch)
                ready.put_nowait(batch)  # no await since the accept started: ready keeps order
        except Exception as exc:
            ready.put_nowait(exc)
        else:
            ready.put_nowait(_END)

    async def _accepted(self, batch: _Batch, context: grpc.aio.ServicerContext) -> int:
        """How many of the batch's alerts were new, once accepted. Aborts the call on failure."""
        task = batch.accepting
        if task is None:
            return 0
        try:
            # Shielded: a cancelled call (client gone, server stopping) must not cancel the
            # accept itself (see __init__).
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            task.add_done_callback(_report_unacked_failure)
            raise
        except _WrongResultCount as exc:
            log.error("batch %d: %s", batch.batch_id, exc)
            await context.abort(grpc.StatusCode.INTERNAL, "the hub could not store the batch")
        except Exception:
            log.exception(
                "accepting batch %d (%d alerts) failed", batch.batch_id, len(batch.alerts)
            )
            await context.abort(
                grpc.StatusCode.UNAVAILABLE, "the hub could not store the batch; resend it"
            )
        raise AssertionError("unreachable: context.abort raises")

    async def Publish(
        self,
        request_iterator: AsyncIterator[lanner_pb2.PublishRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[lanner_pb2.PublishAck]:
        # Batches in arrival order, their accepts already started (at most max_in_flight).
        ready: asyncio.Queue[object] = asyncio.Queue()
        slots = asyncio.Semaphore(self._max_in_flight)
        reader = asyncio.create_task(self._read(request_iterator, ready, slots))
        try:
            while True:
                item = await ready.get()
                if item is _END:
                    return
                if isinstance(item, BaseException):
                    # The stream broke (client gone, undecodable message). Every batch before
                    # it has been acked; there is nothing more to ack.
                    log.info("publish stream from %s ended: %r", context.peer(), item)
                    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "malformed request")
                assert isinstance(item, _Batch)
                # In order: a batch is acked only after it and all earlier ones were accepted.
                # If its accept failed, the call ends here with no ack for it or any later
                # batch, although later batches may already be stored (their accepts ran
                # concurrently): the sender resends them all, and the hub counts the stored
                # ones as duplicates (dedup by uuid; alerts sent without a uuid got one here
                # and cannot be recognised, as for any batch whose ack was lost).
                accepted = await self._accepted(item, context)
                yield lanner_pb2.PublishAck(
                    batch_id=item.batch_id,
                    accepted=accepted,
                    duplicates=len(item.alerts) - accepted,
                    rejected=item.rejected,
                )
                slots.release()
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
            # Batches started but never acked: their accepts finish on their own (see
            # __init__); make sure a failure among them is still logged.
            while not ready.empty():
                item = ready.get_nowait()
                if isinstance(item, _Batch) and item.accepting is not None:
                    item.accepting.add_done_callback(_report_unacked_failure)

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

    async def LocalRules(
        self, request: lanner_pb2.LocalRulesRequest, context: grpc.aio.ServicerContext
    ) -> lanner_pb2.LocalRulesReply:
        if self._local_rules is None:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, "this hub keeps no local rules")
        try:
            doc = await self._local_rules()
        except Exception as exc:
            log.warning("LocalRules from %s: could not read the store: %r", context.peer(), exc)
            await context.abort(
                grpc.StatusCode.UNAVAILABLE, "the hub could not read its local rules; ask again"
            )
        changed = doc.version != request.known_version
        return lanner_pb2.LocalRulesReply(
            version=doc.version, changed=changed, yaml=doc.text if changed else ""
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
    local_rules: LocalRulesSource | None = None,
) -> grpc.aio.Server:
    """Build, bind and start the server; the caller stops it (``await server.stop(grace)``).

    ``accept(alerts) -> [was_new, ...]`` must store the alerts durably before returning, and
    offer the new ones to ``broadcaster`` (the server does not, so HTTP and gRPC ingest share
    one path); every alert it gets is valid and has a uuid. ``broadcaster`` feeds Subscribe,
    ``local_rules`` LocalRules (UNIMPLEMENTED without it).
    Raises GrpcSetupError for unreadable cert files or a port that cannot be bound.
    """
    interceptors = [TokenAuth(token)] if token else []
    server = grpc.aio.server(options=SERVER_OPTIONS, interceptors=interceptors)
    service = HubService(accept, broadcaster, local_rules=local_rules)
    lanner_pb2_grpc.add_HubServicer_to_server(service, server)

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
