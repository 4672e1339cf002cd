"""AWS S3 (and S3-compatible stores): alerts as objects, one per alert or one per batch.

Keys (``aws.s3.*`` / ``AWS_S3_*``), Falcosidekick's: ``bucket`` (setting it enables the
output), ``prefix`` (default ``falco``), ``endpoint`` (an S3-compatible store; path-style
addressing then), ``objectcannedacl`` (default ``bucket-owner-full-control``; empty sends no
ACL, for buckets and stores without ACLs); the shared ``aws.*`` keys of ``outputs.aws`` and the
common keys of ``OutputConfig``.

With ``batchsize`` 1 (the default), each alert is one object, its Falco JSON
(``Content-Type: application/json``), as in Falcosidekick::

    <prefix>/<YYYY-MM-DD>/<YYYYMMDDTHHMMSS.nnnnnnnnnZ>_<uuid>.json

Both times are the alert's event time in UTC, not the upload time (Falcosidekick's choice), so
a retried alert overwrites its own object and two replicas never write the same key. The time
is ISO 8601's basic form, without the colons of Falcosidekick's RFC3339Nano: colons are legal in
S3 keys but break Hadoop/Spark paths and Windows file names; the keys still sort by time. A
uuid with characters other than letters, digits, ``-`` and ``_`` (or over 128 of them) is
replaced by the first 32 hex digits of its SHA-256.

With ``batchsize`` above 1, each send is one gzip'd NDJSON object (``Content-Type:
application/x-ndjson``, ``Content-Encoding: gzip``), alerts sorted by time, then uuid::

    <prefix>/<YYYY-MM-DD>/<earliest event time>_<32 hex digits>.ndjson.gz

where the hex digits begin the SHA-256 of the batch's sorted uuids, so resending the same batch
writes the same key and the same bytes. ``batchwindow`` is how long the hub waits to fill a
batch: the time window of one object.
"""

from __future__ import annotations

import gzip
import hashlib
import re
import time
from typing import Any, ClassVar, Literal

from pydantic import field_validator

from outputs.aws import AwsConfig, AwsOutput, raise_failures
from outputs.base import OutputConfig, PermanentError, RetryableError
from sidekick.alert import Alert

JSON = "application/json"
NDJSON = "application/x-ndjson"
_BUCKET = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{1,253}[A-Za-z0-9]")
_KEY_UUID = re.compile(r"[A-Za-z0-9_-]{1,128}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

CannedAcl = Literal[
    "",
    "private",
    "public-read",
    "public-read-write",
    "authenticated-read",
    "aws-exec-read",
    "bucket-owner-read",
    "bucket-owner-full-control",
]


def key_time(ns: int) -> str:
    """``20261129T100000.123456789Z``: UTC, ISO 8601 basic form, nanoseconds."""
    seconds, frac = divmod(ns, 1_000_000_000)
    return time.strftime("%Y%m%dT%H%M%S", time.gmtime(seconds)) + f".{frac:09d}Z"


def key_day(ns: int) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(ns // 1_000_000_000))


def key_uuid(uuid: str) -> str:
    return uuid if _KEY_UUID.fullmatch(uuid) else hashlib.sha256(uuid.encode()).hexdigest()[:32]


def _join(prefix: str, *parts: str) -> str:
    return "/".join((prefix, *parts)) if prefix else "/".join(parts)


def object_key(prefix: str, alert: Alert) -> str:
    """The key of one alert's object."""
    name = f"{key_time(alert.time_ns)}_{key_uuid(alert.uuid)}.json"
    return _join(prefix, key_day(alert.time_ns), name)


def batch_key(prefix: str, alerts: list[Alert]) -> str:
    """The key of a batch's object: its earliest event time and a digest of its uuids."""
    earliest = min(alert.time_ns for alert in alerts)
    digest = hashlib.sha256("\n".join(sorted(a.uuid for a in alerts)).encode()).hexdigest()
    return _join(prefix, key_day(earliest), f"{key_time(earliest)}_{digest[:32]}.ndjson.gz")


def batch_body(alerts: list[Alert]) -> bytes:
    """Gzip'd NDJSON; mtime 0 so the same batch always gives the same bytes."""
    ordered = sorted(alerts, key=lambda a: (a.time_ns, a.uuid))
    return gzip.compress(b"".join(a.to_json() + b"\n" for a in ordered), 6, mtime=0)


class S3Config(AwsConfig):
    bucket: str = ""
    prefix: str = "falco"
    objectcannedacl: CannedAcl = "bucket-owner-full-control"

    @field_validator("bucket")
    @classmethod
    def _bucket(cls, value: str) -> str:
        value = value.strip()
        if value and not _BUCKET.fullmatch(value):
            raise ValueError(
                "must be a bucket name: 3 to 255 letters, digits, dots, dashes or underscores "
                "(not a URL; set aws.s3.endpoint for another store)"
            )
        return value

    @field_validator("prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        value = value.strip().strip("/")
        if _CONTROL.search(value) or len(value.encode()) > 512:
            raise ValueError("must be at most 512 bytes, without control characters")
        return value


class S3Output(AwsOutput):
    name: ClassVar[str] = "awss3"
    path: ClassVar[tuple[str, ...]] = ("aws", "s3")
    Config: ClassVar[type[OutputConfig]] = S3Config
    service: ClassVar[str] = "s3"

    config: S3Config

    @classmethod
    def enabled(cls, config: OutputConfig) -> bool:
        return isinstance(config, S3Config) and bool(config.bucket)

    def client_options(self) -> dict[str, Any]:
        # S3-compatible stores rarely serve bucket subdomains of their endpoint.
        return {"s3": {"addressing_style": "path"}} if self.config.endpoint else {}

    async def send(self, batch: list[Alert]) -> None:
        if self.config.batchsize > 1:
            await self.call(self._put_batch, batch)
            return
        failures: dict[str, RetryableError | PermanentError] = {}
        for index, alert in enumerate(batch):
            try:
                await self.call(
                    self._put, object_key(self.config.prefix, alert), alert.to_json(), JSON
                )
            except RetryableError as exc:
                failures.update((a.uuid, exc) for a in batch[index:])
                break
            except PermanentError as exc:
                failures[alert.uuid] = exc
        raise_failures(self.name, batch, failures)

    def _put_batch(self, batch: list[Alert]) -> None:
        # Compressing here, in the output's thread, keeps it off the event loop.
        self._put(batch_key(self.config.prefix, batch), batch_body(batch), NDJSON, "gzip")

    def _put(self, key: str, body: bytes, content_type: str, encoding: str = "") -> None:
        params: dict[str, Any] = {
            "Bucket": self.config.bucket,
            "Key": key,
            "Body": body,
            "ContentType": content_type,
        }
        if encoding:
            params["ContentEncoding"] = encoding
        if self.config.objectcannedacl:
            params["ACL"] = self.config.objectcannedacl
        self._client.put_object(**params)
