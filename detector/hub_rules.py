"""The hub's exceptions for ``lanner detect --hub-rules PATH``.

Operators mark false positives in the hub's UI; the hub keeps them as Falco ``exceptions:`` in
its local rules file and serves that file over gRPC (``lanner.v1.Hub/LocalRules``, with the
token and TLS of Publish). A thread asks the hub of the first ``grpc://`` output for it every
few seconds, with the version it has, and replaces PATH (atomically) when the hub has another.
PATH is the detector's last rules file, so the rules watcher (detector.rules_watch) loads it as
it loads any edit: an exception applies within seconds, and a file that does not load leaves
the previous rules running.

The hub keeps one file for every detector, and an exception for a rule a detector does not load
(an audit rule, on a node detector) would keep the whole file from loading there, as in Falco.
So PATH holds the hub's items for the rules this detector loads; the others are left out, and
said once. When the detector's own rules change, the choice is made again.

The text comes from the network: it is only written to PATH, and read back as rules (YAML).
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import grpc
import yaml

from detector.engine.engine import Engine
from detector.engine.errors import RuleError
from detector.publish import TOKEN_ENV
from detector.publish_hubs import Hubs, PublisherTls, Target
from sidekick.proto import lanner_pb2, lanner_pb2_grpc

log = logging.getLogger("lanner.hub_rules")

POLL_S = 5.0  # how often the hub is asked (and the time an answer may take)
START_TIMEOUT_S = 3.0  # the first question, before the rules are loaded
OLD_HUB_POLL_S = 300.0  # a hub without LocalRules: asked again this rarely (a rolling update)
EMPTY = ("# The exceptions saved in the hub's UI (false positives), kept by `lanner detect "
         "--hub-rules`.\n# None yet.\n")


class HubRulesError(ValueError):
    """--hub-rules cannot be used; the message says why."""


class HubRules:
    """Keeps ``path`` equal to the hub's local rules file: ``fetch`` asks once, ``start`` asks
    every POLL_S seconds in a daemon thread until ``close``. Raises HubRulesError for a path
    that cannot be written, a malformed target or an unreadable TLS file."""

    def __init__(self, path: Path, targets: str, *, tls: PublisherTls | None = None,
                 token: str | None = None, known_rules: frozenset[str] | None = None) -> None:
        self.path = path
        self._known = known_rules  # the rules this detector loads (its own files'); None: all
        self._hub_text: str | None = None  # the hub's whole file, as last fetched
        self._left_out: frozenset[str] = frozenset()  # rules of the hub's left out, as said
        self._writing = threading.Lock()  # the poller and a rules reload both write PATH
        self._name = f"grpc://{targets}"
        try:
            self._hubs = Hubs(targets, tls)
        except ValueError as exc:
            raise HubRulesError(f"--hub-rules: {self._name}: {exc}") from None
        self._token = token or None
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self._version = 0  # the hub's version that PATH holds (0: none yet)
        self._synced = False  # PATH took an answer of the hub since the start
        self._old_hub = False
        self._current: tuple[Target, grpc.Channel] | None = None
        self._cursor = random.randrange(1 << 16)  # spreads the detectors over the replicas
        self._logged: str | None = None  # the last failure logged
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None
        self._prepare()

    def _prepare(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if not self.path.exists():
                self._write(EMPTY)
        except OSError as exc:
            raise HubRulesError(f"--hub-rules {self.path}: cannot write it: "
                                f"{exc.strerror or exc}") from None
        if not os.access(self.path.parent, os.W_OK):
            raise HubRulesError(f"--hub-rules {self.path}: its directory is not writable")

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="lanner-hub-rules", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stopped.set()
        if self._thread is not None:
            self._thread.join(timeout=POLL_S + 1)
        if self._current is not None:
            self._current[1].close()
            self._current = None

    def _run(self) -> None:
        while not self._stopped.wait(OLD_HUB_POLL_S if self._old_hub else POLL_S):
            try:
                self.fetch(POLL_S)
            except Exception:  # the detector must keep running; the next round tries again
                log.exception("asking the hub for its exceptions failed")

    # -- one question ------------------------------------------------------------------------

    def fetch(self, timeout: float) -> bool:
        """Ask the hub (each address in turn until one answers, within ``timeout``) and write
        PATH if it has other exceptions. Returns whether a hub answered."""
        deadline = time.monotonic() + timeout
        request = lanner_pb2.LocalRulesRequest(known_version=self._version)
        errors: list[str] = []
        old: Target | None = None
        for target, channel in self._candidates(errors):
            left = deadline - time.monotonic()
            if left <= 0:
                self._drop(channel)
                break
            try:
                reply = lanner_pb2_grpc.HubStub(channel).LocalRules(
                    request, timeout=left, metadata=self._metadata)
            except grpc.RpcError as exc:
                self._drop(channel)
                if exc.code() == grpc.StatusCode.UNIMPLEMENTED:
                    old = old or target  # a newer replica may be next
                else:
                    errors.append(f"{target.label}: {self._describe(exc)}")
                continue
            self._current = (target, channel)
            self._answered(target, reply)
            return True
        if old is not None:
            self._too_old(old)
            return True
        self._say(f"the hub's exceptions cannot be fetched from {self._name} ("
                  + "; ".join(errors or ["no answer in time"])
                  + f"): {self.path} keeps what it has; asking again every {POLL_S:g}s")
        return False

    def _drop(self, channel: grpc.Channel) -> None:
        if self._current is not None and self._current[1] is channel:
            self._current = None
        channel.close()

    def _candidates(self, errors: list[str]) -> Iterator[tuple[Target, grpc.Channel]]:
        """The hub that answered last, then (names resolved again) every address in turn."""
        current = self._current
        if current is not None:
            yield current
        targets = self._hubs.resolve_blocking(lambda label, why: errors.append(f"{label}: {why}"))
        for _ in range(len(targets)):
            self._cursor += 1
            target = targets[self._cursor % len(targets)]
            if current is None or target.address != current[0].address:
                yield target, self._hubs.blocking_channel(target)

    def _answered(self, target: Target, reply: lanner_pb2.LocalRulesReply) -> None:
        if self._old_hub:
            log.info("the hub at %s serves exceptions now", target.label)
            self._old_hub = False
        if self._logged is not None:
            self._logged = None
            log.info("the hub's exceptions are fetched again, from %s", target.label)
        with self._writing:
            if reply.changed:
                self._hub_text = reply.yaml or EMPTY
            elif reply.version == 0 and not self._synced:
                self._hub_text = EMPTY  # the hub has none: PATH must not keep an earlier run's
            else:
                self._version = reply.version
                return
            stored = self._store(self._for_these_rules(self._hub_text))
            if stored:
                log.info("the hub's exceptions changed (version %d): written to %s",
                         reply.version, self.path)
            if stored is not False:  # not taken when unwritten: the next round writes it
                self._version, self._synced = reply.version, True

    def set_known_rules(self, names: frozenset[str]) -> None:
        """The detector's own rules changed: choose again among the hub's items (which may
        have named a rule it loads only now)."""
        with self._writing:
            if names == self._known:
                return
            self._known = names
            if self._hub_text is not None and self._store(self._for_these_rules(self._hub_text)):
                log.info("the hub's exceptions chosen again for the changed rules: written to "
                         "%s", self.path)

    def _for_these_rules(self, text: str) -> str:
        """The hub's file but its items for rules this detector does not load."""
        if self._known is None:
            return text
        try:
            items = yaml.safe_load(text)
        except yaml.YAMLError:
            return text  # loading it says what is wrong, file and line
        if not isinstance(items, list):
            return text
        kept, left_out = [], set()
        for item in items:
            rule = item.get("rule") if isinstance(item, dict) else None
            if isinstance(rule, str) and rule not in self._known:
                left_out.add(rule)
            else:
                kept.append(item)
        if frozenset(left_out) != self._left_out:
            self._left_out = frozenset(left_out)
            if left_out:
                log.info("the hub's exceptions for rules this detector does not load are left "
                         "out: %s", ", ".join(sorted(left_out)))
        if not left_out:
            return text
        header = "".join(line for line in text.splitlines(keepends=True) if line.startswith("#"))
        return header + (yaml.safe_dump(kept, sort_keys=False) if kept else "")

    def _store(self, text: str) -> bool | None:
        """Write ``text`` to PATH: True when written, None when PATH held it already, False
        when it cannot be written (said)."""
        try:
            current = self.path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            current = None
        if current == text:
            return None
        try:
            self._write(text)
        except OSError as exc:
            self._say(f"the hub's exceptions cannot be written to {self.path}: "
                      f"{exc.strerror or exc}; trying again in {POLL_S:g}s")
            return False  # the version is not taken: the next round writes it again
        return True

    def _write(self, text: str) -> None:
        """Replace PATH at once: the watcher never sees half a file."""
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.",
                                   suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                out.write(text)
            os.chmod(tmp, 0o644)
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def _too_old(self, target: Target) -> None:
        if not self._old_hub:
            self._old_hub = True
            log.warning("the hub at %s cannot serve exceptions (a version without LocalRules): "
                        "%s is not updated; asking again every %gs", target.label, self.path,
                        OLD_HUB_POLL_S)

    def _say(self, message: str) -> None:
        """Log a failure once until it changes (a hub that is down is asked often)."""
        if self._token:
            message = message.replace(self._token, "***")
        if message != self._logged:
            self._logged = message
            log.warning("%s", message)

    def _describe(self, exc: grpc.RpcError) -> str:
        code = exc.code() if isinstance(exc, grpc.Call) else None
        if code == grpc.StatusCode.UNAUTHENTICATED:
            why = "wrong token" if self._token else f"no token configured ({TOKEN_ENV})"
            return f"authentication failed: the hub refused the detector ({why})"
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            return "no answer in time"
        if isinstance(exc, grpc.Call):
            return f"{code.name if code else 'error'}: {exc.details()}"
        return str(exc)


def open_hub_rules(path: Path, outputs: Sequence[str], tls: PublisherTls | None,
                   known_rules: frozenset[str]) -> HubRules:
    """The HubRules of ``--hub-rules PATH``, whose hub is the first ``grpc://`` output's, once
    it asked the hub (for at most START_TIMEOUT_S): call this before loading the rules.
    ``known_rules``: the names of the rules the detector loads from its own files."""
    spec = next((o for o in outputs if o.startswith("grpc://")), None)
    if spec is None or spec == "grpc://":
        raise HubRulesError("--hub-rules needs a grpc:// output: the hub it asks for the "
                            "exceptions (e.g. --output grpc://hub:5060)")
    hub_rules = HubRules(path, spec[len("grpc://"):], tls=tls, token=os.environ.get(TOKEN_ENV),
                         known_rules=known_rules)
    hub_rules.fetch(START_TIMEOUT_S)
    return hub_rules


def without_hub_rules(load: Callable[[list[Path]], Engine], rules: list[Path],
                      error: RuleError) -> Engine | None:
    """The rules but the hub's file (the last of ``rules``), when that file alone keeps them
    from loading at the start (e.g. an exception for a rule this detector does not load):
    the detector starts without it, and the watcher loads it again once it changes."""
    try:
        engine = load(rules[:-1])
    except RuleError:
        return None
    log.error("the hub's exceptions cannot be loaded, so the detector runs without them until "
              "%s changes: %s", rules[-1], error)
    return engine
