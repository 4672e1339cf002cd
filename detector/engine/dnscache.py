"""Forward resolution of the hostnames rules compare with ``fd.sip.name`` and friends.

Falco resolves such names in the background and compares the socket's address with the result;
a lookup never blocks the event loop. Here too: the first lookup of a name (or one older than
the refresh interval) queues a resolution on one daemon thread and answers with what is known
now (nothing, the first time).
"""

from __future__ import annotations

import ipaddress
import queue
import socket
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class HostAddresses(Protocol):
    def addresses(self, host: str) -> frozenset[Any]: ...


def resolve_host(host: str) -> frozenset[Address]:
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError):
        return frozenset()
    found: set[Address] = set()
    for info in infos:
        try:
            found.add(ipaddress.ip_address(str(info[4][0]).split("%")[0]))
        except ValueError:
            continue
    return frozenset(found)


class DnsCache:
    def __init__(
        self, refresh_s: float = 30.0, resolve: Callable[[str], frozenset[Address]] = resolve_host
    ) -> None:
        self._refresh_s = refresh_s
        self._resolve = resolve
        self._known: dict[str, frozenset[Address]] = {}
        self._due: dict[str, float] = {}  # monotonic time of the next refresh
        self._queue: queue.SimpleQueue[str] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def addresses(self, host: str) -> frozenset[Address]:
        due = self._due.get(host)
        if due is None or time.monotonic() >= due:
            self._schedule(host)
        return self._known.get(host, frozenset())

    def _schedule(self, host: str) -> None:
        with self._lock:
            if self._due.get(host, 0.0) == float("inf"):
                return  # already queued
            self._due[host] = float("inf")
            if self._thread is None:
                self._thread = threading.Thread(target=self._work, name="lanner-dns", daemon=True)
                self._thread.start()
        self._queue.put(host)

    def _work(self) -> None:
        while True:
            host = self._queue.get()
            self._known[host] = self._resolve(host)
            self._due[host] = time.monotonic() + self._refresh_s
