"""Where the publisher's hubs are and how it reaches them: targets, name resolution, channels.

Targets are "host:port" (port 5060 if left out; "[v6]:port" for IPv6). A name is resolved
again on every attempt, and each address it has is a target of its own, so a DNS name for a
set of replicas (a Kubernetes headless service) spreads the publisher over them and follows
their changes. A target is dialled by address; with TLS the hub's certificate must carry the
name, not the address.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc

DEFAULT_PORT = 5060

CHANNEL_OPTIONS: list[tuple[str, int | str]] = [
    ("grpc.max_receive_message_length", 16 * 1024 * 1024),
    ("grpc.max_send_message_length", 16 * 1024 * 1024),
    # Notices a hub that vanished without closing the connection (node gone, NAT timeout).
    # The hub accepts pings every 10 s.
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 10_000),
]


@dataclass(frozen=True, slots=True)
class PublisherTls:
    """``cacertfile`` verifies the hub; ``certfile``/``keyfile`` are ours, for mutual TLS."""

    cacertfile: str
    certfile: str | None = None
    keyfile: str | None = None


@dataclass(frozen=True, slots=True)
class Target:
    address: str  # what is dialled: ip:port
    label: str  # what is shown: as configured, with the address if resolved
    tls_name: str | None  # the name the hub's certificate must carry, if not the address


def _split(text: str) -> tuple[str, int]:
    text = text.strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest.removeprefix(":")
    elif text.count(":") == 1:
        host, _, port = text.partition(":")
    else:
        host, port = text, ""  # a bare name, or a bare IPv6 address
    if not host or (port and not port.isdigit()):
        raise ValueError(f"hub target {text!r} is not host:port")
    return host, int(port) if port else DEFAULT_PORT


def _address(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _read_pem(path: str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ValueError(f"tls.{what} {path}: {exc.strerror or exc}") from None


def _credentials(tls: PublisherTls) -> grpc.ChannelCredentials:
    if (tls.certfile is None) != (tls.keyfile is None):
        raise ValueError("tls: certfile and keyfile go together (mutual TLS needs both)")
    return grpc.ssl_channel_credentials(
        root_certificates=_read_pem(tls.cacertfile, "cacertfile"),
        private_key=_read_pem(tls.keyfile, "keyfile") if tls.keyfile else None,
        certificate_chain=_read_pem(tls.certfile, "certfile") if tls.certfile else None,
    )


class Hubs:
    """Raises ValueError for a malformed target or an unreadable TLS file."""

    def __init__(self, targets: Sequence[str] | str, tls: PublisherTls | None) -> None:
        names = targets.split(",") if isinstance(targets, str) else list(targets)
        self._targets = [_split(name) for name in names if name.strip()]
        if not self._targets:
            raise ValueError("no hub target given")
        self._credentials = _credentials(tls) if tls else None

    async def resolve(self, failed: Callable[[str, str], None]) -> list[Target]:
        """Every address of every target; ``failed(label, why)`` for a name that has none."""
        loop = asyncio.get_running_loop()
        out: list[Target] = []
        for host, port in self._targets:
            label = f"{host}:{port}"
            if _is_ip(host):
                out.append(Target(_address(host, port), label, None))
                continue
            try:
                infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            except (OSError, UnicodeError) as exc:  # UnicodeError: not a valid host name
                failed(label, f"cannot resolve {host}: {getattr(exc, 'strerror', None) or exc}")
                continue
            for ip in dict.fromkeys(str(info[4][0]) for info in infos):
                address = _address(ip, port)
                out.append(Target(address, f"{label} ({address})", host))
        return out

    def resolve_blocking(self, failed: Callable[[str, str], None]) -> list[Target]:
        """``resolve`` for a thread with no event loop of its own (blocks while resolving)."""
        return asyncio.run(self.resolve(failed))

    def _options(self, target: Target) -> list[tuple[str, int | str]]:
        options = list(CHANNEL_OPTIONS)
        if self._credentials is not None and target.tls_name:
            options.append(("grpc.ssl_target_name_override", target.tls_name))
        return options

    def channel(self, target: Target) -> grpc.aio.Channel:
        if self._credentials is None:
            return grpc.aio.insecure_channel(target.address, options=CHANNEL_OPTIONS)
        return grpc.aio.secure_channel(target.address, self._credentials,
                                       options=self._options(target))

    def blocking_channel(self, target: Target) -> grpc.Channel:
        """A synchronous channel, for occasional unary calls from a thread of their own."""
        if self._credentials is None:
            return grpc.insecure_channel(target.address, options=CHANNEL_OPTIONS)
        return grpc.secure_channel(target.address, self._credentials,
                                   options=self._options(target))
