"""The publisher's spill file: alerts that did not fit in memory while the hub was away.

One JSON alert per line (Falco's JSON, uuid included, so a replay is deduplicated by the hub),
after a fixed-width header that holds the file offset up to which the hub has acknowledged the
lines. A restarted detector replays from that offset. The header is rewritten in place after
each acknowledged spill batch, and the file is cut back to its header once everything in it is
acknowledged, so a hub that keeps up leaves an empty file behind.

Durability: every line is written with one ``write(2)`` and no fsync. It survives the detector
crashing or being restarted (the kernel has the data), not the node losing power. A line torn by
a crash mid-write is cut off on open and reported as one dropped alert.

Concurrency: ``append`` and ``commit`` (which may cut the file) run under the publisher's lock;
``read`` only from the publisher's thread, and only over lines ``append`` finished (it is given
their count), so it needs no lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os

from sidekick.alert import Alert

log = logging.getLogger("lanner.publish")

_MAGIC = b"LANNER-SPILL 1 "
_HEADER_LEN = len(_MAGIC) + 20 + 1  # magic, 20-digit acked offset, newline
_CHUNK = 256 * 1024


def _header(offset: int) -> bytes:
    return _MAGIC + b"%020d\n" % offset


def _last_line_end(fd: int, size: int) -> int:
    """The offset just past the last newline after the header (the header's end if none)."""
    pos = size
    while pos > _HEADER_LEN:
        low = max(_HEADER_LEN, pos - _CHUNK)
        cut = os.pread(fd, pos - low, low).rfind(b"\n")
        if cut >= 0:
            return low + cut + 1
        pos = low
    return _HEADER_LEN


def _count_lines(fd: int, start: int, end: int) -> int:
    count, pos = 0, start
    while pos < end:
        chunk = os.pread(fd, min(_CHUNK, end - pos), pos)
        if not chunk:
            break
        count += chunk.count(b"\n")
        pos += len(chunk)
    return count


class SpillFile:
    """``limit``: most lines the file may hold (acknowledged or not) until it is next emptied."""

    def __init__(self, path: str, limit: int) -> None:
        self.path = path
        self.limit = limit
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            # Two publishers appending to one file would interleave and double-deliver.
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._fd)
            raise ValueError(f"spill file {path} is in use by another publisher") from None
        # Separate descriptors: on Linux, pwrite on an O_APPEND descriptor ignores its offset,
        # and the header must be rewritten in place.
        self._append_fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
        self._failing = False
        try:
            self.torn = self._recover()
        except BaseException:
            self.close()
            raise

    def _recover(self) -> int:
        """Find the unacknowledged lines; returns how many torn lines were cut off (0 or 1)."""
        size = os.fstat(self._fd).st_size
        if size == 0:
            os.pwrite(self._fd, _header(_HEADER_LEN), 0)
            size = _HEADER_LEN
        head = os.pread(self._fd, _HEADER_LEN, 0)
        digits = head[len(_MAGIC):-1]
        if len(head) != _HEADER_LEN or not head.startswith(_MAGIC) or not digits.isdigit():
            # Not ours (a wrong path in the configuration): refuse rather than overwrite it.
            raise ValueError(f"{self.path} exists and is not a Lanner spill file")
        end = _last_line_end(self._fd, size)
        torn = 0
        if end != size:
            os.ftruncate(self._fd, end)
            torn = 1
        committed = int(digits)
        if not _HEADER_LEN <= committed <= end or (
            committed > _HEADER_LEN and os.pread(self._fd, 1, committed - 1) != b"\n"
        ):
            # An offset that is not a line boundary of this file: replaying everything is safe
            # (the hub drops what it already has), skipping anything is not.
            committed = _HEADER_LEN
        self.size = end
        self.committed = self.read_offset = committed
        self.unread = _count_lines(self._fd, committed, end)
        self.lines = _count_lines(self._fd, _HEADER_LEN, committed) + self.unread
        return torn

    def append(self, line: bytes, force: bool = False) -> bool:
        """Add one alert line (ending in a newline); False if full or unwritable (not added)."""
        if self.lines >= self.limit and not force:
            return False
        try:
            written = os.write(self._append_fd, line)
            if written != len(line):
                raise OSError(f"short write ({written} of {len(line)} bytes)")
        except OSError as exc:
            if not self._failing:
                log.error("cannot write to the spill file %s: %s", self.path, exc)
                self._failing = True
            # Take back a partial line, so that the next one starts on a line boundary.
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, self.size)
            return False
        self._failing = False
        self.size += written
        self.lines += 1
        self.unread += 1
        return True

    def read(self, count: int) -> tuple[list[Alert], int, int]:
        """The next ``count`` (at most ``unread``) lines: (alerts, unreadable lines, end offset).

        The caller then ``take``s them, under the lock, and commits the end offset once the
        hub acknowledged them.
        """
        alerts: list[Alert] = []
        bad = done = start = 0
        data = b""
        base = self.read_offset  # file offset of data[0]
        while done < count:
            newline = data.find(b"\n", start)
            if newline < 0:
                more = os.pread(self._fd, _CHUNK, base + len(data))
                if not more:
                    break
                data, base, start = data[start:] + more, base + start, 0
                continue
            try:
                alerts.append(Alert.from_json(data[start:newline]))
            except ValueError:
                bad += 1
            start = newline + 1
            done += 1
        self.read_offset = base + start
        if done < count:  # the file was cut behind our back: those lines are gone
            bad += count - done
            done = count
        return alerts, bad, done

    def take(self, lines: int) -> None:
        self.unread -= lines

    def commit(self, offset: int) -> None:
        """The hub acknowledged every line before ``offset``. Empties the file when that is all."""
        try:
            if offset == self.size and self.unread == 0:
                # Truncate before rewriting the header: a crash in between leaves an offset past
                # the end, which _recover treats as "replay all" of an empty file.
                os.ftruncate(self._fd, _HEADER_LEN)
                self.size = self.read_offset = offset = _HEADER_LEN
                self.lines = 0
            os.pwrite(self._fd, _header(offset), 0)
            self.committed = offset
        except OSError as exc:
            # A stale offset only means lines are replayed after a restart, and deduplicated.
            log.warning("cannot update the spill file %s: %s", self.path, exc)

    def close(self) -> None:
        for fd in (getattr(self, "_append_fd", -1), self._fd):
            if fd >= 0:
                os.close(fd)
        self._fd = self._append_fd = -1
