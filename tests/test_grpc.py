"""gRPC ingest against a real grpc.aio server on loopback (the hub's store is a dict here)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import orjson
import pytest
from grpc_health.v1 import health_pb2

from sidekick import grpc_server
from sidekick.alert import Alert, AlertError, Priority, parse_time_ns
from sidekick.broadcast import Broadcaster
from sidekick.grpc_server import GrpcSetupError, GrpcTls, start_grpc_server
from sidekick.proto import lanner_pb2
from sidekick.proto.convert import alert_from_proto, alert_to_proto
from tests.certs import Pki, make_pki
from tests.grpc_client import ClientTls, HubClient, requests, take
from tests.support import free_port

EXACT_FIELDS = {
    "evt.time": 1700000000123456789,
    "u64.max": 2**64 - 1,
    "i64.min": -(2**63),
    "float": 0.1,
    "float.big": 1.7976931348623157e308,
    "float.tiny": 5e-324,
    "float.whole": 2.0,
    "bool.true": True,
    "bool.false": False,
    "null": None,
    "proc.cmdline": "cat /etc/shadow — naïve 日本語 🦅 \u0000 \"quoted\"",
    "list": [1, "two", 3.5, None, False],
    "empty": "",
}


def make_alert(
    n: int = 0, priority: Priority = Priority.WARNING, uuid: str | None = None, **fields: object
) -> Alert:
    return Alert(
        rule="Read sensitive file",
        priority=priority,
        time_ns=parse_time_ns("2024-05-06T07:08:09.123456789Z") + n,
        output_fields={"proc.pid": 1000 + n, "fd.name": "/etc/shadow", **fields},
        output=f"Sensitive file opened (n={n})",
        tags=["T1555", "filesystem"],
        hostname="node-1",
        uuid=f"uuid-{n}" if uuid is None else uuid,
    )


@dataclass
class DictStore:
    """The in-test ``accept``: stores alerts by uuid, says which were new, and (like the hub's)
    offers the new ones to the broadcaster."""

    broadcaster: Broadcaster | None = None
    alerts: dict[str, Alert] = field(default_factory=dict)
    calls: list[list[str]] = field(default_factory=list)

    async def accept(self, alerts: list[Alert]) -> list[bool]:
        self.calls.append([a.uuid for a in alerts])
        fresh = []
        for alert in alerts:
            fresh.append(alert.uuid not in self.alerts)
            self.alerts.setdefault(alert.uuid, alert)
        if self.broadcaster is not None:
            self.broadcaster.publish([a for a, new in zip(alerts, fresh, strict=True) if new])
        return fresh


@dataclass
class Hub:
    port: int
    store: DictStore
    broadcaster: Broadcaster
    server: grpc.aio.Server

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"


@asynccontextmanager
async def running_hub(
    accept: object = None,
    tls: GrpcTls | None = None,
    token: str | None = None,
    host: str = "127.0.0.1",
) -> AsyncIterator[Hub]:
    broadcaster = Broadcaster()
    store = DictStore(broadcaster)
    port = free_port()
    server = await start_grpc_server(
        accept or store.accept, broadcaster, host, port, tls=tls, token=token
    )
    try:
        yield Hub(port, store, broadcaster, server)
    finally:
        broadcaster.close()
        await server.stop(grace=None)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def mtls_server(pki: Pki) -> GrpcTls:
    return GrpcTls(pki.server_cert, pki.server_key, pki.ca_cert)


def mtls_client(pki: Pki) -> ClientTls:
    return ClientTls(pki.ca_cert, pki.client_cert, pki.client_key)


async def wait_until(predicate: object, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met")
        await asyncio.sleep(0.01)


# -- conversions ----------------------------------------------------------------------------


def test_proto_round_trip_keeps_exact_values() -> None:
    alert = make_alert(1, **EXACT_FIELDS)
    pb = alert_to_proto(alert)
    assert pb.time == "2024-05-06T07:08:09.123456790Z"
    assert pb.priority == "Warning"
    back = alert_from_proto(lanner_pb2.Alert.FromString(pb.SerializeToString()))
    assert back == alert
    for key, value in EXACT_FIELDS.items():
        assert type(back.output_fields[key]) is type(value), key


@pytest.mark.parametrize(
    ("change", "field_name"),
    [
        ({"priority": "Loud"}, "priority"),
        ({"priority": ""}, "priority"),
        ({"time": "yesterday"}, "time"),
        ({"time": ""}, "time"),
        ({"rule": " "}, "rule"),
        ({"output_fields_json": b""}, "output_fields"),
        ({"output_fields_json": b"{not json"}, "output_fields"),
        ({"output_fields_json": b"[1, 2]"}, "output_fields"),
        ({"output_fields_json": b"{}"}, "output_fields"),
        ({"output_fields_json": b'{"a": {"b": 1}}'}, "output_fields.a"),
        ({"uuid": "u" * 129}, "uuid"),
    ],
)
def test_from_proto_names_the_wrong_field(change: dict[str, object], field_name: str) -> None:
    pb = alert_to_proto(make_alert())
    for key, value in change.items():
        setattr(pb, key, value)
    with pytest.raises(AlertError) as info:
        alert_from_proto(pb)
    assert info.value.field == field_name


def _from_dict_of(pb: lanner_pb2.Alert) -> Alert:
    """What alert_from_proto must agree with: Alert.from_dict on the same values."""
    raw = pb.output_fields_json
    if not raw:
        raise AlertError("output_fields", "is required (output_fields_json is empty)")
    try:
        fields = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise AlertError("output_fields", f"output_fields_json is not valid JSON: {exc}") from None
    if not isinstance(fields, dict):
        raise AlertError("output_fields", "output_fields_json must be a JSON object")
    return Alert.from_dict({
        "uuid": pb.uuid, "output": pb.output, "priority": pb.priority, "rule": pb.rule,
        "time": pb.time, "output_fields": fields, "source": pb.source, "tags": list(pb.tags),
        "hostname": pb.hostname,
    })


@pytest.mark.parametrize(
    "change",
    [
        {},
        {"time": "2024-05-06T07:08:09.123456789z"},
        {"time": "2024-05-06 07:08:09.123456789Z"},
        {"time": "2024-05-06t07:08:09.000000000Z"},
        {"time": "2024-05-06T07:08:09.12345Z"},
        {"time": "2024-05-06T07:08:09Z"},
        {"time": "2024-05-06T07:08:09.123456789+02:00"},
        {"time": "2024-05-06T07:08:09.123456789+24:00"},
        {"time": "2016-12-31T23:59:60.999999999Z"},  # leap second
        {"time": "2262-04-11T23:47:16.854775807Z"},  # the last representable ns
        {"time": "2262-04-11T23:47:16.854775808Z"},
        {"time": "1969-12-31T23:59:59.999999999Z"},
        {"time": "2024-02-30T07:08:09.123456789Z"},
        {"time": "2024-13-06T07:08:09.123456789Z"},
        {"time": "2024-05-06T24:08:09.123456789Z"},
        {"time": "2024-05-06T07:08:09.1234567890Z"},
        {"time": "2024-05-06T07:08:09.12345678xZ"},
        {"time": "2024-05-06T07:08:09.12345678\u0663Z"},  # a non-ASCII digit
        {"time": "2024-05-06T07:08:09.12345678\u00b2Z"},  # superscript two
        {"time": "2024-05-06T07:08:09,123456789Z"},
        {"time": "2024-05-06T07:08:09.123456789 "},
        {"time": "\u0662024-05-06T07:08:09.123456789Z"},  # a non-ASCII digit in the date
        {"time": " 2024-05-06T07:08:09.123456789Z"},
        {"time": ""},
        {"priority": "warning"},
        {"priority": "INFO"},
        {"priority": " Critical "},
        {"priority": "iNfO"},
        {"priority": "Informational\n"},
        {"priority": "Loud"},
        {"rule": ""},
        {"rule": "\t"},
        {"rule": "", "priority": "Loud"},  # the first wrong field wins
        {"priority": "Loud", "time": "never"},
        {"time": "never", "output_fields_json": b'{"a": {}}'},
        {"output_fields_json": b'{"a": [1, "x", null, true, 2.5]}'},
        {"output_fields_json": b'{"a": [1, [2]]}'},
        {"output_fields_json": b'{"a": [{"b": 1}]}'},
        {"output_fields_json": b'{"a": 1, "b": {"c": 2}}'},
        {"output_fields_json": b"{}"},
        {"output_fields_json": b"null"},
        {"output_fields_json": b'"text"'},
        {"output_fields_json": b'{"big": 18446744073709551615, "neg": -9223372036854775808}'},
        {"uuid": "u" * 128},
        {"uuid": "u" * 129},
        {"uuid": ""},
        {"source": ""},
        {"source": "k8s_audit"},
        {"tags": ["b", "a", "c"]},
        {"tags": []},
        {"hostname": "", "output": ""},
    ],
)
def test_from_proto_agrees_with_from_dict(change: dict[str, object]) -> None:
    pb = alert_to_proto(make_alert(3))
    for key, value in change.items():
        if key == "tags":
            del pb.tags[:]
            pb.tags.extend(value)  # type: ignore[arg-type]
        else:
            setattr(pb, key, value)
    try:
        expected: Alert | tuple[str, str] = _from_dict_of(pb)
    except AlertError as exc:
        expected = (exc.field, exc.message)
    try:
        got: Alert | tuple[str, str] = alert_from_proto(pb)
    except AlertError as exc:
        got = (exc.field, exc.message)
    assert got == expected
    if isinstance(got, Alert):  # twice: the second one may come from the per-second cache
        assert alert_from_proto(pb) == expected


def test_from_proto_defaults() -> None:
    pb = alert_to_proto(make_alert(uuid=""))
    pb.source = ""
    pb.priority = "info"
    alert = alert_from_proto(pb)
    assert alert.uuid == ""
    assert alert.source == "syscalls"
    assert alert.priority is Priority.INFORMATIONAL


# -- broadcaster ----------------------------------------------------------------------------


async def test_broadcaster_filters_and_drops_oldest_when_full() -> None:
    broadcaster = Broadcaster(queue_size=3)
    async with broadcaster.subscribe("error") as feed, broadcaster.subscribe() as everything:
        assert broadcaster.subscriber_count == 2
        alerts = [make_alert(i, Priority.CRITICAL if i % 2 else Priority.NOTICE) for i in range(10)]
        broadcaster.publish(alerts)  # returns at once: nobody is reading yet
        assert len(feed) == 3 and feed.dropped == 2  # criticals 1,3,5,7,9: kept 5,7,9
        assert everything.dropped == 7
        assert broadcaster.dropped == 9
        assert [a.uuid for a in await feed.next_batch()] == ["uuid-5", "uuid-7", "uuid-9"]
        broadcaster.publish([make_alert(11, Priority.EMERGENCY)])
        assert (await anext(feed)).uuid == "uuid-11"
        assert everything.dropped == 8  # 7 made room for 11
        broadcaster.close()
        assert [a.uuid async for a in everything] == ["uuid-8", "uuid-9", "uuid-11"]
        assert [a async for a in feed] == []
    assert broadcaster.subscriber_count == 0


async def test_broadcaster_rejects_unknown_priority() -> None:
    with pytest.raises(ValueError, match="unknown priority"):
        async with Broadcaster().subscribe("loud"):
            pass


# -- publish --------------------------------------------------------------------------------


async def test_round_trip_exact_output_fields() -> None:
    async with running_hub() as hub, HubClient(hub.target) as client:
        feed = client.subscribe()
        await wait_until(lambda: hub.broadcaster.subscriber_count == 1)
        sent = make_alert(7, **EXACT_FIELDS)
        acks = await client.publish([[sent]])
        assert [(a.batch_id, a.accepted, a.duplicates, len(a.rejected)) for a in acks] == [
            (1, 1, 0, 0)
        ]
        stored = hub.store.alerts["uuid-7"]
        assert stored == sent
        assert orjson.dumps(stored.output_fields) == orjson.dumps(sent.output_fields)
        for key, value in EXACT_FIELDS.items():
            assert type(stored.output_fields[key]) is type(value), key
        (received,) = await asyncio.wait_for(take(feed, 1), 5)
        assert alert_from_proto(received) == sent
        feed.cancel()


async def test_acks_in_order_and_bounded_read_ahead(monkeypatch: pytest.MonkeyPatch) -> None:
    validated: list[int] = []
    real_validate = grpc_server._validate

    def spy(request: lanner_pb2.PublishRequest) -> object:
        validated.append(request.batch_id)
        return real_validate(request)

    monkeypatch.setattr(grpc_server, "_validate", spy)
    store = DictStore()
    release = asyncio.Event()
    started: list[str] = []
    in_accept = 0
    max_in_accept = 0

    async def slow_accept(alerts: list[Alert]) -> list[bool]:
        nonlocal in_accept, max_in_accept
        started.append(alerts[0].uuid)
        in_accept += 1
        max_in_accept = max(max_in_accept, in_accept)
        try:
            if alerts[0].uuid == "uuid-100":
                await release.wait()  # hold the first batch
            else:
                await asyncio.sleep(0.001 * (len(started) % 3))
            return await store.accept(alerts)
        finally:
            in_accept -= 1

    limit = grpc_server.MAX_IN_FLIGHT
    async with running_hub(accept=slow_accept) as hub, HubClient(hub.target) as client:
        batches = [[make_alert(100 + 10 * b + i) for i in range(5)] for b in range(20)]
        call = client.stub.Publish(iter(requests(batches, first_batch_id=41)))
        acks: list[lanner_pb2.PublishAck] = []

        async def read_acks() -> None:
            async for ack in call:
                acks.append(ack)

        reading = asyncio.create_task(read_acks())
        # While batch 41 is held, the next ones are accepted alongside it, and one more is read
        # and validated; then the server stops reading. Nothing is acked before 41.
        await wait_until(lambda: len(validated) == limit + 1 and len(store.calls) == limit - 1)
        await asyncio.sleep(0.2)
        assert len(validated) == limit + 1
        assert len(started) == limit
        assert acks == []
        release.set()
        await asyncio.wait_for(reading, 10)
    assert [a.batch_id for a in acks] == list(range(41, 61))
    assert all(a.accepted == 5 and a.duplicates == 0 for a in acks)
    # Accepted several batches at a time, never more than the limit, started in the order sent.
    assert 2 <= max_in_accept <= limit
    assert started == [f"uuid-{100 + 10 * b}" for b in range(20)]


async def test_batches_overlap_in_accept_and_acks_stay_in_order() -> None:
    store = DictStore()
    inside: list[int] = []
    two_inside = asyncio.Event()
    second_done = asyncio.Event()

    async def accept(alerts: list[Alert]) -> list[bool]:
        batch = int(alerts[0].uuid.split("-")[1]) // 10
        inside.append(batch)
        if len(inside) == 2:
            two_inside.set()
        # Proceeds only once two batches are inside accept together: one at a time would hang.
        await asyncio.wait_for(two_inside.wait(), 5)
        if batch == 1:
            await asyncio.wait_for(second_done.wait(), 5)  # the first batch finishes last
        fresh = await store.accept(alerts)
        if batch == 2:
            second_done.set()
        return fresh

    async with running_hub(accept=accept) as hub, HubClient(hub.target) as client:
        batches = [[make_alert(10 * b + i) for i in range(3)] for b in (1, 2, 3)]
        acks = await client.publish(batches)
    assert inside[:2] == [1, 2]
    assert store.calls[0][0] == "uuid-20"  # batch 2 was stored first...
    assert [(a.batch_id, a.accepted) for a in acks] == [(1, 3), (2, 3), (3, 3)]  # ...acked 2nd


async def test_a_uuid_in_two_concurrent_batches_is_new_once() -> None:
    store = DictStore()
    both_inside = asyncio.Event()
    calls = 0

    async def accept(alerts: list[Alert]) -> list[bool]:
        nonlocal calls
        calls += 1
        if calls == 2:
            both_inside.set()
        await asyncio.wait_for(both_inside.wait(), 5)
        return await store.accept(alerts)

    async with running_hub(accept=accept) as hub, HubClient(hub.target) as client:
        acks = await client.publish([[make_alert(1), make_alert(2)], [make_alert(2)]])
    assert [(a.accepted, a.duplicates) for a in acks] == [(2, 0), (0, 1)]
    assert sorted(store.alerts) == ["uuid-1", "uuid-2"]


async def test_duplicates_are_counted() -> None:
    async with running_hub() as hub, HubClient(hub.target) as client:
        batch = [make_alert(i) for i in range(4)]
        first = await client.publish([batch])
        # Resent after a "reconnect", plus one new alert and a repeat inside the batch.
        again = await client.publish([[*batch, make_alert(9), make_alert(9)]], first_batch_id=2)
    assert (first[0].accepted, first[0].duplicates) == (4, 0)
    assert (again[0].batch_id, again[0].accepted, again[0].duplicates) == (2, 1, 5)
    assert len(hub.store.alerts) == 5


async def test_invalid_alerts_reported_others_accepted() -> None:
    good = alert_to_proto(make_alert(1))
    no_uuid = alert_to_proto(make_alert(2, uuid=""))
    bad_priority = alert_to_proto(make_alert(3))
    bad_priority.priority = "Loud"
    bad_time = alert_to_proto(make_alert(4))
    bad_time.time = "2024-13-01T00:00:00Z"
    bad_json = alert_to_proto(make_alert(5))
    bad_json.output_fields_json = b"{\"proc.pid\": 12"
    nested = alert_to_proto(make_alert(6))
    nested.output_fields_json = b'{"proc": {"pid": 1}}'
    async with running_hub() as hub, HubClient(hub.target) as client:
        (ack,) = await client.publish([[good, bad_priority, no_uuid, bad_time, bad_json, nested]])
    assert (ack.accepted, ack.duplicates) == (2, 0)
    assert [(r.index, r.field) for r in ack.rejected] == [
        (1, "priority"),
        (3, "time"),
        (4, "output_fields"),
        (5, "output_fields.proc"),
    ]
    assert "Loud" in ack.rejected[0].message
    assigned = [u for u in hub.store.alerts if u != "uuid-1"]
    assert len(assigned) == 1 and len(assigned[0]) == 36  # the server gave it a uuid4
    assert hub.store.alerts[assigned[0]].output_fields["proc.pid"] == 1002


async def test_empty_and_all_invalid_batches_are_acked() -> None:
    bad = alert_to_proto(make_alert(1))
    bad.rule = ""
    async with running_hub() as hub, HubClient(hub.target) as client:
        acks = await client.publish([[], [bad], [make_alert(2)]])
    assert [(a.batch_id, a.accepted, len(a.rejected)) for a in acks] == [(1, 0, 0), (2, 0, 1),
                                                                         (3, 1, 0)]
    assert hub.store.calls == [["uuid-2"]]  # accept is not called for nothing


async def test_accept_failure_fails_the_stream_without_ack() -> None:
    store = DictStore()
    third_stored = asyncio.Event()
    failed = False

    async def flaky(alerts: list[Alert]) -> list[bool]:
        nonlocal failed
        if alerts[0].uuid == "uuid-2" and not failed:
            # Fails (once) only after the later batch 3 was stored alongside it.
            await asyncio.wait_for(third_stored.wait(), 5)
            failed = True
            raise OSError("disk full")
        fresh = await store.accept(alerts)
        if alerts[0].uuid == "uuid-3":
            third_stored.set()
        return fresh

    async with running_hub(accept=flaky) as hub, HubClient(hub.target) as client:
        acks = []
        call = client.stub.Publish(iter(
            lanner_pb2.PublishRequest(batch_id=b, alerts=[alert_to_proto(make_alert(b))])
            for b in range(1, 5)
        ))
        with pytest.raises(grpc.aio.AioRpcError) as info:
            async for ack in call:
                acks.append(ack.batch_id)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        # Neither the failed batch nor any later one is acked, though 3 was stored.
        assert acks == [1]
        assert "uuid-3" in store.alerts
        # The server is fine: the sender reconnects and resends; 3 is a duplicate.
        again = await client.publish([[make_alert(b)] for b in (2, 3, 4)], 2)
        assert [(a.batch_id, a.accepted, a.duplicates) for a in again[:2]] == [(2, 1, 0),
                                                                             (3, 0, 1)]
        assert again[2].batch_id == 4  # stored with 3 before the stream ended, or not


async def test_accepts_in_flight_finish_when_the_client_goes_away() -> None:
    store = DictStore()
    release = asyncio.Event()
    entered = 0

    async def held(alerts: list[Alert]) -> list[bool]:
        nonlocal entered
        entered += 1
        await release.wait()
        return await store.accept(alerts)

    async with running_hub(accept=held) as hub, HubClient(hub.target) as client:
        call = client.stub.Publish(iter(requests([[make_alert(1)], [make_alert(2)]])))
        await wait_until(lambda: entered == 2)
        call.cancel()
        await asyncio.sleep(0.1)  # the server sees the cancellation
        release.set()
        # Not cancelled half-way: both batches are stored (and a resend would be duplicates).
        await wait_until(lambda: len(store.alerts) == 2)


async def test_malformed_stream_does_not_crash_the_server() -> None:
    async with running_hub() as hub, HubClient(hub.target) as client:
        raw = client.channel.stream_stream(
            "/lanner.v1.Hub/Publish",
            request_serializer=lambda b: b,
            response_deserializer=lanner_pb2.PublishAck.FromString,
        )
        good = lanner_pb2.PublishRequest(batch_id=1, alerts=[alert_to_proto(make_alert(1))])
        garbage = [
            good.SerializeToString(),
            b"\xff\xff\xff\xff\xff\xff",  # not a protobuf message
            good.SerializeToString(),
        ]
        call = raw(iter(garbage), timeout=10)
        acks = []
        with pytest.raises(grpc.aio.AioRpcError) as info:
            async for ack in call:
                acks.append(ack.batch_id)
        # Batches read before the bad message are still accepted and acked.
        assert acks == [1]
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        # Invalid UTF-8 in a string field is also undecodable (proto3 strings are UTF-8).
        bad_utf8 = lanner_pb2.PublishRequest(batch_id=5).SerializeToString() + (
            b"\x12\x05" + b"\x0a\x03\xff\xfe\xfd"  # alerts[0].uuid = invalid UTF-8
        )
        with pytest.raises(grpc.aio.AioRpcError) as info:
            async for _ in raw(iter([bad_utf8]), timeout=10):
                pass
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        # Still serving.
        acks2 = await client.publish([[make_alert(2)]])
        assert [a.accepted for a in acks2] == [1]
        assert await client.health() == health_pb2.HealthCheckResponse.SERVING


# -- subscribe / health ---------------------------------------------------------------------


async def test_subscribe_with_min_priority() -> None:
    async with running_hub() as hub, HubClient(hub.target) as client:
        feed = client.subscribe("Error")
        everything = client.subscribe()
        await wait_until(lambda: hub.broadcaster.subscriber_count == 2)
        alerts = [make_alert(i, priority) for i, priority in enumerate(Priority)]
        await client.publish([alerts[:4], alerts[4:]])
        got = await asyncio.wait_for(take(feed, 4), 5)
        assert [a.priority for a in got] == ["Error", "Critical", "Alert", "Emergency"]
        assert [a.uuid for a in got] == ["uuid-4", "uuid-5", "uuid-6", "uuid-7"]
        all_got = await asyncio.wait_for(take(everything, 8), 5)
        assert [a.uuid for a in all_got] == [f"uuid-{i}" for i in range(8)]
        # A duplicate is not fanned out again.
        await client.publish([[alerts[7], make_alert(20, Priority.ALERT)]], 3)
        (next_one,) = await asyncio.wait_for(take(feed, 1), 5)
        assert next_one.uuid == "uuid-20"
        feed.cancel()
        everything.cancel()
        await wait_until(lambda: hub.broadcaster.subscriber_count == 0)

        bad = client.subscribe("loud")
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await take(bad, 1)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "min_priority" in (info.value.details() or "")


async def test_health_serving() -> None:
    async with running_hub() as hub, HubClient(hub.target) as client:
        assert await client.health("") == health_pb2.HealthCheckResponse.SERVING
        assert await client.health("lanner.v1.Hub") == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await client.health("no.such.Service")
        assert info.value.code() == grpc.StatusCode.NOT_FOUND


# -- token ----------------------------------------------------------------------------------


async def test_token_required(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    token = "s3cret-token-value"
    async with running_hub(token=token) as hub:
        for presented in (None, "wrong", token + "x", "", f"{token[:-1]}"):
            async with HubClient(hub.target, token=presented) as client:
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await client.publish([[make_alert(1)]])
                assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await take(client.subscribe(), 1)
                assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
                # Probes cannot send metadata: health stays open.
                assert await client.health() == health_pb2.HealthCheckResponse.SERVING
        # Not "Bearer": refused.
        async with HubClient(hub.target) as client:
            call = client.stub.Publish(iter([]), metadata=(("authorization", token),))
            with pytest.raises(grpc.aio.AioRpcError) as info:
                [a async for a in call]
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert hub.store.alerts == {}
        async with HubClient(hub.target, token=token) as client:
            acks = await client.publish([[make_alert(1)], [make_alert(2)]])
            assert [a.accepted for a in acks] == [1, 1]
    assert token not in caplog.text


# -- TLS ------------------------------------------------------------------------------------


async def test_mutual_tls_accepts_a_client_cert_from_the_ca(pki: Pki) -> None:
    async with running_hub(tls=mtls_server(pki)) as hub:
        async with HubClient(hub.target, tls=mtls_client(pki)) as client:
            acks = await client.publish([[make_alert(1)]])
            assert [a.accepted for a in acks] == [1]
            assert await client.health() == health_pb2.HealthCheckResponse.SERVING
        async with HubClient(f"localhost:{hub.port}", tls=mtls_client(pki)) as client:
            assert await client.health() == health_pb2.HealthCheckResponse.SERVING


@pytest.mark.parametrize("which", ["no client cert", "cert from another CA", "plaintext"])
async def test_mutual_tls_refuses_other_clients(pki: Pki, which: str) -> None:
    tls: ClientTls | None
    if which == "no client cert":
        tls = ClientTls(pki.ca_cert)
    elif which == "cert from another CA":
        tls = ClientTls(pki.ca_cert, pki.other_client_cert, pki.other_client_key)
    else:
        tls = None
    async with running_hub(tls=mtls_server(pki)) as hub:
        async with HubClient(hub.target, tls=tls) as client:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await client.publish([[make_alert(1)]], timeout=10)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await client.health(timeout=10)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        assert hub.store.alerts == {}


async def test_client_refuses_a_server_from_another_ca(pki: Pki) -> None:
    async with running_hub(tls=mtls_server(pki)) as hub:
        tls = ClientTls(pki.other_ca_cert, pki.client_cert, pki.client_key)
        async with HubClient(hub.target, tls=tls) as client:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await client.health(timeout=10)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_server_tls_without_client_certs(pki: Pki) -> None:
    tls = GrpcTls(pki.server_cert, pki.server_key)
    async with running_hub(tls=tls) as hub, HubClient(hub.target, ClientTls(pki.ca_cert)) as client:
        assert [a.accepted for a in await client.publish([[make_alert(1)]])] == [1]


async def test_mtls_and_token_together_10000_alerts_one_stream(pki: Pki) -> None:
    token = "t0ken"
    batches = [[make_alert(b * 500 + i) for i in range(500)] for b in range(20)]
    async with (
        running_hub(tls=mtls_server(pki), token=token) as hub,
        HubClient(hub.target, tls=mtls_client(pki), token=token) as client,
    ):
        started = time.perf_counter()
        acks = await client.publish(batches)
        elapsed = time.perf_counter() - started
    assert [a.batch_id for a in acks] == list(range(1, 21))
    assert sum(a.accepted for a in acks) == 10_000
    assert not any(a.rejected or a.duplicates for a in acks)
    assert len(hub.store.alerts) == 10_000
    print(f"10,000 alerts over one mTLS stream: {10_000 / elapsed:,.0f} alerts/s")


# -- setup errors ---------------------------------------------------------------------------


async def test_unreadable_cert_file_is_a_clear_error(tmp_path: Path, pki: Pki) -> None:
    missing = str(tmp_path / "nope.crt")
    with pytest.raises(GrpcSetupError, match=r"grpc\.certfile .*nope\.crt"):
        await start_grpc_server(
            DictStore().accept, Broadcaster(), "127.0.0.1", free_port(),
            tls=GrpcTls(missing, pki.server_key),
        )


async def test_port_in_use_is_a_clear_error() -> None:
    async with running_hub() as hub:
        with pytest.raises(GrpcSetupError, match="cannot listen"):
            await start_grpc_server(DictStore().accept, Broadcaster(), "127.0.0.1", hub.port)
