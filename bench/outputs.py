"""Output benchmark: alerts/s delivered through the hub to each output's local service.

    .venv/bin/python bench/outputs.py            # about 2 minutes; a table at the end
    .venv/bin/python bench/outputs.py -n 5000    # more alerts per case

Each case starts a `lanner sidekick` (SQLite store) with one output, publishes N alerts over
gRPC in batches of 500 (ingest runs at well over 10,000/s, not the bottleneck) and times from
the first publish to the last delivery, as the hub's `outputs_total{status="ok"}` counts it.
Every output has the same concurrency (4 sends in flight); "batched" cases use the service's
batch call. The services are the ones the tests use: a recording HTTP receiver for Slack,
Discord and the webhook, the real Alertmanager, moto's server for SQS and S3, and the Pub/Sub
test server speaking the real gRPC protocol. They are local, so the figures measure the hub
and the client libraries, not the network.

Baseline, measured in the same run for every case: the same output object driven directly
(its `send()` called by 4 tasks over pre-made batches, no hub, no store, no queue) against a
fresh queue/bucket/topic of the same service. The ratio hub/direct is what the hub's durable
queue costs; the direct figure is the client library and the local service's ceiling.

moto's SQS slows down as a queue grows (each send scans it: about 240 messages/s into an empty
queue, 30/s past 2,000), so SQS cases send at most 500 alerts. It prints; it asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from outputs import REGISTRY
from sidekick.alert import Alert
from sidekick.config import load_config
from tests.alertmanager import AlertmanagerServer
from tests.aws import ACCESS_KEY, REGION, SECRET_KEY, MotoServer
from tests.grpc_client import HubClient
from tests.hubproc import HubProcess, falco_alert
from tests.pubsub_server import PubsubServer
from tests.receiver import Receiver

CONCURRENCY = 4
PUBLISH_BATCH = 500
SQS_MAX = 500  # see the docstring

Case = tuple[str, str, int, Callable[[], dict[str, Any]]]  # label, output, batch, config


def alerts(n: int, run: int) -> list[Alert]:
    """Distinct alerts (uuids and a distinct field, so Alertmanager keeps them apart)."""
    out = []
    for i in range(n):
        alert = falco_alert(run * 1_000_000 + i)
        out.append(Alert.from_dict(alert))
    return out


def delivered(hub: HubProcess, output: str) -> int:
    text = httpx.get(f"{hub.url}/metrics", timeout=10).text
    pattern = rf'falcosecurity_falcosidekick_outputs_total\{{[^}}]*destination="{output}"' \
              rf'[^}}]*status="ok"[^}}]*\}} ([0-9.e+]+)'
    return sum(int(float(m)) for m in re.findall(pattern, text))


def run_case(workdir: Path, output: str, config: dict[str, Any], n: int, run: int,
             env: dict[str, str] | None = None) -> dict[str, float]:
    hub = HubProcess(workdir, config, name=f"hub{run}", grpc=True, env=env).start()
    try:
        batch = alerts(n, run)
        chunks = [batch[i:i + PUBLISH_BATCH] for i in range(0, n, PUBLISH_BATCH)]
        start = time.perf_counter()

        async def publish() -> None:
            async with HubClient(f"127.0.0.1:{hub.grpcport}") as client:
                await client.publish(chunks)

        asyncio.run(publish())
        ingested = time.perf_counter() - start
        deadline = time.monotonic() + 300
        while (done := delivered(hub, output)) < n:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{output}: only {done} of {n} delivered\n{hub.log()[-2000:]}")
            time.sleep(0.05)
        elapsed = time.perf_counter() - start
        return {"rate": n / elapsed, "seconds": elapsed, "ingest_s": ingested}
    finally:
        hub.stop()


def run_direct(workdir: Path, output: str, config: dict[str, Any], n: int, run: int,
               batchsize: int) -> dict[str, float]:
    """The output alone: ``CONCURRENCY`` tasks calling send() over batches of ``batchsize``."""
    path = workdir / f"direct{run}.yaml"
    path.write_text(yaml.safe_dump(config))
    output_config = load_config(path, env={}).outputs[output]
    target = REGISTRY[output](output_config, "http://127.0.0.1:2801")
    batches = [b[i:i + batchsize] for b in [alerts(n, run)] for i in range(0, n, batchsize)]

    async def drive() -> float:
        async with target:
            start = time.perf_counter()

            async def worker() -> None:
                while batches:
                    await target.send(batches.pop())

            await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
            return time.perf_counter() - start

    elapsed = asyncio.run(drive())
    return {"rate": n / elapsed, "seconds": elapsed}


@contextlib.contextmanager
def services(workdir: Path) -> Iterator[dict[str, Any]]:
    with contextlib.ExitStack() as stack:
        receiver = stack.enter_context(Receiver())
        alertmanager = AlertmanagerServer(workdir / "alertmanager")
        stack.callback(alertmanager.stop)
        moto = stack.enter_context(MotoServer())
        pubsub = stack.enter_context(PubsubServer())
        yield {"receiver": receiver, "alertmanager": alertmanager, "moto": moto,
               "pubsub": pubsub}


def cases(svc: dict[str, Any]) -> list[Case]:
    receiver, moto, pubsub = svc["receiver"], svc["moto"], svc["pubsub"]
    aws = {"region": REGION, "accesskeyid": ACCESS_KEY, "secretaccesskey": SECRET_KEY,
           "checkidentity": False}
    common = {"maxconcurrentrequests": CONCURRENCY}

    def webhook(batch: int) -> Callable[[], dict[str, Any]]:
        return lambda: {"webhook": {"address": receiver.url, "batchsize": batch, **common}}

    def sqs(batch: int) -> Callable[[], dict[str, Any]]:
        def config() -> dict[str, Any]:
            url = moto.create_queue(f"bench-{batch}-{time.monotonic_ns()}")
            return {"aws": {**aws, "sqs": {"url": url, "endpoint": moto.url, "batchsize": batch,
                                           **common}}}
        return config

    def s3(batch: int) -> Callable[[], dict[str, Any]]:
        def config() -> dict[str, Any]:
            bucket = f"bench-{batch}-{time.monotonic_ns()}"
            moto.client("s3").create_bucket(Bucket=bucket)
            return {"aws": {**aws, "s3": {"bucket": bucket, "endpoint": moto.url,
                                          "batchsize": batch, **common}}}
        return config

    def gcp(batch: int) -> Callable[[], dict[str, Any]]:
        def config() -> dict[str, Any]:
            topic = f"bench-{batch}-{time.monotonic_ns()}"
            pubsub.add_topic(f"projects/bench/topics/{topic}")
            return {"gcp": {"pubsub": {"projectid": "bench", "topic": topic, "batchsize": batch,
                                       **common}}}
        return config

    def am(batch: int) -> Callable[[], dict[str, Any]]:
        return lambda: {"alertmanager": {"hostport": svc["alertmanager"].url,
                                         "batchsize": batch, **common}}

    return [
        ("webhook", "webhook", 1, webhook(1)),
        ("webhook batched", "webhook", 10, webhook(10)),
        ("slack", "slack", 1,
         lambda: {"slack": {"webhookurl": receiver.url, **common}}),
        ("discord", "discord", 1,
         lambda: {"discord": {"webhookurl": receiver.url, **common}}),
        ("alertmanager", "alertmanager", 1, am(1)),
        ("alertmanager batched", "alertmanager", 64, am(64)),
        ("sqs", "awssqs", 1, sqs(1)),
        ("sqs batched", "awssqs", 10, sqs(10)),
        ("s3", "awss3", 1, s3(1)),
        ("s3 batched", "awss3", 100, s3(100)),
        ("pubsub", "gcppubsub", 1, gcp(1)),
        ("pubsub batched", "gcppubsub", 100, gcp(100)),
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=2000, help="alerts per case")
    args = parser.parse_args()
    rows: list[tuple[str, int, int, dict[str, float], dict[str, float]]] = []
    with tempfile.TemporaryDirectory(prefix="lanner-bench-") as tmp, services(Path(tmp)) as svc:
        env = {"PUBSUB_EMULATOR_HOST": svc["pubsub"].host}
        os.environ.update(env)  # the direct runs' Pub/Sub client, in this process
        for run, (label, output, batch, config) in enumerate(cases(svc), 1):
            n = min(args.n, SQS_MAX) if output == "awssqs" else args.n
            delivery = {"delivery": {"initialbackoff": "50ms", "maxbackoff": "1s"}}
            hub = run_case(Path(tmp), output, {**config(), **delivery}, n, run, env)
            direct = run_direct(Path(tmp), output, config(), n, run + 1000, batch)
            rows.append((label, batch, n, hub, direct))
            print(f"{label:22s} batch {batch:3d}: hub {hub['rate']:7.0f}/s, "
                  f"direct {direct['rate']:7.0f}/s ({n} alerts)", flush=True)
    print(f"\nalerts/s delivered to local services, {CONCURRENCY} sends in flight; "
          "baseline = the same output driven directly, without the hub")
    print(f"{'output':22s} {'batch':>5s} {'alerts':>6s} {'hub/s':>8s} {'direct/s':>9s} "
          f"{'hub/direct':>10s}")
    for label, batch, n, hub, direct in rows:
        print(f"{label:22s} {batch:5d} {n:6d} {hub['rate']:8.0f} {direct['rate']:9.0f} "
              f"{hub['rate'] / direct['rate']:9.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
