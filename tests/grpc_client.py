"""A small lanner.v1.Hub client for tests: channel with optional TLS/mTLS and token, publish
batches and collect the acks, subscribe, health check.

    async with HubClient(f"127.0.0.1:{port}", token="s3cret") as hub:
        acks = await hub.publish([[alert1, alert2], [alert3]])
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from sidekick.alert import Alert
from sidekick.proto import lanner_pb2, lanner_pb2_grpc
from sidekick.proto.convert import alert_to_proto

CHANNEL_OPTIONS: list[tuple[str, int]] = [
    ("grpc.max_receive_message_length", 16 * 1024 * 1024),
    ("grpc.max_send_message_length", 16 * 1024 * 1024),
    ("grpc.keepalive_time_ms", 20_000),  # the server allows pings every 10 s
    ("grpc.keepalive_timeout_ms", 10_000),
]


@dataclass(frozen=True)
class ClientTls:
    """``cacertfile`` verifies the server; ``certfile``/``keyfile`` are the client's (mTLS)."""

    cacertfile: str
    certfile: str | None = None
    keyfile: str | None = None


def open_channel(target: str, tls: ClientTls | None = None) -> grpc.aio.Channel:
    if tls is None:
        return grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS)
    credentials = grpc.ssl_channel_credentials(
        root_certificates=Path(tls.cacertfile).read_bytes(),
        private_key=Path(tls.keyfile).read_bytes() if tls.keyfile else None,
        certificate_chain=Path(tls.certfile).read_bytes() if tls.certfile else None,
    )
    return grpc.aio.secure_channel(target, credentials, options=CHANNEL_OPTIONS)


AlertLike = Alert | lanner_pb2.Alert


def to_pb(alert: AlertLike) -> lanner_pb2.Alert:
    return alert_to_proto(alert) if isinstance(alert, Alert) else alert


def requests(
    batches: Iterable[Sequence[AlertLike]], first_batch_id: int = 1
) -> Iterable[lanner_pb2.PublishRequest]:
    for batch_id, batch in enumerate(batches, start=first_batch_id):
        yield lanner_pb2.PublishRequest(batch_id=batch_id, alerts=[to_pb(a) for a in batch])


class HubClient:
    def __init__(self, target: str, tls: ClientTls | None = None, token: str | None = None) -> None:
        self.channel = open_channel(target, tls)
        self.stub = lanner_pb2_grpc.HubStub(self.channel)
        self.metadata: tuple[tuple[str, str], ...] = (
            (("authorization", f"Bearer {token}"),) if token else ()
        )

    async def __aenter__(self) -> HubClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self.channel.close()

    async def publish(
        self,
        batches: Iterable[Sequence[AlertLike]],
        first_batch_id: int = 1,
        timeout: float | None = 60.0,
    ) -> list[lanner_pb2.PublishAck]:
        """Stream the batches (ids first_batch_id, +1, ...) over one call; all acks, in order."""
        return await self.publish_requests(requests(batches, first_batch_id), timeout=timeout)

    async def publish_requests(
        self, reqs: Iterable[lanner_pb2.PublishRequest], timeout: float | None = 60.0
    ) -> list[lanner_pb2.PublishAck]:
        call = self.stub.Publish(iter(reqs), metadata=self.metadata, timeout=timeout)
        return [ack async for ack in call]

    def subscribe(self, min_priority: str = "") -> grpc.aio.UnaryStreamCall:
        """The live feed; iterate it with ``async for``, ``call.cancel()`` to stop."""
        return self.stub.Subscribe(
            lanner_pb2.SubscribeRequest(min_priority=min_priority), metadata=self.metadata
        )

    async def health(self, service: str = "", timeout: float = 10.0) -> int:
        """The serving status (health_pb2.HealthCheckResponse.SERVING...)."""
        stub = health_pb2_grpc.HealthStub(self.channel)
        response = await stub.Check(
            health_pb2.HealthCheckRequest(service=service), metadata=self.metadata, timeout=timeout
        )
        return response.status


async def take(stream: AsyncIterator[lanner_pb2.Alert], count: int) -> list[lanner_pb2.Alert]:
    """The next ``count`` messages of a stream (wrap in asyncio.wait_for for a deadline)."""
    out: list[lanner_pb2.Alert] = []
    async for item in stream:
        out.append(item)
        if len(out) >= count:
            break
    return out
