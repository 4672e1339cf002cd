"""Which outputs an alert goes to, and Falcosidekick's enrichment before that."""

from __future__ import annotations

from fnmatch import fnmatchcase

from outputs.base import OutputConfig
from sidekick.alert import TEST_RULE, Alert


def enrich(alert: Alert, customfields: dict[str, str], customtags: list[str]) -> None:
    """customfields into output_fields, customtags into tags (kept sorted), test alerts internal."""
    if customfields:
        alert.output_fields.update(customfields)
    if customtags:
        alert.tags = sorted({*alert.tags, *customtags})
    if alert.rule == TEST_RULE:
        alert.source = "internal"


def wants(config: OutputConfig, alert: Alert) -> bool:
    """An output's filters: minimumpriority (inclusive), rule globs, sources, tags (any)."""
    # The /test alert reaches every output, as in Falcosidekick, so outputs can be checked.
    below = config.minimumpriority is not None and alert.priority < config.minimumpriority
    if below and alert.rule != TEST_RULE:
        return False
    if config.rules and not any(fnmatchcase(alert.rule, pattern) for pattern in config.rules):
        return False
    if config.sources and alert.source not in config.sources:
        return False
    return not config.tags or any(tag in alert.tags for tag in config.tags)


def route(outputs: dict[str, OutputConfig], alert: Alert) -> list[str]:
    return [name for name, config in outputs.items() if wants(config, alert)]
