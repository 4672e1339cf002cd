"""User and group names for ids: the host's /etc/passwd and /etc/group, and a container's own
when its root filesystem could be read (Falco names users as the container sees them).

Files are parsed once and looked up from dicts; the host's are re-read when they change,
checked at most every ``recheck`` seconds.
"""

from __future__ import annotations

import os
import time

from detector.state.containers import ContainerInfo

User = tuple[str, str, str]  # name, home directory, shell


def parse_passwd(text: str) -> dict[int, User]:
    users: dict[int, User] = {}
    for line in text.splitlines():
        fields = line.split(":")
        if len(fields) >= 7 and fields[2].isdigit():
            users.setdefault(int(fields[2]), (fields[0], fields[5], fields[6]))
    return users


def parse_group(text: str) -> dict[int, str]:
    groups: dict[int, str] = {}
    for line in text.splitlines():
        fields = line.split(":")
        if len(fields) >= 3 and fields[2].isdigit():
            groups.setdefault(int(fields[2]), fields[0])
    return groups


class Users:
    def __init__(self, etc: str = "/etc", recheck: float = 5.0) -> None:
        self.passwd_path = os.path.join(etc, "passwd")
        self.group_path = os.path.join(etc, "group")
        self.recheck = recheck
        self._stamp: tuple[float, float] | None = None
        self._checked = float("-inf")
        self._users: dict[int, User] = {}
        self._groups: dict[int, str] = {}
        # container id -> its (users, groups), parsed on first use from the fetched files
        self._containers: dict[str, tuple[dict[int, User], dict[int, str]]] = {}
        self._refresh()

    def _mtime(self, path: str) -> float:
        try:
            return os.stat(path).st_mtime
        except OSError:
            return 0.0

    def _refresh(self) -> None:
        self._checked = time.monotonic()
        stamp = (self._mtime(self.passwd_path), self._mtime(self.group_path))
        if stamp == self._stamp:
            return
        self._stamp = stamp
        self._users = parse_passwd(_read(self.passwd_path))
        self._groups = parse_group(_read(self.group_path))

    def _tables(self, container: ContainerInfo | None
                ) -> tuple[dict[int, User], dict[int, str]] | None:
        if container is None or container.passwd is None:
            return None
        tables = self._containers.get(container.id)
        if tables is None:
            tables = (parse_passwd(container.passwd), parse_group(container.group or ""))
            self._containers[container.id] = tables
        return tables

    def user(self, uid: int, container: ContainerInfo | None = None) -> User | None:
        """The container's entry for ``uid`` if it has one, else the host's (before the
        container's files are read, and for ids the image does not list)."""
        tables = self._tables(container)
        if tables is not None:
            found = tables[0].get(uid)
            if found is not None:
                return found
        if time.monotonic() - self._checked >= self.recheck:
            self._refresh()
        return self._users.get(uid)

    def group(self, gid: int, container: ContainerInfo | None = None) -> str | None:
        tables = self._tables(container)
        if tables is not None:
            found = tables[1].get(gid)
            if found is not None:
                return found
        if time.monotonic() - self._checked >= self.recheck:
            self._refresh()
        return self._groups.get(gid)


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="surrogateescape") as handle:
            return handle.read()
    except OSError:
        return ""
