"""The exceptions saved in the UI live in the hub's store: replicas on one Redis share them,
a replica restarted on an empty data dir still has them, concurrent saves lose nothing, each
hub copies them to its data dir, a file from before is imported, and detectors fetch them over
gRPC (``LocalRules``), with the same token and mutual TLS as Publish."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
import yaml

from sidekick.local_rules import FILE_NAME, HEADER, dump
from sidekick.proto import lanner_pb2
from tests.certs import make_pki
from tests.grpc_client import ClientTls, HubClient
from tests.hubproc import HubProcess, falco_alert

TOKEN = "rules-token"
RULE = "Terminal shell in container"


def alert(n: int) -> dict[str, Any]:
    a = falco_alert(n)
    a["output_fields"]["proc.name"] = f"proc-{n}"
    return a


def post_alerts(hub: HubProcess, ns: range) -> None:
    with httpx.Client(base_url=hub.url) as api:
        for n in ns:
            assert api.post("/", json=alert(n)).status_code == 200


def save(hub: HubProcess, n: int) -> dict[str, Any]:
    reply = httpx.post(f"{hub.url}/api/v1/exceptions",
                       json={"uuid": alert(n)["uuid"], "fields": ["proc.name"]}, timeout=30)
    assert reply.status_code == 200, reply.text
    return reply.json()


def file_of(hub: HubProcess) -> str:
    reply = httpx.get(f"{hub.url}/api/v1/exceptions/file")
    assert reply.status_code == 200, reply.text
    return reply.text


def saved_names(text: str) -> list[str]:
    """The proc.name values excepted in a local rules file, sorted."""
    names = []
    for item in yaml.safe_load(text) or []:
        for exception in item["exceptions"]:
            names += [row[0] for row in exception["values"]]
    return sorted(names)


def local_rules(hub: HubProcess, known: int, token: str | None = None,
                tls: ClientTls | None = None) -> lanner_pb2.LocalRulesReply:
    async def call() -> lanner_pb2.LocalRulesReply:
        async with HubClient(f"127.0.0.1:{hub.grpcport}", tls=tls, token=token) as client:
            return await client.stub.LocalRules(
                lanner_pb2.LocalRulesRequest(known_version=known), metadata=client.metadata,
                timeout=10)

    return asyncio.run(call())


def test_replicas_share_the_exceptions_and_a_restart_on_an_empty_datadir_keeps_them(
    tmp_path: Path, redis_url: str,
) -> None:
    config = {"store": "redis", "redis": {"url": redis_url}}
    a = HubProcess(tmp_path, config, name="a", grpc=True)
    b = HubProcess(tmp_path, config, name="b", grpc=True)
    with a, b:
        post_alerts(a, range(0, 3))
        post_alerts(b, range(3, 6))
        assert httpx.get(f"{a.url}/api/v1/exceptions/file").status_code == 404  # none yet
        assert save(a, 0)["added"]
        by_b = save(b, 4)
        assert by_b["added"] and by_b["version"] == 2
        assert saved_names(by_b["yaml"]) == ["proc-0", "proc-4"]
        assert file_of(a) == file_of(b) == by_b["yaml"]
        assert not save(a, 4)["added"]  # b's, seen by a
        # Each copied the file to its data dir as it saved.
        copy_a = tmp_path / "a-data" / FILE_NAME
        copy_b = tmp_path / "b-data" / FILE_NAME
        assert saved_names(copy_a.read_text()) == ["proc-0"]
        assert copy_b.read_text() == by_b["yaml"]
        # Detectors asking either replica get the same.
        reply = local_rules(a, 1)
        assert (reply.version, reply.changed, reply.yaml) == (2, True, by_b["yaml"])

        a.stop()
        shutil.rmtree(tmp_path / "a-data")  # an emptyDir: the pod is gone with its files
        a.start()
        assert file_of(a) == by_b["yaml"]
        assert copy_a.read_text() == by_b["yaml"]  # written at start
        assert saved_names(save(a, 1)["yaml"]) == ["proc-0", "proc-1", "proc-4"]
        assert saved_names(file_of(b)) == ["proc-0", "proc-1", "proc-4"]
    a.stop()


def test_concurrent_saves_on_two_replicas_lose_nothing(tmp_path: Path, redis_url: str) -> None:
    config = {"store": "redis", "redis": {"url": redis_url}}
    count = 24
    with HubProcess(tmp_path, config, name="a") as a, HubProcess(tmp_path, config, name="b") as b:
        post_alerts(a, range(count))

        async def save_all() -> list[dict[str, Any]]:
            async with httpx.AsyncClient(timeout=60) as client:
                async def one(n: int) -> dict[str, Any]:
                    hub = (a, b)[n % 2]
                    reply = await client.post(
                        f"{hub.url}/api/v1/exceptions",
                        json={"uuid": alert(n)["uuid"], "fields": ["proc.name"]})
                    assert reply.status_code == 200, reply.text
                    return reply.json()

                return await asyncio.gather(*(one(n) for n in range(count)))

        replies = asyncio.run(save_all())
        assert all(r["added"] for r in replies)
        # Every save made a version of its own, and the last file has them all.
        assert max(r["version"] for r in replies) == count
        expected = sorted(f"proc-{n}" for n in range(count))
        assert saved_names(file_of(a)) == saved_names(file_of(b)) == expected
        assert file_of(a).startswith("# Exceptions made in the Lanner UI")


def test_a_file_from_before_is_imported_once(tmp_path: Path) -> None:
    legacy = tmp_path / "hub-data" / FILE_NAME
    legacy.parent.mkdir()
    item = {"rule": RULE, "exceptions": [{"name": "lanner_ui_proc_name", "fields": ["proc.name"],
                                          "comps": ["="], "values": [["old-tool"]]}],
            "override": {"exceptions": "append"}}
    legacy.write_text("# saved by an older hub, then edited\n" + dump([item]))
    hub = HubProcess(tmp_path, {}, grpc=True)
    with hub:
        imported = file_of(hub)
        assert imported == HEADER.format(path=legacy) + dump([item])  # as the hub writes it
        assert legacy.read_text() == imported
        assert local_rules(hub, 0).version == 1
        post_alerts(hub, range(1))
        assert saved_names(save(hub, 0)["yaml"]) == ["old-tool", "proc-0"]
    # A restart does not import the file again (the store has it, at version 2).
    with hub:
        assert local_rules(hub, 0).version == 2
        assert saved_names(file_of(hub)) == ["old-tool", "proc-0"]


def test_a_file_with_no_exceptions_is_not_imported(tmp_path: Path) -> None:
    legacy = tmp_path / "hub-data" / FILE_NAME
    legacy.parent.mkdir()
    legacy.write_text(HEADER.format(path=legacy))  # as `make run` leaves it
    with HubProcess(tmp_path, {}, grpc=True) as hub:
        assert httpx.get(f"{hub.url}/api/v1/exceptions/file").status_code == 404
        reply = local_rules(hub, 0)
        assert (reply.version, reply.changed, reply.yaml) == (0, False, "")
        assert legacy.read_text() == HEADER.format(path=legacy)


def test_local_rules_over_grpc_needs_the_token_and_a_client_certificate(tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki")
    good = ClientTls(pki.ca_cert, pki.client_cert, pki.client_key)
    config = {"grpc": {"certfile": pki.server_cert, "keyfile": pki.server_key,
                       "cacertfile": pki.ca_cert, "token": TOKEN}}
    with HubProcess(tmp_path, config, grpc=True) as hub:
        for token, tls, code in [
            (None, good, grpc.StatusCode.UNAUTHENTICATED),
            ("wrong", good, grpc.StatusCode.UNAUTHENTICATED),
            (TOKEN, ClientTls(pki.ca_cert), grpc.StatusCode.UNAVAILABLE),  # no certificate
        ]:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                local_rules(hub, 0, token, tls)
            assert refused.value.code() == code
            assert TOKEN not in (refused.value.details() or "")

        nothing = local_rules(hub, 0, TOKEN, good)
        assert (nothing.version, nothing.changed, nothing.yaml) == (0, False, "")
        # A detector that had a file the hub no longer has (a new store) is told to drop it:
        # a file with only comments.
        gone = local_rules(hub, 3, TOKEN, good)
        assert (gone.version, gone.changed) == (0, True)
        assert gone.yaml.startswith("# Exceptions made in the Lanner UI")
        assert yaml.safe_load(gone.yaml) is None

        post_alerts(hub, range(2))
        save(hub, 0)
        first = local_rules(hub, 0, TOKEN, good)
        assert (first.version, first.changed) == (1, True)
        assert first.yaml == file_of(hub) and saved_names(first.yaml) == ["proc-0"]
        same = local_rules(hub, 1, TOKEN, good)
        assert (same.version, same.changed, same.yaml) == (1, False, "")
        save(hub, 1)
        newer = local_rules(hub, 1, TOKEN, good)
        assert (newer.version, newer.changed) == (2, True)
        assert saved_names(newer.yaml) == ["proc-0", "proc-1"]
        assert TOKEN not in hub.log()
