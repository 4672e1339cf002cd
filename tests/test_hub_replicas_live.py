"""Replicas on one Redis share their live feeds: a Subscribe on one replica sees the alerts
another accepted, each once, and its own too."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx

from tests.grpc_client import HubClient, take
from tests.hubproc import HubProcess, falco_alert


async def post(url: str, alerts: list[dict]) -> None:
    async with httpx.AsyncClient() as client:
        for alert in alerts:
            response = await client.post(f"{url}/", json=alert)
            assert response.status_code == 200, response.text


async def test_a_subscriber_on_one_replica_sees_what_another_accepted(
        tmp_path: Path, redis_url: str) -> None:
    config = {"store": "redis", "redis": {"url": redis_url}}
    with HubProcess(tmp_path, config, name="a", grpc=True) as a, \
            HubProcess(tmp_path, config, name="b", grpc=True) as b:
        async with HubClient(f"127.0.0.1:{b.grpcport}") as client:
            feed = client.subscribe()
            await asyncio.sleep(0.5)  # the subscription is in place before anything is sent
            via_a = [falco_alert(n, uuid=f"00000000-0000-4000-8000-{n:012d}") for n in range(20)]
            via_b = [falco_alert(n, uuid=f"00000000-0000-4000-9000-{n:012d}") for n in range(5)]
            await post(a.url, via_a)
            await post(b.url, via_b)
            await post(a.url, via_a[:5])  # duplicates: not accepted, so not in any feed
            seen = await asyncio.wait_for(take(feed, 25), 15)
            assert sorted(alert.uuid for alert in seen) == sorted(
                x["uuid"] for x in via_a + via_b)
            # nothing more arrives: no alert twice, no duplicate post
            extra = asyncio.ensure_future(take(feed, 1))
            await asyncio.sleep(1.0)
            assert not extra.done()
            extra.cancel()
            feed.cancel()
