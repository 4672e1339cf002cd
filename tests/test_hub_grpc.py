"""gRPC ingest into the running hub over mutual TLS with a token, through to delivery."""

from __future__ import annotations

import asyncio
import collections
from pathlib import Path

import grpc
import httpx
import pytest

from sidekick.alert import Alert
from tests.certs import make_pki
from tests.grpc_client import ClientTls, HubClient
from tests.hubproc import HubProcess, falco_alert
from tests.receiver import Receiver

TOKEN = "s3cret-token"


def test_10000_alerts_over_mtls_stream_acked_and_delivered(tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki")
    config = {
        "grpc": {"certfile": pki.server_cert, "keyfile": pki.server_key,
                 "cacertfile": pki.ca_cert, "token": TOKEN},
        "delivery": {"initialbackoff": "50ms"},
    }
    good = ClientTls(pki.ca_cert, pki.client_cert, pki.client_key)
    with Receiver() as receiver:
        config["webhook"] = {"address": receiver.url, "maxconcurrentrequests": 4}
        with HubProcess(tmp_path, config, grpc=True) as hub:
            target = f"127.0.0.1:{hub.grpcport}"
            alerts = [Alert.from_dict(falco_alert(n)) for n in range(10_000)]
            batches = [alerts[i:i + 500] for i in range(0, len(alerts), 500)]

            async def publish() -> list:
                async with HubClient(target, tls=good, token=TOKEN) as client:
                    return await client.publish(batches)

            acks = asyncio.run(publish())
            assert [a.batch_id for a in acks] == list(range(1, 21))
            assert sum(a.accepted for a in acks) == 10_000
            assert all(not a.rejected and a.duplicates == 0 for a in acks)

            # the same batch again: acked, counted as duplicates, not delivered again
            async def again() -> list:
                async with HubClient(target, tls=good, token=TOKEN) as client:
                    return await client.publish(batches[:1])

            (ack,) = asyncio.run(again())
            assert (ack.accepted, ack.duplicates) == (0, 500)

            receiver.wait_for(10_000, timeout=120, ok=True)
            counts = collections.Counter(receiver.uuids(ok=True))
            assert set(counts) == {a.uuid for a in alerts}
            assert max(counts.values()) == 1
            assert TOKEN not in hub.log()


@pytest.mark.parametrize(
    ("client", "token", "code"),
    [
        ("no-cert", TOKEN, grpc.StatusCode.UNAVAILABLE),
        ("other-ca", TOKEN, grpc.StatusCode.UNAVAILABLE),
        ("good", "wrong", grpc.StatusCode.UNAUTHENTICATED),
        ("good", None, grpc.StatusCode.UNAUTHENTICATED),
    ],
)
def test_refused_without_valid_certificate_or_token(
    tmp_path: Path, client: str, token: str | None, code: grpc.StatusCode
) -> None:
    pki = make_pki(tmp_path / "pki")
    tls = {
        "no-cert": ClientTls(pki.ca_cert),
        "other-ca": ClientTls(pki.ca_cert, pki.other_client_cert, pki.other_client_key),
        "good": ClientTls(pki.ca_cert, pki.client_cert, pki.client_key),
    }[client]
    config = {"grpc": {"certfile": pki.server_cert, "keyfile": pki.server_key,
                       "cacertfile": pki.ca_cert, "token": TOKEN}}
    with HubProcess(tmp_path, config, grpc=True) as hub:

        async def refusal() -> grpc.StatusCode:
            # Opened without writing: the status is the server's verdict. A write racing the
            # refusal can surface as INTERNAL ("Failed execute_batch") on the client instead.
            async with HubClient(f"127.0.0.1:{hub.grpcport}", tls=tls, token=token) as c:
                call = c.stub.Publish(metadata=c.metadata, timeout=10)
                return await call.code()

        async def publish() -> None:
            async with HubClient(f"127.0.0.1:{hub.grpcport}", tls=tls, token=token) as c:
                await c.publish([[Alert.from_dict(falco_alert(1))]], timeout=10)

        assert asyncio.run(refusal()) == code
        with pytest.raises(grpc.aio.AioRpcError):
            asyncio.run(publish())
        # nothing got in
        assert httpx.get(f"{hub.url}/api/v1/events").json()["events"] == []
