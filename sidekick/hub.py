"""The hub: accepts alerts from any input, stores them, queues one delivery per output."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import grpc

from outputs import REGISTRY
from outputs.base import Output
from sidekick.aggregation import Aggregation
from sidekick.alert import Alert, now_ns
from sidekick.broadcast import Broadcaster
from sidekick.config import HubConfig
from sidekick.delivery import OutputWorkers
from sidekick.grpc_server import GrpcTls, start_grpc_server
from sidekick.local_rules import LocalRules, local_rules_path
from sidekick.metrics import Metrics
from sidekick.routing import enrich, route
from sidekick.store import make_store
from sidekick.store.base import Store
from sidekick.tasks import cancel_and_wait

log = logging.getLogger("lanner.hub")

# How often ended aggregation windows are looked for: a summary goes out this late at most
# after its window ends (plus the output's queue).
_FLUSH_EVERY_S = 0.5
_FLUSH_CHUNK = 500  # windows closed per store call


class Hub:
    def __init__(self, config: HubConfig, store: Store | None = None) -> None:
        self.config = config
        self.store = store or make_store(
            config.store,
            datadir=Path(config.datadir),
            redis_url=config.redis.url.get_secret_value(),
            replica=config.replica,
        )
        # The exceptions saved in the UI: in the store, copied to a file, served over gRPC.
        self.local_rules = LocalRules(self.store, local_rules_path(config))
        self.metrics = Metrics()
        self.broadcaster = Broadcaster()
        self.outputs: dict[str, Output] = {
            name: REGISTRY[name](output_config, config.public_url())
            for name, output_config in config.outputs.items()
        }
        self.aggregations = {
            name: Aggregation(int(c.aggregatewindow * 1e9), tuple(c.aggregatefields))
            for name, c in config.outputs.items()
            if c.aggregatewindow > 0
        }
        self._workers: list[OutputWorkers] = []
        self._retention: asyncio.Task[None] | None = None
        self._flusher: asyncio.Task[None] | None = None
        self._relay: asyncio.Task[None] | None = None
        self._grpc: grpc.aio.Server | None = None

    async def start(self) -> None:
        await self.store.open()
        await self.local_rules.start()
        for output in self.outputs.values():
            await output.start()
            workers = OutputWorkers(output, self.store, self.metrics, self.config.delivery)
            workers.start()
            self._workers.append(workers)
        self._retention = asyncio.create_task(self._retention_loop(), name="retention")
        # Always, even with no output aggregating now: windows an earlier run left in the
        # store still owe their summaries.
        self._flusher = asyncio.create_task(self._flush_loop(), name="aggregation-flush")
        others = self.store.live_from_others()
        if others is not None:
            self._relay = asyncio.create_task(self._relay_loop(others), name="live-relay")
        if self.config.grpcport:
            self._grpc = await start_grpc_server(
                self.accept_grpc,
                self.broadcaster,
                self.config.listenaddress or "0.0.0.0",
                self.config.grpcport,
                self._grpc_tls(),
                self.config.grpc.token.get_secret_value() or None,
                local_rules=self.local_rules.current,
            )
        log.info(
            "hub started: store=%s outputs=%s", self.config.store, ",".join(self.outputs) or "none"
        )

    def _grpc_tls(self) -> GrpcTls | None:
        tls = self.config.grpc
        if not tls.certfile:
            return None
        return GrpcTls(tls.certfile, tls.keyfile, tls.cacertfile or None)

    async def stop(self) -> None:
        """Stop taking alerts, let in-flight deliveries finish (bounded), close the store."""
        self.broadcaster.close()  # ends Subscribe streams cleanly
        if self._grpc is not None:
            await self._grpc.stop(grace=2.0)
        await asyncio.gather(*(w.stop(self.config.delivery.drain) for w in self._workers))
        await cancel_and_wait(
            *(t for t in (self._retention, self._flusher, self._relay) if t is not None))
        for output in self.outputs.values():
            await output.close()
        await self.store.close()

    async def accept(self, alerts: list[Alert], source: str = "requests") -> list[bool]:
        """Durably accept valid alerts; per alert, False when it was a duplicate (by uuid)."""
        customfields, customtags = self.config.customfields, self.config.customtags
        batch = []
        for alert in alerts:
            alert.ensure_uuid()
            enrich(alert, customfields, customtags)
            batch.append((alert, route(self.config.outputs, alert)))
        result = await self.store.ingest(batch, self.config.dedupwindow, self.aggregations)
        fresh = result.fresh
        accepted = [alert for alert, new in zip(alerts, fresh, strict=True) if new]
        for name, count in result.aggregated.items():
            self.metrics.aggregated.labels(name).inc(count)
        self.metrics.count_events(accepted)
        self.metrics.inputs.labels(source, "accepted").inc(len(alerts))
        if len(accepted) < len(alerts):
            self.metrics.dedup_hits.inc(len(alerts) - len(accepted))
        self.broadcaster.publish(accepted)
        try:
            await self.store.share_live(accepted)
        except Exception as exc:  # the alerts are stored: only other replicas' feeds miss them
            log.warning("could not share %d alerts with the other replicas' live feeds: %s",
                        len(accepted), exc)
        return fresh

    async def accept_grpc(self, alerts: list[Alert]) -> list[bool]:
        return await self.accept(alerts, source="grpc")

    def reject(self, source: str = "requests") -> None:
        self.metrics.inputs.labels(source, "rejected").inc()

    async def _retention_loop(self) -> None:
        retention = self.config.retention
        while True:
            try:
                removed = await self.store.enforce_retention(retention.maxage, retention.maxcount)
                if removed:
                    log.info("retention removed %d event(s)", removed)
            except Exception:
                log.exception("retention failed; will try again")
            await asyncio.sleep(retention.interval)

    async def _relay_loop(self, others: AsyncIterator[list[Alert]]) -> None:
        """Alerts the other replicas accepted, into this replica's live feed."""
        async for alerts in others:
            self.broadcaster.publish(alerts)

    async def _flush_loop(self) -> None:
        while True:
            try:
                closed = _FLUSH_CHUNK
                while closed == _FLUSH_CHUNK:  # a full chunk: more may have ended
                    closed, queued = await self.store.flush_windows(_FLUSH_CHUNK)
                    if queued:
                        log.info("aggregation summaries queued: %s", queued)
            except Exception:
                log.exception("aggregation flush failed; will try again")
            await asyncio.sleep(_FLUSH_EVERY_S)

    async def refresh_gauges(self) -> None:
        """Queue gauges from the store; /metrics calls it, so they are fresh at each scrape."""
        stats = await self.store.queue_stats(list(self.outputs))
        current = now_ns()
        m = self.metrics
        for name, s in stats.items():
            m.queue_depth.labels(name).set(s.pending)
            age = (current - s.oldest_pending_ns) / 1e9 if s.oldest_pending_ns else 0.0
            m.queue_oldest.labels(name).set(max(0.0, age))
            m.dead_letters.labels(name).set(s.dead)
        m.subscriber_drops.set(self.broadcaster.dropped)
