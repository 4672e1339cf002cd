from __future__ import annotations

from pathlib import Path

import pytest

from sidekick.alert import Priority, parse_duration
from sidekick.config import ConfigError, load_config, redacted


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


def test_falcosidekick_mutualtls_false_is_accepted() -> None:
    config = load_config(None, env={"ALERTMANAGER_HOSTPORT": "http://am:9093",
                                    "ALERTMANAGER_MUTUALTLS": "false"})
    assert config.outputs["alertmanager"].mutualtls is False


def test_output_durations_take_units() -> None:
    env = {"WEBHOOK_ADDRESS": "http://127.0.0.1:9/", "WEBHOOK_TIMEOUT": "500ms",
           "WEBHOOK_BATCHWINDOW": "2s", "WEBHOOK_MAXAGE": "2d"}
    webhook = load_config(None, env=env).outputs["webhook"]
    assert (webhook.timeout, webhook.batchwindow, webhook.maxage) == (0.5, 2, 2 * 86400)


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
        ("slack:\n  webhookurl: http://x\n  mutualtls: true\n", {},
         "config.yaml:3: slack.mutualtls: client certificates to outputs are not supported"),
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
    """Every key and env name is in docs/configuration.md or its output's page."""
    from outputs import REGISTRY
    from outputs.base import OutputConfig
    from sidekick.config import HubConfig

    docs = Path(__file__).parent.parent / "docs"
    doc = (docs / "configuration.md").read_text()
    missing = [env for env in _env_names(HubConfig) if f"`{env}`" not in doc]
    common = set(OutputConfig.model_fields)
    for output in REGISTRY.values():
        page = docs / "outputs" / f"{output.name}.md"
        text = page.read_text() if page.exists() else ""
        for key in set(output.Config.model_fields) - common:
            path = output.path[:-1] if key in output.Config.shared else output.path
            dotted, env = ".".join((*path, key)), "_".join((*path, key)).upper()
            missing += [name for name in (dotted, env) if f"`{name}`" not in text]
        if f"(outputs/{output.name}.md)" not in doc:
            missing.append(f"link to outputs/{output.name}.md")
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


def test_nested_output_sections_share_their_parent_keys(tmp_path: Path) -> None:
    """`aws.region` serves aws.sqs and aws.s3; env AWS_REGION overrides it for both."""
    path = write(tmp_path, """
aws:
  region: eu-west-1
  sqs: {url: "https://sqs.eu-west-1.amazonaws.com/1/q"}
  s3: {bucket: alerts, region: us-east-2}
gcp:
  pubsub: {projectid: p, topic: t}
""")
    config = load_config(path, env={})
    assert config.outputs["awssqs"].region == "eu-west-1"
    assert config.outputs["awss3"].region == "us-east-2"  # its own section wins
    assert "gcppubsub" in config.outputs
    config = load_config(path, env={"AWS_REGION": "ap-south-1", "AWS_S3_BUCKET": "other"})
    assert config.outputs["awssqs"].region == "ap-south-1"
    assert config.outputs["awss3"].bucket == "other"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("aws:\n  sns: {topicarn: x}\n", "config.yaml:2: unknown key 'aws.sns'"),
        ("aws:\n  sqs:\n    ulr: x\n", "config.yaml:3: aws.sqs.ulr: unknown key"),
        ("aws: 3\n", "config.yaml:1: aws must be a mapping"),
        ("gcp:\n  pubsub: [a]\n", "config.yaml:2: gcp.pubsub must be a mapping"),
        ("publicurl: 'lanner:2801'\n", "config.yaml:1: publicurl: must be an http"),
    ],
)
def test_nested_section_errors_name_the_key(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text), env={})
    assert message in str(info.value)


def test_public_url_defaults_to_this_host() -> None:
    import socket

    assert load_config(None, env={}).public_url() == f"http://{socket.gethostname()}:2801"
    config = load_config(None, env={"PUBLICURL": "https://lanner.example/"})
    assert config.public_url() == "https://lanner.example"


@pytest.mark.parametrize(
    ("text", "env", "message"),
    [
        ("gcp:\n  credentials: '%%%'\n  pubsub: {projectid: p, topic: t}\n", {},
         "config.yaml:2: gcp.credentials: "),
        ("gcp:\n  pubsub: {projectid: p, topic: t, credentials: '%%%'}\n", {},
         "config.yaml:2: gcp.pubsub.credentials: "),
        ("", {"GCP_CREDENTIALS": "%%%"}, "env GCP_CREDENTIALS: "),
    ],
)
def test_shared_key_errors_name_where_it_was_written(
    tmp_path: Path, text: str, env: dict, message: str
) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text), env=env)
    assert message in str(info.value)
    assert "%%%" not in str(info.value)
