"""`lanner detect` options of the Kubernetes audit webhook (``detector.sources.k8saudit``).

    lanner detect --k8s-audit :9765                 kernel events and the webhook, one process
    lanner detect --source k8saudit                 the webhook alone (one per cluster), :9765
    lanner detect --source k8saudit --k8s-audit 127.0.0.1:0 --k8s-audit-cert tls.pem

The bearer token the API server must send comes from env LANNER_K8S_AUDIT_TOKEN (a flag's value
would show in `ps`).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from detector.sources.k8saudit import (
    DEFAULT_PATH,
    DEFAULT_PORT,
    MAX_BODY_BYTES,
    MAX_EVENT_BYTES,
    SOURCE,
    TOKEN_ENV,
    AuditWebhook,
    WebhookConfig,
    WebhookError,
)

if TYPE_CHECKING:  # the detect loop imports the state tracker, which `lanner rules` needs not
    from detector.detect import Detector

__all__ = ["WebhookError", "add_arguments", "open_webhook", "wanted"]


def listen_address(text: str) -> tuple[str, int]:
    """``[HOST:]PORT`` (``:9765``, ``0.0.0.0:9765``, ``[::]:9765``); no host is every IPv4
    address, since the API server is on another machine."""
    host, _, port_text = text.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        port = int(port_text)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535 or any(c in host for c in "/[] "):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not [HOST:]PORT, e.g. :{DEFAULT_PORT} or 0.0.0.0:{DEFAULT_PORT}")
    return host or "0.0.0.0", port


def _size(text: str) -> int:
    try:
        size = int(text)
    except ValueError:
        size = 0
    if size < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size in bytes (at least 1)")
    return size


def _path(text: str) -> str:
    if not text.startswith("/"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a URL path (it starts with /)")
    return text


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group(
        "Kubernetes audit webhook",
        "Receive the API server's audit events (audit.k8s.io/v1 EventList posts) and run the "
        f"rules of source k8s_audit on them (docs/k8s-audit.md). Token: env {TOKEN_ENV}.")
    g.add_argument("--k8s-audit", type=listen_address, metavar="[HOST:]PORT",
                   help="serve the webhook on this address, alongside --source (default with "
                        f"--source k8saudit: :{DEFAULT_PORT})")
    g.add_argument("--k8s-audit-path", type=_path, default=DEFAULT_PATH, metavar="PATH",
                   help=f"URL path of the webhook (default {DEFAULT_PATH})")
    g.add_argument("--k8s-audit-cert", metavar="FILE",
                   help="serve HTTPS with this PEM certificate (chain)")
    g.add_argument("--k8s-audit-key", metavar="FILE",
                   help="its private key (default: in the certificate file)")
    g.add_argument("--k8s-audit-client-ca", metavar="FILE",
                   help="also require a client certificate signed by this CA")
    g.add_argument("--k8s-audit-max-event-bytes", type=_size, default=MAX_EVENT_BYTES,
                   metavar="N", help=f"refuse events larger than this (default {MAX_EVENT_BYTES})")
    g.add_argument("--k8s-audit-max-batch-bytes", type=_size, default=MAX_BODY_BYTES,
                   metavar="N", help=f"refuse bodies larger than this (default {MAX_BODY_BYTES})")


def wanted(args: argparse.Namespace) -> bool:
    return args.k8s_audit is not None or args.source == "k8saudit"


def open_webhook(args: argparse.Namespace, detector: Detector, rules: Sequence[Any],
                 say: Callable[[str], None]) -> AuditWebhook:
    """Start the webhook the options describe, feeding ``detector``. Raises WebhookError (the
    message says why)."""
    if not any(rule.enabled and rule.source == SOURCE for rule in rules):
        say("warning: no enabled rule has source k8s_audit: audit events will raise no alert "
            "(add k8s_audit_rules.yaml or rules/lanner_k8s_audit_rules.yaml to --rules)")
    if (args.k8s_audit_key or args.k8s_audit_client_ca) and not args.k8s_audit_cert:
        raise WebhookError("--k8s-audit-key and --k8s-audit-client-ca need --k8s-audit-cert")
    host, port = args.k8s_audit or ("0.0.0.0", DEFAULT_PORT)
    config = WebhookConfig(
        host=host, port=port, path=args.k8s_audit_path,
        token=os.environ.get(TOKEN_ENV) or None, certfile=args.k8s_audit_cert,
        keyfile=args.k8s_audit_key, client_ca=args.k8s_audit_client_ca,
        max_event_bytes=args.k8s_audit_max_event_bytes,
        max_body_bytes=args.k8s_audit_max_batch_bytes,
    )
    webhook = AuditWebhook(config, detector.submit, detector.has_room)
    webhook.start()
    say(f"k8s audit webhook listening on {webhook.url}"
        + (" (bearer token required)" if config.token else "")
        + (" (client certificate required)" if config.client_ca else ""))
    return webhook
