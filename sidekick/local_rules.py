"""The hub's local rules file: the exceptions saved in the UI, for detectors to load after the
rules they extend.

The store keeps it (``Store.local_rules``), versioned, so every replica sees the same file and
it survives a replica's restart; detectors on any node fetch it over gRPC (``LocalRules``). Each
replica also writes a copy to ``local_rules_path`` (``ui.rulesfile``, by default
``<datadir>/lanner_local_rules.yaml``) when it starts and after each save it makes, so a
detector on the same machine can load it as a file::

    lanner detect --rules rules/lanner_rules.yaml <datadir>/lanner_local_rules.yaml

The text is always a whole rules file: ``HEADER`` then the items. A file written before the
store kept it is imported once, when the store has none.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
from pathlib import Path
from typing import Any

import yaml

from sidekick.config import HubConfig
from sidekick.store.base import LocalRulesDoc, Store

log = logging.getLogger("lanner.rules")

FILE_NAME = "lanner_local_rules.yaml"
HEADER = """\
# Exceptions made in the Lanner UI (false positives). Load this file after the rules it
# extends, e.g.: lanner detect --rules rules/lanner_rules.yaml {path}
# Check it with: lanner rules validate rules/lanner_rules.yaml {path}
"""
# A save that lost a race with another replica's is merged again; each round one replica's
# save wins, so this many replicas saving at once all get through.
_MAX_TRIES = 100


class LocalRulesError(Exception):
    """The local rules cannot be read or written; the message names what."""


def local_rules_path(config: HubConfig) -> Path:
    return Path(config.ui.rulesfile or Path(config.datadir) / FILE_NAME)


def dump(items: list[dict[str, Any]]) -> str:
    return yaml.safe_dump(items, sort_keys=False, default_flow_style=None, width=4096,
                          allow_unicode=True)


def merge(items: list[Any], new: dict[str, Any]) -> bool:
    """Add ``new``'s exception to ``items``: its values to the same rule's exception of the same
    name, else as an item of its own. False if that row was there already."""
    [exception] = new["exceptions"]
    for item in items:
        if not isinstance(item, dict) or item.get("rule") != new["rule"]:
            continue
        for existing in item.get("exceptions") or []:
            if isinstance(existing, dict) and existing.get("name") == exception["name"]:
                values = existing.setdefault("values", [])
                if exception["values"][0] in values:
                    return False
                values.append(exception["values"][0])
                return True
    items.append(new)
    return True


def parse(text: str, where: str) -> list[Any]:
    """The items of a rules file's text; ``where`` names it in errors."""
    try:
        items = yaml.safe_load(text)
    except yaml.YAMLError:
        raise LocalRulesError(f"{where}: not valid YAML; fix or remove it") from None
    if items is None:
        return []
    if not isinstance(items, list):
        raise LocalRulesError(f"{where}: not a list of rules items; fix or remove it")
    return items


class LocalRules:
    """The store's local rules (the truth, shared by replicas) and this replica's file copy."""

    def __init__(self, store: Store, path: Path) -> None:
        self.store = store
        self.path = path
        self.file_error: str | None = None  # why the last copy to the file failed, if it did
        self._exported = 0  # the newest version this process wrote to the file
        self._unimported: str | None = None  # a file from before the store that did not load
        self._saving = asyncio.Lock()
        self._lock = asyncio.Lock()  # one file write at a time

    def render(self, items: list[Any]) -> str:
        return HEADER.format(path=self.path) + dump(items)

    async def current(self) -> LocalRulesDoc:
        """The store's file; at version 0 (nothing saved yet) one with only the header."""
        doc = await self.store.local_rules()
        return doc if doc.version else LocalRulesDoc(0, HEADER.format(path=self.path))

    async def add(self, item: dict[str, Any]) -> bool:
        """Merge one exception into the store's file; False if it was there already.

        A compare-and-set on the version: when another replica saved in between, its file is
        read and merged into again, so concurrent saves all end up in the file.
        """
        if self._unimported is not None:
            raise LocalRulesError(self._unimported)
        async with self._saving:  # this process's saves never race each other
            for _ in range(_MAX_TRIES):
                doc = await self.store.local_rules()
                items = parse(doc.text, "the local rules in the store")
                if not merge(items, item):
                    return False
                text = self.render(items)
                if await self.store.save_local_rules(doc.version, text):
                    await self.export(LocalRulesDoc(doc.version + 1, text))
                    return True
        raise LocalRulesError("the local rules kept changing while saving; try again")

    async def start(self) -> None:
        """Import the file if the store has none yet (a hub from before the store kept it),
        then write the store's version to the file."""
        doc = await self.store.local_rules()
        if doc.version == 0:
            try:
                items = await asyncio.to_thread(self._read_file)
            except LocalRulesError as exc:
                # Neither overwritten nor saved to: the exceptions in it would be lost.
                self._unimported = self.file_error = (
                    f"{exc}; its exceptions are not in the hub yet, and none can be saved "
                    "here until it is fixed and the hub restarted (it is imported then)")
                log.error("local rules: %s", self.file_error)
                return
            if items:
                if await self.store.save_local_rules(0, self.render(items)):
                    log.info("local rules: imported %d item(s) from %s", len(items), self.path)
                doc = await self.store.local_rules()
        elif await asyncio.to_thread(self._differs, doc.text):
            log.warning("local rules: %s is replaced by version %d from the store: it had "
                        "other exceptions (an older copy, or edits by hand, which are not "
                        "kept: make changes in the UI)", self.path, doc.version)
        await self.export(doc)

    async def export(self, doc: LocalRulesDoc) -> None:
        """Write ``doc`` to the file, unless this process wrote that version or a newer one.
        A failure is logged and kept in ``file_error``: the store has the file all the same."""
        async with self._lock:
            if doc.version <= self._exported:
                return
            try:
                await asyncio.to_thread(self._write, doc.text)
            except LocalRulesError as exc:
                self.file_error = str(exc)
                log.warning("local rules saved in the store but not copied: %s", exc)
                return
            self._exported, self.file_error = doc.version, None

    def _read_file(self) -> list[Any]:
        try:
            text = self.path.read_text(encoding="utf-8")
        except (FileNotFoundError, NotADirectoryError):  # none there, nor can there be
            return []
        except (OSError, UnicodeDecodeError) as exc:
            raise LocalRulesError(f"{self.path}: cannot read: {exc}") from None
        return parse(text, str(self.path))

    def _differs(self, text: str) -> bool:
        """Whether the file holds other items than ``text`` (someone edited it by hand)."""
        if not self.path.exists():
            return False
        try:
            return self._read_file() != parse(text, "the local rules in the store")
        except LocalRulesError:
            return True

    def _write(self, text: str) -> None:
        # A name of its own: replicas may share the directory (ui.rulesfile on shared storage).
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                out.write(text)
            os.replace(tmp, self.path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise LocalRulesError(f"{self.path}: cannot write: {exc.strerror}") from None
