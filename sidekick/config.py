"""Hub configuration: one YAML file, then environment variables, then CLI flags.

Keys and env names follow Falcosidekick: a dotted key path uppercased with ``_`` is its env
variable (``webhook.minimumpriority`` -> ``WEBHOOK_MINIMUMPRIORITY``). Maps are written
``k:v,k2:v2`` in env, lists ``a,b``. A wrong key or value is one ``ConfigError`` naming it.
"""

from __future__ import annotations

import difflib
import os
import re
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    SerializeAsAny,
    ValidationError,
    field_validator,
)

from outputs import REGISTRY
from outputs.base import OutputConfig
from sidekick.alert import parse_duration


class ConfigError(Exception):
    """A user-caused configuration problem; the message names the file/key/env variable."""


class _Section(BaseModel):
    # Secrets are SecretStr; validation errors must not echo them back either.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, hide_input_in_errors=True)


class _Durations(_Section):
    @field_validator("*", mode="before")
    @classmethod
    def _durations(cls, value: Any, info: Any) -> Any:
        if cls.model_fields[info.field_name].annotation is float:
            return parse_duration(value)
        return value


class RetentionConfig(_Durations):
    maxage: float = 7 * 86400.0
    maxcount: int = Field(1_000_000, ge=1)
    interval: float = 60.0  # how often retention runs


class DeliveryConfig(_Durations):
    initialbackoff: float = 1.0
    maxbackoff: float = 300.0
    drain: float = 10.0  # graceful shutdown: time in-flight sends get to finish
    # A leased delivery is reserved for the send timeout plus this; past it, another worker or
    # replica takes it over (that is how a dead replica's deliveries get finished).
    leasemargin: float = 30.0


class GrpcConfig(_Section):
    certfile: str = ""
    keyfile: str = ""
    cacertfile: str = ""  # set: clients must present a certificate it signed (mutual TLS)
    token: SecretStr = SecretStr("")  # set: clients must send `authorization: Bearer <token>`


class RedisConfig(_Section):
    url: SecretStr = SecretStr("redis://127.0.0.1:6379/0")  # may carry a password


class UiConfig(_Section):
    # Empty: env LANNER_UI_TOKEN, else one generated at first start and kept in the data dir.
    token: SecretStr = SecretStr("")
    # Where the hub copies the exceptions made in the UI (the store keeps them), for a detector
    # on the same machine; empty: <datadir>/lanner_local_rules.yaml.
    rulesfile: str = ""

    @field_validator("token")
    @classmethod
    def _token(cls, value: SecretStr) -> SecretStr:
        text = value.get_secret_value()
        if text and (len(text) < 16 or not text.isprintable() or " " in text):
            raise ValueError("must be at least 16 printable characters without spaces")
        return value


class HubConfig(_Durations):
    listenaddress: str = ""  # empty: all interfaces, as Falcosidekick
    listenport: int = Field(2801, ge=0, le=65535)
    grpcport: int = Field(5060, ge=0, le=65535)  # 0 disables gRPC ingest
    debug: bool = False
    datadir: str = "data"
    store: Literal["sqlite", "redis"] = "sqlite"
    replica: str = Field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}")
    # The hub's address as users reach it, for links to events in alerts (Alertmanager's
    # generatorURL); empty: http://<hostname>:<listenport>.
    publicurl: str = ""
    dedupwindow: float = 600.0
    bodylimit: int = Field(1 << 20, ge=1024)
    customfields: dict[str, str] = {}
    customtags: list[str] = []
    redis: RedisConfig = RedisConfig()
    grpc: GrpcConfig = GrpcConfig()
    ui: UiConfig = UiConfig()
    retention: RetentionConfig = RetentionConfig()
    delivery: DeliveryConfig = DeliveryConfig()
    outputs: dict[str, SerializeAsAny[OutputConfig]] = {}  # the enabled output sections

    @field_validator("publicurl")
    @classmethod
    def _public_url(cls, value: str) -> str:
        value = value.strip().rstrip("/")
        if value and not re.fullmatch(r"https?://[^\s/?#]+(/[^\s?#]*)?", value):
            raise ValueError("must be an http:// or https:// URL with no query")
        return value

    def public_url(self) -> str:
        return self.publicurl or f"http://{socket.gethostname()}:{self.listenport}"


def _env_name(path: tuple[str, ...]) -> str:
    return "_".join(path).upper()


def _parse_env(raw: str, annotation: Any) -> Any:
    """Env strings to the field's shape; scalars are left for pydantic to convert."""
    origin = get_origin(annotation)
    if origin is dict or annotation is dict:
        result = {}
        for pair in filter(None, (p.strip() for p in raw.split(","))):
            key, sep, value = pair.partition(":")
            if not sep:
                raise ValueError(f"{pair!r} is not key:value")
            result[key.strip()] = value.strip()
        return result
    if origin is list or annotation is list:
        return [item.strip() for item in raw.split(",") if item.strip()]
    return raw


def _model_of(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            return arg
    return None


def _apply_env(
    data: dict[str, Any],
    model: type[BaseModel],
    path: tuple[str, ...],
    env: Mapping[str, str],
    origins: dict[tuple[str, ...], str],
    shared: frozenset[str] = frozenset(),
) -> None:
    """Env values over ``data``; the ``shared`` keys are named after the parent path."""
    for name, info in model.model_fields.items():
        if name == "outputs" and model is HubConfig:
            continue
        sub = _model_of(info.annotation)
        if sub is not None:
            section = data.get(name)
            section = dict(section) if isinstance(section, dict) else {}
            _apply_env(section, sub, (*path, name), env, origins)
            if section:
                data[name] = section
            continue
        env_name = _env_name((*(path[:-1] if name in shared else path), name))
        if env_name in env:
            try:
                data[name] = _parse_env(env[env_name], info.annotation)
            except ValueError as exc:
                raise ConfigError(f"env {env_name}: {exc}") from None
            origins[(*(path[:-1] if name in shared else path), name)] = f"env {env_name}"


UI_TOKEN_ENV = "LANNER_UI_TOKEN"


def _ui_token_env(
    hub_data: dict[str, Any], env: Mapping[str, str], origins: dict[tuple[str, ...], str]
) -> None:
    """``LANNER_UI_TOKEN`` sets ``ui.token`` too: the name the Helm chart's Secret uses, and
    one that cannot clash with another program's ``UI_TOKEN``."""
    token = env.get(UI_TOKEN_ENV)
    if token is None:
        return
    if "UI_TOKEN" in env and env["UI_TOKEN"] != token:
        raise ConfigError(f"env {UI_TOKEN_ENV} and env UI_TOKEN differ: set only one")
    section = hub_data.get("ui")
    section = dict(section) if isinstance(section, dict) else {}
    section["token"] = token
    hub_data["ui"] = section
    origins[("ui", "token")] = f"env {UI_TOKEN_ENV}"


def _yaml_line(node: yaml.Node | None, path: tuple[str, ...]) -> int | None:
    """The line of a key path in the YAML file, to point errors at it."""
    for key in path:
        if not isinstance(node, yaml.MappingNode):
            return None
        for key_node, value_node in node.value:
            if key_node.value == key:
                node = value_node
                break
        else:
            return None
    return node.start_mark.line + 1 if node is not None else None


def _read_yaml(path: Path) -> tuple[dict[str, Any], yaml.Node | None]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    try:
        data = yaml.safe_load(text)
        node = yaml.compose(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f":{mark.line + 1}:{mark.column + 1}" if mark else ""
        raise ConfigError(f"{path}{where}: invalid YAML: {exc.problem}") from None
    if data is None:
        return {}, None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys")
    return data, node


def _unknown_key(key: str, known: list[str], parent: tuple[str, ...] = ()) -> str:
    near = difflib.get_close_matches(key, known, n=1)
    named = ".".join((*parent, key))
    return f"unknown key {named!r}" + (f" (did you mean {near[0]!r}?)" if near else "")


def _output_groups() -> dict[tuple[str, ...], set[str]]:
    """The keys each enclosing section may hold: ``aws`` -> {sqs, s3, region, ...}."""
    groups: dict[tuple[str, ...], set[str]] = {}
    for output in REGISTRY.values():
        for depth in range(1, len(output.path)):
            keys = groups.setdefault(output.path[:depth], set())
            keys.add(output.path[depth])
            if depth == len(output.path) - 1:
                keys.update(output.Config.shared)
    return groups


def _mapping_at(
    data: dict[str, Any], path: tuple[str, ...], where: str, node: yaml.Node | None
) -> dict[str, Any]:
    section: Any = data
    for depth, key in enumerate(path, 1):
        section = section.get(key) or {}
        if not isinstance(section, dict):
            line = _yaml_line(node, path[:depth])
            raise ConfigError(
                f"{where}{f':{line}' if line else ''}: {'.'.join(path[:depth])} must be a mapping"
            )
    return section


def load_config(
    path: Path | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> HubConfig:
    """File, then env (Falcosidekick names), then ``overrides`` (CLI flags, top-level keys)."""
    env = os.environ if env is None else env
    data, node = _read_yaml(path) if path else ({}, None)
    where = str(path) if path else "config"
    origins: dict[tuple[str, ...], str] = {}

    hub_keys = [k for k in HubConfig.model_fields if k != "outputs"]
    groups = _output_groups()
    known = hub_keys + sorted({output.path[0] for output in REGISTRY.values()})
    for keys, parent in [(known, ())] + [(sorted(v), k) for k, v in groups.items()]:
        for key in _mapping_at(data, parent, where, node):
            if key not in keys:
                line = _yaml_line(node, (*parent, str(key)))
                message = _unknown_key(str(key), keys, parent)
                raise ConfigError(f"{where}{f':{line}' if line else ''}: {message}")

    hub_data = {k: data[k] for k in hub_keys if k in data}
    _apply_env(hub_data, HubConfig, (), env, origins)
    _ui_token_env(hub_data, env, origins)
    fields = hub_data.get("customfields")
    if isinstance(fields, dict):  # `%NAME` reads env NAME, in YAML too (Falcosidekick: env only)
        hub_data["customfields"] = {
            k: env.get(v[1:], "") if isinstance(v, str) and v.startswith("%") else v
            for k, v in fields.items()
        }
    for key, value in (overrides or {}).items():
        if value is not None:
            hub_data[key] = value
            origins[(key,)] = f"flag --{key}"

    outputs: dict[str, OutputConfig] = {}
    for name, output in REGISTRY.items():
        parent = _mapping_at(data, output.path[:-1], where, node)
        section = dict(_mapping_at(data, output.path, where, node))
        shared = output.Config.shared
        inherited = {key for key in shared if key in parent and key not in section}
        section.update({key: parent[key] for key in inherited})
        _apply_env(section, output.Config, output.path, env, origins, shared)
        inherited |= {key for key in shared if (*output.path[:-1], key) in origins}
        try:
            config = output.Config(**section)
        except ValidationError as exc:
            raise ConfigError(
                _describe(exc, output.path, where, node, origins, frozenset(inherited))
            ) from None
        if output.enabled(config):
            outputs[name] = config
    try:
        hub = HubConfig(**hub_data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, (), where, node, origins)) from None
    hub.outputs = outputs
    return hub


def _describe(
    exc: ValidationError,
    prefix: tuple[str, ...],
    where: str,
    node: yaml.Node | None,
    origins: dict[tuple[str, ...], str],
    inherited: frozenset[str] = frozenset(),
) -> str:
    """The first validation error as `file:line: key: message` (or `env NAME: ...`).

    ``inherited`` are the output's shared keys whose value came from the parent section:
    they are named there (``aws.region``, not ``aws.sqs.region``).
    """
    err = exc.errors()[0]
    loc = tuple(str(p) for p in err["loc"])
    in_parent = bool(loc) and loc[0] in inherited
    path = (*(prefix[:-1] if in_parent else prefix), *loc)
    key = ".".join(path)
    message = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        message = _unknown_key(path[-1], [])
    origin = origins.get(path)
    if origin:
        return f"{origin}: {message}"
    line = _yaml_line(node, path)
    return f"{where}{f':{line}' if line else ''}: {key}: {message}"


def redacted(config: BaseModel) -> dict[str, Any]:
    """The config for logs, the API and --check: every secret (a SecretStr) masked."""
    return config.model_dump(mode="json")
