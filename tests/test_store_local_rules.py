"""The local rules file in the store (the UI's exceptions), on every backend: a compare-and-set
on its version, kept across a reopen, and concurrent saves from two hubs that lose nothing."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import yaml

from sidekick.alert import Alert, Priority
from sidekick.local_rules import HEADER, LocalRules
from sidekick.rule_exceptions import exception_for
from sidekick.store.base import LocalRulesDoc, Store


def exception(n: int) -> dict:
    alert = Alert(rule="Tricky", priority=Priority.WARNING, time_ns=1,
                  output_fields={"proc.name": f"proc-{n}"})
    return exception_for(alert, ["proc.name"])[0]


def values(text: str) -> list[list[str]]:
    [item] = yaml.safe_load(text)
    return item["exceptions"][0]["values"]


async def test_a_save_needs_the_current_version(
    store: Store, store_factory: Callable[..., Store]
) -> None:
    assert await store.local_rules() == LocalRulesDoc(0, "")
    assert not await store.save_local_rules(1, "ahead")
    assert await store.save_local_rules(0, "one")
    assert await store.local_rules() == LocalRulesDoc(1, "one")
    assert not await store.save_local_rules(0, "stale")  # another save came first
    assert await store.local_rules() == LocalRulesDoc(1, "one")
    text = "# ünïcode ✓ and a NUL-free\n- rule: x\n" * 1000
    assert await store.save_local_rules(1, text)
    await store.close()
    again = store_factory("b")  # reopened: kept (SQLite file, Redis keys)
    await again.open()
    try:
        assert await again.local_rules() == LocalRulesDoc(2, text)
    finally:
        await again.close()
    await store.open()  # for the fixture to close


async def test_of_saves_racing_on_one_version_exactly_one_wins(
    store_factory: Callable[..., Store],
) -> None:
    stores = [store_factory("b"), store_factory("c")]
    for s in stores:
        await s.open()
    try:
        for version in range(5):
            results = await asyncio.gather(
                *(s.save_local_rules(version, f"v{version + 1} by {i}")
                  for i, s in enumerate(stores) for _ in range(3)))
            assert sum(results) == 1
            doc = await stores[1].local_rules()
            assert doc.version == version + 1 and doc.text.startswith(f"v{version + 1} by ")
    finally:
        for s in stores:
            await s.close()


async def test_concurrent_exceptions_from_two_hubs_all_end_up_in_the_file(
    store_factory: Callable[..., Store], tmp_path: Path,
) -> None:
    stores = [store_factory("b"), store_factory("c")]
    for s in stores:
        await s.open()
    try:
        hubs = [LocalRules(s, tmp_path / f"hub{i}" / "local.yaml") for i, s in enumerate(stores)]
        for hub in hubs:
            await hub.start()
        assert not hubs[0].path.exists()  # nothing saved yet: no file written
        added = await asyncio.gather(*(hubs[n % 2].add(exception(n)) for n in range(40)))
        assert all(added)
        doc = await stores[0].local_rules()
        assert doc.version == 40
        assert sorted(values(doc.text)) == sorted([f"proc-{n}"] for n in range(40))
        assert doc.text.startswith(HEADER.format(path=hubs[0].path)) or doc.text.startswith(
            HEADER.format(path=hubs[1].path))
        # A repeat changes nothing, on either hub.
        assert not await hubs[1].add(exception(0))
        assert (await stores[1].local_rules()).version == 40
        # Each hub's file holds the version it saved last; at start, the newest.
        for hub in hubs:
            assert values(hub.path.read_text())
        late = LocalRules(stores[1], tmp_path / "hub-restarted" / "local.yaml")
        await late.start()
        assert late.path.read_text() == doc.text
    finally:
        for s in stores:
            await s.close()


async def test_a_copy_that_cannot_be_written_does_not_lose_the_save(
    store: Store, tmp_path: Path,
) -> None:
    (tmp_path / "not-a-dir").write_text("")
    hub = LocalRules(store, tmp_path / "not-a-dir" / "local.yaml")
    await hub.start()
    assert await hub.add(exception(1))
    assert hub.file_error is not None and "not-a-dir" in hub.file_error
    assert values((await store.local_rules()).text) == [["proc-1"]]
    hub.path = tmp_path / "fixed" / "local.yaml"  # writable again: the next save copies all
    assert await hub.add(exception(2))
    assert hub.file_error is None
    assert values(hub.path.read_text()) == [["proc-1"], ["proc-2"]]
