"""Rules reloaded while the detector runs, as Falco does with ``watch_config_files`` and on
SIGHUP.

A thread looks at the rules files (and the files of rules directories) once a second. When
they change and have held still for a moment, they are loaded in that thread; rules that do
not load are reported, file and line, and the previous rules go on running. Rules that load
are handed to ``apply``, which swaps them in (or restarts the detector, when its event source
was built for the old rules: see ``detector.sources.opener.restart_reason``).

Files are compared by their status (modification time, size, inode), following symbolic
links: a Kubernetes ConfigMap update swaps a link to a new directory, which changes them all.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

from detector.engine.engine import Engine
from detector.engine.errors import RuleError

log = logging.getLogger("lanner.rules")

Fingerprint = tuple[tuple[str, tuple[int, ...]], ...]

CHECK_EVERY_S = 1.0
SETTLE_S = 0.2  # a file being written changes again within this


def fingerprint(paths: Sequence[str | Path]) -> Fingerprint:
    """The status of every rules file the paths name (a directory's files included)."""
    seen: list[tuple[str, tuple[int, ...]]] = []
    for path in map(Path, paths):
        try:
            files = sorted(path.iterdir()) if path.is_dir() else [path]
        except OSError:
            files = [path]
        for file in files:
            try:
                st = os.stat(file)
            except OSError:
                seen.append((str(file), ()))  # missing: loading it says so
            else:
                seen.append((str(file), (st.st_mtime_ns, st.st_size, st.st_ino, st.st_dev)))
    return tuple(seen)


class RulesWatcher:
    """Calls ``apply(engine)`` with the rules ``load()`` returns after each change of the
    files (looked at every ``interval`` seconds; None: never); ``reload()`` (SIGHUP) loads them
    again even unchanged."""

    def __init__(self, paths: Sequence[str | Path], load: Callable[[], Engine],
                 apply: Callable[[Engine], None], *, interval: float | None = CHECK_EVERY_S
                 ) -> None:
        self._paths = list(paths)
        self._load = load
        self._apply = apply
        self._interval = interval
        self._seen = fingerprint(self._paths)
        self._forced = False
        self._wake = threading.Event()
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lanner-rules-watch", daemon=True)
        self._thread.start()

    def reload(self) -> None:
        """Load the rules again now (safe from a signal handler: it only sets flags)."""
        self._forced = True
        self._wake.set()

    def close(self) -> None:
        self._stopped.set()
        self._wake.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stopped.is_set():
            self._wake.wait(self._interval)
            self._wake.clear()
            if self._stopped.is_set():
                return
            forced, self._forced = self._forced, False
            current = fingerprint(self._paths)
            if current == self._seen and not forced:
                continue
            self._seen = self._settled(current)
            try:
                engine = self._load()
            except (RuleError, OSError) as exc:
                log.error("the rules changed but cannot be loaded, so the previous rules go on "
                          "running: %s", exc)
                continue
            try:
                self._apply(engine)
            except Exception:  # the detector must keep running on its previous rules
                log.exception("the reloaded rules could not be applied")

    def _settled(self, current: Fingerprint) -> Fingerprint:
        """The fingerprint once the files have stopped changing (an editor saving, a copy)."""
        while not self._stopped.wait(SETTLE_S):
            again = fingerprint(self._paths)
            if again == current:
                break
            current = again
        return current
