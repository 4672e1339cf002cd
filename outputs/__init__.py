"""Destinations, one module each, all on outputs.base. REGISTRY maps config key -> class."""

from __future__ import annotations

from outputs.base import Output
from outputs.webhook import WebhookOutput

REGISTRY: dict[str, type[Output]] = {
    output.name: output for output in (WebhookOutput,)
}
