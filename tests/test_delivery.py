"""Output workers on the real SQLite store: partial batch failures and batch windows."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import ClassVar

from outputs.base import (
    Output,
    OutputConfig,
    PartialFailure,
    PermanentError,
    RetryableError,
)
from sidekick.alert import Alert
from sidekick.config import DeliveryConfig
from sidekick.delivery import OutputWorkers
from sidekick.metrics import Metrics
from sidekick.store.sqlite import SqliteStore
from tests.hubproc import falco_alert

SETTINGS = DeliveryConfig(initialbackoff=0.01, maxbackoff=0.05, leasemargin=5)


class ScriptedOutput(Output):
    """Records every batch; fails the uuids in ``fail`` once each, as a PartialFailure."""

    name: ClassVar[str] = "scripted"
    path: ClassVar[tuple[str, ...]] = ("scripted",)
    Config: ClassVar[type[OutputConfig]] = OutputConfig

    def __init__(self, config: OutputConfig, fail: dict[str, Exception] | None = None) -> None:
        super().__init__(config)
        self.batches: list[list[str]] = []
        self.fail = dict(fail or {})

    @classmethod
    def enabled(cls, config: OutputConfig) -> bool:
        return True

    async def send(self, batch: list[Alert]) -> None:
        uuids = [alert.uuid for alert in batch]
        self.batches.append(uuids)
        failures = {u: self.fail.pop(u) for u in uuids if u in self.fail}
        if failures:
            raise PartialFailure(self.name, failures)  # type: ignore[arg-type]


async def run_workers(
    tmp_path: Path, output: ScriptedOutput, alerts: list[Alert]
) -> SqliteStore:
    """Accept ``alerts`` and run the workers until none is pending."""
    store = SqliteStore(tmp_path / "lanner.db")
    await store.open()
    await store.accept([(alert, [output.name]) for alert in alerts], 600)
    workers = OutputWorkers(output, store, Metrics(), SETTINGS)
    workers.start()
    deadline = time.monotonic() + 10
    while (await store.queue_stats([output.name]))[output.name].pending:
        assert time.monotonic() < deadline, "the queue never drained"
        await asyncio.sleep(0.02)
    await workers.stop(1)
    return store


def alerts(n: int) -> list[Alert]:
    return [Alert.from_dict(falco_alert(i)) for i in range(n)]


async def test_partial_failure_retries_only_the_failed_and_buries_the_permanent(
    tmp_path: Path,
) -> None:
    batch = alerts(4)
    fail = {batch[1].uuid: RetryableError("x: throttled"), batch[2].uuid: PermanentError("x: bad")}
    output = ScriptedOutput(OutputConfig(batchsize=4), fail)
    store = await run_workers(tmp_path, output, batch)
    try:
        assert output.batches[0] == [a.uuid for a in batch]
        assert output.batches[1:] == [[batch[1].uuid]]  # only the retryable one came back
        dead = await store.dead_letters("scripted", 10)
        assert [(d.alert.uuid, d.reason) for d in dead] == [(batch[2].uuid, "x: bad")]
    finally:
        await store.close()


async def test_batch_window_waits_for_alerts_that_arrive_later(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "lanner.db")
    await store.open()
    output = ScriptedOutput(OutputConfig(batchsize=3, batchwindow=2))
    workers = OutputWorkers(output, store, Metrics(), SETTINGS)
    workers.start()
    try:
        first, second, third = alerts(3)
        await store.accept([(first, ["scripted"])], 600)
        await asyncio.sleep(0.3)
        await store.accept([(second, ["scripted"]), (third, ["scripted"])], 600)
        deadline = time.monotonic() + 5
        while not output.batches and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        assert output.batches == [[first.uuid, second.uuid, third.uuid]]
    finally:
        await workers.stop(1)
        await store.close()


async def test_batch_window_sends_a_partial_batch_when_it_closes(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "lanner.db")
    await store.open()
    output = ScriptedOutput(OutputConfig(batchsize=10, batchwindow=0.3))
    workers = OutputWorkers(output, store, Metrics(), SETTINGS)
    workers.start()
    try:
        (only,) = alerts(1)
        await store.accept([(only, ["scripted"])], 600)
        started = time.monotonic()
        while not output.batches and time.monotonic() < started + 5:
            await asyncio.sleep(0.01)
        assert output.batches == [[only.uuid]]
        assert time.monotonic() - started >= 0.25  # it did wait for the window
    finally:
        await workers.stop(1)
        await store.close()
