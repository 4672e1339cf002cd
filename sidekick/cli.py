"""The `lanner` command. `lanner sidekick` runs the hub; `lanner rules` works on rules files;
`lanner detect` runs the detector and `lanner detector setup` prepares a node for it; `lanner
run` (what `make run` starts) runs the hub and the detector together."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sidekick.auth import Access
    from sidekick.config import HubConfig

log = logging.getLogger("lanner")


def _sidekick_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sidekick", help="run the hub (Falcosidekick-compatible)")
    p.add_argument("-c", "--config-file", type=Path, help="YAML configuration file")
    p.add_argument("--listenaddress", help="HTTP bind address (env LISTENADDRESS)")
    p.add_argument("--listenport", type=int, help="HTTP port, default 2801 (env LISTENPORT)")
    p.add_argument("--grpcport", type=int, help="gRPC port, default 5060, 0 = off (env GRPCPORT)")
    p.add_argument("--store", choices=["sqlite", "redis"], help="store backend (env STORE)")
    p.add_argument("--datadir", help="directory of the SQLite store (env DATADIR)")
    p.add_argument("--redis-url", help="Redis URL for --store redis (env REDIS_URL)")
    p.add_argument("--debug", action="store_true", default=None, help="verbose logs")
    p.add_argument(
        "--check",
        action="store_true",
        help="validate the configuration, print it without secrets, and exit",
    )


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    keys = ("listenaddress", "listenport", "grpcport", "store", "datadir", "debug")
    result: dict[str, Any] = {k: getattr(args, k) for k in keys}
    if args.redis_url:
        result["redis"] = {"url": args.redis_url}
    return result


async def serve(config: HubConfig) -> int:
    import uvicorn

    from sidekick.api import create_app
    from sidekick.auth import TokenFileError
    from sidekick.hub import Hub

    class Server(uvicorn.Server):
        # uvicorn re-raises SIGTERM once HTTP has stopped, which would kill us before the
        # hub drains its deliveries; the signals are handled below instead.
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            yield

    try:
        access, shown_token = _ui_access(config)
    except TokenFileError as exc:
        log.error("cannot start the hub: %s", exc)
        return 1
    hub = Hub(config)
    try:
        await hub.start()
    except Exception as exc:  # unreachable Redis, unwritable data dir, port in use...
        log.error("cannot start the hub: %s", _safe_error(exc))
        await hub.stop()
        return 1
    server = Server(
        uvicorn.Config(
            create_app(hub, access),
            host=config.listenaddress or "0.0.0.0",
            port=config.listenport,
            http="httptools",
            lifespan="off",
            access_log=False,
            log_level="debug" if config.debug else "warning",
            timeout_graceful_shutdown=5,
        )
    )
    log.info(
        "listening on http %s:%d, grpc %s",
        config.listenaddress or "0.0.0.0",
        config.listenport,
        config.grpcport or "off",
    )

    _print_ui_url(config, shown_token)

    def on_signal() -> None:
        if server.should_exit:  # a second Ctrl-C: stop now
            server.force_exit = True
        server.should_exit = True
        # Ends the UI's live streams now: the server waits for open connections to close.
        hub.broadcaster.close()

    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, on_signal)
    try:
        await server.serve()
    finally:
        log.info("stopping: draining deliveries")
        await hub.stop()
    return 0 if server.started else 1


def _ui_access(config: HubConfig) -> tuple[Access, str | None]:
    """The UI's access check, and the token to print when it is the data dir's (one
    configured is the operator's to know: it may come from a Secret that logs must not show)."""
    from sidekick.auth import Access, load_or_make_token

    token = config.ui.token.get_secret_value()
    shown = None
    if not token:
        token, made = load_or_make_token(Path(config.datadir))
        shown = token
        if made:
            log.info("made a UI access token, kept in %s/", config.datadir)
    return Access(token, config.publicurl), shown


def _print_ui_url(config: HubConfig, token: str | None) -> None:
    """The ready-to-open URL, as Jupyter prints it: on stderr, not through logging, as the one
    place the token is ever written."""
    host = config.listenaddress if config.listenaddress not in ("", "0.0.0.0", "::") \
        else "127.0.0.1"
    host = f"[{host}]" if ":" in host else host
    base = config.publicurl or f"http://{host}:{config.listenport}"
    if token is None:
        print(f"lanner: UI: {base}/ui/ (sign in with ui.token)", file=sys.stderr, flush=True)
    else:
        print(f"lanner: UI: {base}/ui/?token={token}", file=sys.stderr, flush=True)


def _safe_error(exc: Exception) -> str:
    """A start-up failure in one line. Client exceptions can embed URLs with credentials, so
    only messages we wrote ourselves (outputs' never hold secrets), or OS errors, are whole."""
    from redis.exceptions import RedisError

    from outputs.base import OutputError
    from sidekick.grpc_server import GrpcSetupError

    if isinstance(exc, GrpcSetupError | OutputError | OSError):
        return str(exc)
    if isinstance(exc, RedisError):
        return f"cannot use Redis ({type(exc).__name__}); check redis.url and that it is up"
    return type(exc).__name__


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["rules"]:
        # Imported here: the hub never loads the detector, and `lanner sidekick` starts faster.
        from detector.cli import main as rules_main

        return rules_main(argv[1:])
    if argv[:1] == ["detect"]:
        from detector.cli_detect import detect_main

        return detect_main(argv[1:])
    if argv[:1] == ["detector"]:
        from detector.cli_detect import detector_main

        return detector_main(argv[1:])
    if argv[:1] == ["run"]:
        from sidekick.run import main as run_main

        return run_main(argv[1:])
    parser = argparse.ArgumentParser(prog="lanner", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _sidekick_parser(sub)
    # Listed for --help only: `lanner rules ...` is dispatched above, before parsing.
    sub.add_parser("rules", help="validate, list and test detection rules (lanner rules -h)")
    sub.add_parser("detect", help="run the detector on this node (lanner detect -h)")
    sub.add_parser("detector", help="prepare this node for the detector (lanner detector -h)")
    sub.add_parser("run", help="run the hub and, as root, the detector publishing to it "
                               "(lanner run -h)")
    args = parser.parse_args(argv)
    # Imported here: the config pulls in every output's client library (~0.5 s), which
    # `lanner rules` has no use for.
    from sidekick.config import ConfigError, load_config, redacted

    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        config = load_config(args.config_file, overrides=_overrides(args))
    except ConfigError as exc:
        print(f"lanner: configuration error: {exc}", file=sys.stderr)
        return 2
    if args.check:
        print(json.dumps(redacted(config), indent=2, default=str))
        return 0
    if config.debug:
        logging.getLogger().setLevel(logging.DEBUG)
    import uvloop

    return uvloop.run(serve(config))


if __name__ == "__main__":
    sys.exit(main())
