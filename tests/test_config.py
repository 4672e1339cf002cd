from __future__ import annotations

from pathlib import Path

import pytest

from sidekick.alert import Priority
from sidekick.config import ConfigError, load_config, parse_duration, redacted


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def test_defaults_match_falcosidekick() -> None:
    config = load_config(None, env={})
    assert (config.listenport, config.grpcport, config.store) == (2801, 5060, "sqlite")
    assert config.bodylimit == 1 << 20 and config.dedupwindow == 600
    assert (config.retention.maxage, config.retention.maxcount) == (7 * 86400, 1_000_000)
    assert config.outputs == {}


def test_yaml_then_env_then_flags(tmp_path: Path) -> None:
    path = write(tmp_path, """
listenport: 3000
customfields: {cluster: prod, region: "%REGION"}
webhook:
  address: http://127.0.0.1:9/hook
  minimumpriority: warning
  customheaders: {Authorization: Bearer abc}
retention: {maxage: 2d}
""")
    env = {"LISTENPORT": "3001", "WEBHOOK_MINIMUMPRIORITY": "error", "REGION": "eu",
           "CUSTOMTAGS": "a,b", "RETENTION_MAXCOUNT": "10"}
    config = load_config(path, env=env, overrides={"listenport": 3002})
    assert config.listenport == 3002
    assert config.customfields == {"cluster": "prod", "region": "eu"}
    assert config.customtags == ["a", "b"]
    assert config.retention.maxage == 2 * 86400 and config.retention.maxcount == 10
    webhook = config.outputs["webhook"]
    assert webhook.minimumpriority is Priority.ERROR


def test_env_alone_enables_an_output() -> None:
    env = {"WEBHOOK_ADDRESS": "http://127.0.0.1:9/", "WEBHOOK_CUSTOMHEADERS": "X-A:1,X-B:a:b"}
    config = load_config(None, env=env)
    headers = config.outputs["webhook"].customheaders
    assert {k: v.get_secret_value() for k, v in headers.items()} == {"X-A": "1", "X-B": "a:b"}


@pytest.mark.parametrize(
    ("text", "env", "message"),
    [
        ("listenprot: 1\n", {},
         "config.yaml:1: unknown key 'listenprot' (did you mean 'listenport'?)"),
        ("webhook:\n  address: http://x\n  minimumpriority: urgent\n", {},
         "config.yaml:3: webhook.minimumpriority: unknown priority 'urgent'"),
        ("webhook:\n  adress: http://x\n", {}, "config.yaml:2: webhook.adress: unknown key"),
        ("retention:\n  maxage: soon\n", {},
         "config.yaml:2: retention.maxage: 'soon' is not a duration"),
        ("listenport: [1\n", {}, "config.yaml:2:1: invalid YAML"),
        ("- a\n", {}, "the top level must be a mapping"),
        ("", {"LISTENPORT": "http"}, "env LISTENPORT: Input should be a valid integer"),
        ("", {"WEBHOOK_ADDRESS": "http://x", "WEBHOOK_MINIMUMPRIORITY": "loud"},
         "env WEBHOOK_MINIMUMPRIORITY: unknown priority 'loud'"),
        ("", {"CUSTOMFIELDS": "novalue"}, "env CUSTOMFIELDS: 'novalue' is not key:value"),
        ("store: mongo\n", {}, "config.yaml:1: store: Input should be 'sqlite' or 'redis'"),
    ],
)
def test_errors_name_the_key(tmp_path: Path, text: str, env: dict, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text), env=env)
    assert message in str(info.value)


def test_secrets_are_masked(tmp_path: Path) -> None:
    path = write(tmp_path, """
redis: {url: "redis://:hunter2@127.0.0.1:6379/0"}
grpc: {token: hunter2}
webhook: {address: "http://h/hunter2", hmacsecret: hunter2, customheaders: {A: hunter2}}
""")
    config = load_config(path, env={})
    assert "hunter2" not in repr(config)
    assert "hunter2" not in str(redacted(config))
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, "webhook: {address: 'ftp://hunter2'}\n"), env={})
    assert "hunter2" not in str(info.value)


@pytest.mark.parametrize(("text", "seconds"), [("30s", 30), ("10m", 600), ("2h", 7200),
                                               ("7d", 604800), ("1w", 604800), ("500ms", 0.5),
                                               (12, 12), ("12", 12)])
def test_durations(text: str | int, seconds: float) -> None:
    assert parse_duration(text) == seconds


def _env_names(model: type, path: tuple[str, ...] = ()) -> list[str]:
    from pydantic import BaseModel

    from sidekick.config import _model_of

    names = []
    for name, info in model.model_fields.items():
        if name == "outputs":
            continue
        sub = _model_of(info.annotation)
        if sub is not None and issubclass(sub, BaseModel) and sub.__name__ != "OutputConfig":
            names += _env_names(sub, (*path, name))
        else:
            names.append("_".join((*path, name)).upper())
    return names


def test_reference_documents_every_key() -> None:
    from outputs import REGISTRY
    from outputs.base import OutputConfig
    from sidekick.config import HubConfig

    doc = (Path(__file__).parent.parent / "docs" / "configuration.md").read_text()
    missing = [env for env in _env_names(HubConfig) if f"`{env}`" not in doc]
    common = set(OutputConfig.model_fields)
    for name, output in REGISTRY.items():
        missing += [f"{name}.{key}" for key in output.Config.model_fields
                    if key not in common and f"`{name}.{key}`" not in doc]
    missing += [key for key in common if f"`{key}`" not in doc]
    assert missing == []


def test_cli_check_prints_masked_config_and_flags_win(tmp_path: Path) -> None:
    import json
    import os
    import subprocess
    import sys

    env = {**os.environ, "WEBHOOK_ADDRESS": "http://h/hunter2", "LISTENPORT": "3000"}
    result = subprocess.run(
        [sys.executable, "-m", "sidekick.cli", "sidekick", "--check", "--listenport", "3001"],
        capture_output=True, text=True, env=env, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "hunter2" not in result.stdout
    shown = json.loads(result.stdout)
    assert shown["listenport"] == 3001
    assert shown["outputs"]["webhook"]["address"] == "**********"
    bad = subprocess.run(
        [sys.executable, "-m", "sidekick.cli", "sidekick", "--check",
         "-c", str(write(tmp_path, "listenprot: 1\n"))],
        capture_output=True, text=True, timeout=60,
    )
    assert bad.returncode == 2
    assert bad.stderr.startswith("lanner: configuration error: ")
    assert "Traceback" not in bad.stderr
