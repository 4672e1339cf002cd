"""`lanner detect` (the detector on this node) and `lanner detector setup` (preparing a node
for it): their options and main functions. `lanner rules` is detector.cli."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from detector import cli_k8saudit
from detector.cli import DEFAULT_RULES, EXIT_ERROR, EXIT_FAILED, EXIT_OK, err
from detector.engine.engine import Engine
from detector.engine.errors import RuleError
from sidekick.alert import Priority

if TYPE_CHECKING:
    from detector.publish import HubLink

# Added to the default rules of `lanner detect` when it serves the audit webhook.
DEFAULT_AUDIT_RULES = DEFAULT_RULES.with_name("lanner_k8s_audit_rules.yaml")


def _positive_rate(text: str) -> float:
    try:
        rate = float(text)
    except ValueError:
        rate = 0.0
    if not rate > 0 or rate == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a rate: a number of records a second")
    return rate


def _positive_count(text: str) -> int:
    try:
        count = int(text)
    except ValueError:
        count = 0
    if count < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a count: a whole number, at least 1")
    return count


def _priority(text: str) -> Priority:
    try:
        return Priority.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _hub_link(args: argparse.Namespace) -> HubLink:
    """TLS and spill file of grpc:// outputs. Raises SinkError for an incomplete TLS setup."""
    from detector.publish import HubLink, SinkError

    tls = None
    if args.hub_cert or args.hub_key or args.hub_cacert:
        if not args.hub_cacert:
            raise SinkError("--hub-cert/--hub-key need --hub-cacert (the hub is verified too)")
        from detector.publish_hubs import PublisherTls

        tls = PublisherTls(args.hub_cacert, args.hub_cert, args.hub_key)
    return HubLink(tls, args.spill_file)


def detect_parser() -> argparse.ArgumentParser:
    from detector.publish import BUFFER_LIMIT, FORMATS
    from detector.state.runtime import DEFAULT_SOCKETS

    p = argparse.ArgumentParser(
        prog="lanner detect",
        description="Watch this node's kernel events (and, with --k8s-audit, the Kubernetes "
                    "API server's audit events) and report what the rules match. Needs root "
                    "but with --source k8saudit. Exit codes: 0 stopped, 1 the event source "
                    "failed, 2 the rules, an output or every event source could not be used.",
    )
    p.add_argument("--rules", nargs="+", type=Path, metavar="FILE",
                   help=f"rules files, loaded in order (default: {DEFAULT_RULES.name}, and "
                        f"{DEFAULT_AUDIT_RULES.name} with the audit webhook)")
    p.add_argument("--no-watch-rules", dest="watch_rules", action="store_false",
                   help="do not reload the rules when their files change (Falco's "
                        "watch_config_files: false); SIGHUP still reloads them")
    p.add_argument("--output", action="append", metavar="SPEC",
                   help="stdout (default), file:PATH (appended), grpc://HOST:PORT[,HOST:PORT]"
                        " (the hub; token from env LANNER_HUB_TOKEN), or http(s)://HOST:PORT/PATH"
                        " (as Falco's http_output: a Falcosidekick or the hub); may be given "
                        "more than once")
    p.add_argument("--publish-buffer", type=_positive_count, default=BUFFER_LIMIT, metavar="N",
                   help="grpc:// and http(s):// outputs: alerts held in memory while the hub "
                        f"(or endpoint) does not take them (default {BUFFER_LIMIT}); beyond it "
                        "they are dropped, counted, and reported by one alert once it takes "
                        "them again")
    p.add_argument("--hub-cacert", metavar="FILE",
                   help="grpc:// outputs over TLS: the CA that signed the hub's certificate")
    p.add_argument("--hub-cert", metavar="FILE",
                   help="with --hub-key: our certificate, for mutual TLS with the hub")
    p.add_argument("--hub-key", metavar="FILE", help="the key of --hub-cert")
    p.add_argument("--spill-file", metavar="PATH",
                   help="grpc:// outputs: where alerts beyond --publish-buffer wait for the "
                        "hub, on disk, instead of being dropped (survives a restart)")
    p.add_argument("--hub-rules", type=Path, metavar="PATH",
                   help="keep PATH equal to the hub's local rules file (the exceptions saved in "
                        "its UI) and load it after the other rules: asked every few seconds of "
                        "the first grpc:// output's hub, with its --hub-* flags and token; "
                        "PATH's directory must be writable")
    p.add_argument("--format", choices=FORMATS, default="json",
                   help="json: Falco's json_output lines (default); text: Falco's text lines")
    p.add_argument("--source", default="auto", metavar="SOURCE",
                   help="auto (eBPF, else the fallback without BPF), ebpf, fallback, "
                        "k8saudit (no kernel events: the audit webhook alone), or "
                        "records:PATH (Records saved as JSON lines, for tests and replays)")
    p.add_argument("--replay-rate", type=_positive_rate, metavar="N",
                   help="with --source records:PATH: replay N records a second (default: as "
                        "fast as they are evaluated)")
    p.add_argument("--no-fallback", action="store_true",
                   help="with --source auto: exit if eBPF cannot load instead of falling back")
    p.add_argument("--min-priority", type=_priority, default=Priority.DEBUG, metavar="LEVEL",
                   help="run only rules of this priority or higher (Falco's `priority`: "
                        "emergency, alert, critical, error, warning, notice, informational, "
                        "debug; default debug: every rule)")
    p.add_argument("--rule-matching", choices=("first", "all"), default="all",
                   help="report every matching rule (all, default) or only the first (Falco)")
    p.add_argument("--ring-bytes", type=int, metavar="N",
                   help="eBPF ring buffer size, a power of two (default 16 MiB)")
    p.add_argument("--headers", metavar="DIR", help="kernel headers for the eBPF compiler")
    p.add_argument("--proc-root", default="/proc", metavar="DIR",
                   help="the host's /proc (default /proc; /host/proc when run in a container)")
    p.add_argument("--cgroup-root", metavar="DIR",
                   help="cgroup v2 mount (default: /sys/fs/cgroup, or /sys/fs/cgroup/unified "
                        "on a hybrid host)")
    p.add_argument("--runtime-socket", action="append", metavar="PATH",
                   help="container runtime socket for container metadata: containerd or "
                        "cri-o (CRI), podman or Docker API (default: "
                        + ", ".join(DEFAULT_SOCKETS) + "); may be given more than once")
    p.add_argument("--pods-log-dir", default="/var/log/pods", metavar="DIR",
                   help="the kubelet's pod log directory, for pod names and namespaces")
    p.add_argument("--containers-log-dir", default="/var/log/containers", metavar="DIR",
                   help="the kubelet's container log links, for container names")
    p.add_argument("--queue-size", type=int, default=16384, metavar="N",
                   help="events held between the reader and the rules (default 16384); "
                        "beyond it the eBPF source's backlog waits in its ring buffer, the "
                        "fallback's is dropped and counted")
    p.add_argument("--drop-threshold", type=float, default=0.1, metavar="RATIO",
                   help="alert when more than this share of a second's events is lost "
                        "(default 0.1)")
    p.add_argument("--drop-alert-interval", type=float, default=30.0, metavar="SECONDS",
                   help="at most one drop alert per this many seconds (default 30)")
    p.add_argument("--metrics", metavar="HOST:PORT",
                   help="serve Prometheus metrics (events, drops, alerts) on this address")
    cli_k8saudit.add_arguments(p)
    return p


def detect_main(argv: Sequence[str] | None = None) -> int:
    """`lanner detect`."""
    args = detect_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: "
                                                   "%(message)s")
    from detector.detect import Detector, serve_metrics
    from detector.engine.dnscache import DnsCache
    from detector.publish import SinkError, open_sink
    from detector.rules_watch import CHECK_EVERY_S, RulesWatcher
    from detector.sources.opener import SourceError, open_source, restart_reason
    from detector.state import required_event_types
    from detector.state.runtime import DEFAULT_SOCKETS
    from detector.state.tracker import Tracker

    audit = cli_k8saudit.wanted(args)
    rules = args.rules or [DEFAULT_RULES, *([DEFAULT_AUDIT_RULES] if audit else [])]
    hosts = DnsCache()
    hub_rules = None
    if args.hub_rules:
        from detector.engine.loader import load_rules as read_rules
        from detector.hub_rules import open_hub_rules, without_hub_rules

        try:
            known = frozenset(rule.name for rule in read_rules(rules)[0].rules)
        except RuleError:
            known = frozenset()  # loading the rules below says what is wrong
        try:  # asks the hub once already: a detector that reaches it starts with its exceptions
            hub_rules = open_hub_rules(args.hub_rules, args.output or [], _hub_link(args).tls,
                                       known)
        except ValueError as exc:  # HubRulesError, SinkError
            err(f"lanner detect: {exc}")
            return EXIT_ERROR
        rules = [*rules, args.hub_rules]

    def load_rules(paths: list[Path] = rules) -> Engine:
        return Engine.from_files(paths, rule_matching=args.rule_matching, hosts=hosts,
                                 min_priority=args.min_priority)[0]

    try:
        engine = load_rules()
    except RuleError as exc:
        engine = without_hub_rules(load_rules, rules, exc) if hub_rules else None
        if engine is None:
            err(f"lanner detect: the rules cannot be loaded: {exc}")
            return EXIT_ERROR
    sinks = []
    try:
        for spec in args.output or ["stdout"]:
            sinks.append(open_sink(spec, args.format, args.publish_buffer, _hub_link(args)))
    except SinkError as exc:
        err(f"lanner detect: {exc}")
        for sink in sinks:
            sink.close()
        return EXIT_ERROR
    try:
        source, live = open_source(
            args.source, required_event_types(engine.event_types), fallback=not args.no_fallback,
            rules=engine.active, say=lambda text: err(f"lanner detect: {text}"),
            ring_bytes=args.ring_bytes, headers=args.headers, cgroup_root=args.cgroup_root,
            replay_rate=args.replay_rate)
    except (SourceError, OSError, ValueError) as exc:
        err(f"lanner detect: {exc}")
        for sink in sinks:
            sink.close()
        return EXIT_ERROR
    # A recording brings its own processes: the node's would only be mixed into it.
    tracker = Tracker.for_host(
        proc_root=args.proc_root, cgroup_root=args.cgroup_root,
        sockets=tuple(args.runtime_socket or DEFAULT_SOCKETS), pods_dir=args.pods_log_dir,
        containers_dir=args.containers_log_dir, seed=live and args.source != "k8saudit")
    detector = Detector(engine, tracker, source, sinks, queue_records=args.queue_size,
                        live=live, drop_threshold=args.drop_threshold,
                        drop_alert_interval=args.drop_alert_interval)
    restart = False

    def apply_rules(new: Engine) -> None:
        nonlocal restart
        if hub_rules is not None:  # its exceptions for rules loaded only now are wanted too
            hub_rules.set_known_rules(frozenset(rule.name for rule in new.rules))
        reason = restart_reason(source, required_event_types(new.event_types), new.active)
        if reason is None:
            detector.replace_engine(new)
            err(f"lanner detect: rules reloaded: {len(new.active)} rules run")
        else:
            err(f"lanner detect: the changed rules {reason}: restarting to apply them")
            restart = True
            detector.stop()

    watcher = RulesWatcher(rules, load_rules, apply_rules,
                           interval=CHECK_EVERY_S if args.watch_rules else None)
    if hub_rules is not None:
        hub_rules.start()  # after the watcher: it sees every later change of the file
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: detector.stop())
    signal.signal(signal.SIGHUP, lambda *_: watcher.reload())
    status = EXIT_OK
    webhook = None
    try:
        if args.metrics:
            try:
                serve_metrics(args.metrics, detector)
            except (OSError, ValueError) as exc:  # the address is taken or malformed
                err(f"lanner detect: cannot serve metrics on {args.metrics}: {exc}")
                return EXIT_ERROR
        if audit:
            try:
                webhook = cli_k8saudit.open_webhook(
                    args, detector, engine.rules, say=lambda t: err(f"lanner detect: {t}"))
            except cli_k8saudit.WebhookError as exc:
                err(f"lanner detect: {exc}")
                return EXIT_ERROR
        metrics = detector.run()
    except RuntimeError as exc:
        err(f"lanner detect: {exc}")
        metrics, status = detector.metrics, EXIT_FAILED
    finally:
        watcher.close()
        if hub_rules is not None:
            hub_rules.close()
        if webhook is not None:
            webhook.close()
        source.close()
        tracker.close()
        for sink in sinks:
            sink.close()
    counts = metrics.as_dict() | (detector.audit.as_dict() if audit else {})
    err("lanner detect: " + ", ".join(f"{k}={v}" for k, v in counts.items()))
    if restart and status == EXIT_OK:
        # The same command again, in this process: the kernel program is built for the new
        # rules, and a supervisor (systemd, the kubelet, `lanner run`) sees no exit.
        sys.stderr.flush()
        os.execv(sys.executable, sys.orig_argv)
    return status


def detector_main(argv: Sequence[str] | None = None) -> int:
    """`lanner detector setup`: mount tracefs, link kernel headers and bcc (idempotent)."""
    p = argparse.ArgumentParser(prog="lanner detector",
                                description="Prepare this node for the eBPF detector.")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("setup", help="mount tracefs, link kernel headers and bcc; say what "
                                 "still stops eBPF (needs root)")
    p.parse_args(argv)
    try:
        from detector.sources.ebpf.setup import main as setup_main
    except ImportError as exc:
        err(f"lanner detector setup: the eBPF source is not available yet ({exc})")
        return EXIT_FAILED
    return setup_main()
