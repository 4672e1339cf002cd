"""Destinations, one module each, all on outputs.base. REGISTRY maps name -> class."""

from __future__ import annotations

from outputs.alertmanager import AlertmanagerOutput
from outputs.base import Output
from outputs.discord import DiscordOutput
from outputs.pubsub import PubsubOutput
from outputs.s3 import S3Output
from outputs.slack import SlackOutput
from outputs.sqs import SqsOutput
from outputs.webhook import WebhookOutput

REGISTRY: dict[str, type[Output]] = {
    output.name: output
    for output in (
        SlackOutput, DiscordOutput, AlertmanagerOutput, SqsOutput, S3Output, PubsubOutput,
        WebhookOutput,
    )
}
