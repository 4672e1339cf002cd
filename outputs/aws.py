"""What the AWS outputs (``awssqs``, ``awss3``) share: the ``aws.*`` keys, the client, errors.

Keys, read from the ``aws`` section and shared by ``aws.sqs`` and ``aws.s3`` (a value written in
the output's own section wins), with Falcosidekick's names and env variables: ``accesskeyid``
and ``secretaccesskey`` (``AWS_ACCESSKEYID``, ``AWS_SECRETACCESSKEY``), ``region``
(``AWS_REGION``), ``rolearn``, ``externalid``, ``checkidentity``; ours: ``stsendpoint``. Each
output adds its own ``endpoint`` (``aws.sqs.endpoint``...) for emulators and S3-compatible
stores.

Credentials: the static key pair when set, otherwise botocore's default chain (env
``AWS_ACCESS_KEY_ID``, shared config files, web identity/IRSA, ECS and EC2 metadata). With
``rolearn`` those credentials assume the role (``ExternalId`` = ``externalid``) and botocore
renews the temporary credentials before they expire; Falcosidekick assumed it once and never
renewed. ``checkidentity`` calls ``sts:GetCallerIdentity`` at start and only logs the outcome:
the hub keeps accepting alerts and the deliveries retry or dead-letter, where Falcosidekick
turned every AWS output off.

Blocking boto3 calls run in a small thread pool per output (``maxconcurrentrequests``
threads), on one client created at start. botocore's own retries are off: the hub's queue
retries with backoff and honours Retry-After. Errors are classified here: throttling and
transient codes, 408/425/429, 5xx, timeouts and connection failures are retryable; any other
4xx is permanent. Messages carry the AWS error code and HTTP status, never an URL, a queue URL,
an account id or a key.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ClassVar, TypeVar
from urllib.parse import urlsplit

import boto3
import botocore.session
from botocore.client import BaseClient
from botocore.config import Config as BotoConfig
from botocore.credentials import (
    CredentialProvider,
    CredentialResolver,
    DeferredRefreshableCredentials,
)
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectTimeoutError,
    NoCredentialsError,
    ParamValidationError,
    ReadTimeoutError,
)
from botocore.exceptions import ConnectionError as BotoConnectionError
from pydantic import SecretStr, field_validator, model_validator

from outputs.base import (
    RETRYABLE_STATUS,
    Output,
    OutputConfig,
    PartialFailure,
    PermanentError,
    RetryableError,
    retry_after_seconds,
)
from sidekick.alert import Alert

log = logging.getLogger("lanner.outputs.aws")

# botocore logs every request's headers at DEBUG, session token included, and `debug: true`
# puts the root logger at DEBUG: keep these loggers above that whatever the hub's level.
for _name in ("boto3", "botocore", "s3transfer"):
    logging.getLogger(_name).setLevel(logging.WARNING)

T = TypeVar("T")

_REGION = re.compile(r"[a-zA-Z0-9](?:[a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?")  # as botocore checks it
_ROLE_ARN = re.compile(r"arn:aws[a-z-]*:iam::\d{12}:role/[\w+=,.@/-]{1,512}")
_EXTERNAL_ID = re.compile(r"[\w+=,.@:/-]{2,1224}")
_CODE_CHARS = re.compile(r"[^A-Za-z0-9._-]")

# Error codes that mean "try again" whatever the HTTP status: AWS answers some throttling with
# 400 or 403. Matched on the last dotted part, so "AWS.SimpleQueueService.RequestThrottled" and
# "KMS.ThrottlingException" count too.
_RETRYABLE_CODES = frozenset(
    {
        "BandwidthLimitExceeded",
        "EC2ThrottledException",
        "ExpiredToken",  # temporary credentials: renewed before the next attempt
        "ExpiredTokenException",
        "InternalError",
        "InternalFailure",
        "KmsThrottled",
        "LimitExceededException",
        "PriorRequestNotComplete",
        "ProvisionedThroughputExceededException",
        "RequestExpired",
        "RequestLimitExceeded",
        "RequestThrottled",
        "RequestThrottledException",
        "RequestTimeTooSkewed",
        "RequestTimeout",
        "RequestTimeoutException",
        "ServiceUnavailable",
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "TooManyRequestsException",
        "TransactionInProgressException",
    }
)

SHARED_KEYS = frozenset(
    {"accesskeyid", "secretaccesskey", "region", "rolearn", "externalid", "checkidentity",
     "stsendpoint"}
)


def endpoint_url(value: str) -> str:
    """An ``http(s)://host[:port][/path]`` endpoint, without a trailing slash; "" stays ""."""
    text = value.strip().rstrip("/")
    if not text:
        return ""
    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise ValueError("must be an http:// or https:// URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query:
        raise ValueError("must be an http:// or https:// URL without a query")
    return text


class AwsConfig(OutputConfig):
    shared: ClassVar[frozenset[str]] = SHARED_KEYS

    accesskeyid: SecretStr = SecretStr("")
    secretaccesskey: SecretStr = SecretStr("")
    region: str = ""
    rolearn: str = ""
    externalid: str = ""
    checkidentity: bool = True
    stsendpoint: str = ""  # STS for AssumeRole and the identity check; empty: AWS's
    endpoint: str = ""  # the service's endpoint (an emulator, an S3-compatible store)

    @field_validator("accesskeyid", "secretaccesskey")
    @classmethod
    def _strip_secret(cls, value: SecretStr) -> SecretStr:
        return SecretStr(value.get_secret_value().strip())

    @field_validator("region")
    @classmethod
    def _region(cls, value: str) -> str:
        value = value.strip()
        if value and not _REGION.fullmatch(value):
            raise ValueError("must be a region name such as us-east-1")
        return value

    @field_validator("rolearn")
    @classmethod
    def _role_arn(cls, value: str) -> str:
        value = value.strip()
        if value and not _ROLE_ARN.fullmatch(value):
            raise ValueError("must be a role ARN: arn:aws:iam::<12-digit account>:role/<name>")
        return value

    @field_validator("externalid")
    @classmethod
    def _external_id(cls, value: str) -> str:
        value = value.strip()
        if value and not _EXTERNAL_ID.fullmatch(value):
            raise ValueError("must be 2 to 1224 letters, digits or +=,.@:/-_")
        return value

    @field_validator("stsendpoint", "endpoint")
    @classmethod
    def _endpoint(cls, value: str) -> str:
        return endpoint_url(value)

    @model_validator(mode="after")
    def _pairs(self) -> AwsConfig:
        if bool(self.accesskeyid.get_secret_value()) != bool(
            self.secretaccesskey.get_secret_value()
        ):
            raise ValueError("accesskeyid and secretaccesskey must be set together")
        if self.externalid and not self.rolearn:
            raise ValueError("externalid is only used with rolearn")
        return self


def error_code(value: Any) -> str:
    """An AWS error code, safe to show: the characters codes are made of, at most 80."""
    return _CODE_CHARS.sub("", str(value or ""))[:80]


def classify(output: str, exc: Exception) -> RetryableError | PermanentError:
    """A botocore exception as the hub's retryable or permanent error, in a short message."""
    if isinstance(exc, ClientError):
        error = exc.response.get("Error") or {}
        meta = exc.response.get("ResponseMetadata") or {}
        status = int(meta.get("HTTPStatusCode") or 0)
        # Query-compatible services (SQS) give the modern code as QueryErrorCode and the
        # legacy one ("AWS.SimpleQueueService.NonExistentQueue") as Code.
        # An answer without a code gets its status as Code from botocore: not worth showing.
        codes = [error_code(error.get(k)) for k in ("QueryErrorCode", "Code")]
        code = next((c for c in codes if c and c != str(status)), "")
        message = f"{output}: {code} (HTTP {status})" if code else f"{output}: HTTP {status}"
        if (
            any(c.rsplit(".", 1)[-1] in _RETRYABLE_CODES for c in codes)
            or status in RETRYABLE_STATUS
            or status >= 500
        ):
            retry_after = (meta.get("HTTPHeaders") or {}).get("retry-after")
            return RetryableError(message, retry_after_seconds(retry_after))
        return PermanentError(message)
    if isinstance(exc, ConnectTimeoutError | ReadTimeoutError):
        return RetryableError(f"{output}: timeout")
    if isinstance(exc, BotoConnectionError):
        return RetryableError(f"{output}: connection failed")
    if isinstance(exc, NoCredentialsError):
        # The default chain found nothing; metadata services can be briefly unreachable.
        return RetryableError(f"{output}: no AWS credentials found")
    if isinstance(exc, ParamValidationError):
        return PermanentError(f"{output}: request refused by the AWS SDK's validation")
    return RetryableError(f"{output}: {type(exc).__name__}")


def raise_failures(
    output: str, batch: list[Alert], failures: dict[str, RetryableError | PermanentError]
) -> None:
    """Nothing failed: return. Everything failed alike: raise that error. Else PartialFailure."""
    if not failures:
        return
    kinds = {(type(e), str(e), getattr(e, "retry_after", None)) for e in failures.values()}
    if len(kinds) == 1 and failures.keys() >= {alert.uuid for alert in batch}:
        raise next(iter(failures.values()))
    raise PartialFailure(output, failures)


class _AssumeRole(CredentialProvider):
    """Temporary credentials of ``rolearn``, fetched on first use and renewed by botocore."""

    METHOD = "assume-role"

    def __init__(self, sts: BaseClient, role_arn: str, external_id: str, name: str) -> None:
        super().__init__()
        self._sts = sts
        self._params = {"RoleArn": role_arn, "RoleSessionName": f"lanner-{name}"}
        if external_id:
            self._params["ExternalId"] = external_id

    def load(self) -> DeferredRefreshableCredentials:
        return DeferredRefreshableCredentials(self._fetch, self.METHOD)

    def _fetch(self) -> dict[str, str]:
        credentials = self._sts.assume_role(**self._params)["Credentials"]
        return {
            "access_key": credentials["AccessKeyId"],
            "secret_key": credentials["SecretAccessKey"],
            "token": credentials["SessionToken"],
            "expiry_time": credentials["Expiration"].isoformat(),
        }


def botocore_config(config: AwsConfig, **extra: Any) -> BotoConfig:
    return BotoConfig(
        connect_timeout=config.timeout,
        read_timeout=config.timeout,
        retries={"total_max_attempts": 1},  # one attempt: the hub's queue does the retrying
        max_pool_connections=max(10, config.maxconcurrentrequests),
        user_agent_appid="lanner",
        **extra,
    )


def aws_session(config: AwsConfig, name: str) -> boto3.Session:
    """A session with the configured credentials (see the module docstring). Blocking: it may
    read the shared config files."""
    core = botocore.session.Session()
    if config.region:
        core.set_config_variable("region", config.region)
    key = config.accesskeyid.get_secret_value()
    if key:
        core.set_credentials(key, config.secretaccesskey.get_secret_value())
    if not config.rolearn:
        return boto3.Session(botocore_session=core)
    base = boto3.Session(botocore_session=core)
    sts = base.client(
        "sts",
        endpoint_url=config.stsendpoint or None,
        region_name=base.region_name or "us-east-1",
        config=botocore_config(config),
    )
    assumed = botocore.session.Session()
    if config.region:
        assumed.set_config_variable("region", config.region)
    provider = _AssumeRole(sts, config.rolearn, config.externalid, name)
    assumed.register_component("credential_provider", CredentialResolver([provider]))
    return boto3.Session(botocore_session=assumed)


class AwsOutput(Output):
    """One boto3 client per output, made at start, used from a small thread pool."""

    service: ClassVar[str]  # the boto3 service name: "sqs", "s3"
    config: AwsConfig

    def __init__(self, config: AwsConfig, public_url: str = "") -> None:
        super().__init__(config, public_url)
        self._client: Any = None
        self._executor: ThreadPoolExecutor | None = None
        self._session: boto3.Session | None = None
        self._region = ""

    def default_region(self) -> str | None:
        """The region when neither ``aws.region`` nor botocore's defaults give one."""
        return "us-east-1" if self.config.endpoint else None

    def client_options(self) -> dict[str, Any]:
        """Extra botocore ``Config`` options of the service."""
        return {}

    async def start(self) -> None:
        if self._client is not None:
            return
        self._executor = ThreadPoolExecutor(
            max_workers=max(1, self.config.maxconcurrentrequests),
            thread_name_prefix=f"output-{self.name}",
        )
        loop = asyncio.get_running_loop()
        self._client = await loop.run_in_executor(self._executor, self._make_client)
        if self.config.checkidentity and (self.config.stsendpoint or not self.config.endpoint):
            await self._check_identity()

    def _make_client(self) -> BaseClient:
        self._session = aws_session(self.config, self.name)
        region = self._session.region_name or self.default_region()
        if region is None:
            raise PermanentError(f"{self.name}: no AWS region: set aws.region (env AWS_REGION)")
        self._region = region
        return self._session.client(
            self.service,
            endpoint_url=self.config.endpoint or None,
            region_name=region,
            config=botocore_config(self.config, **self.client_options()),
        )

    async def _check_identity(self) -> None:
        """Say early in the log whether the credentials work; the outcome changes nothing.

        A custom endpoint without ``stsendpoint`` skips it: AWS's STS would judge credentials
        meant for another service (an emulator, an S3-compatible store).
        """
        assert self._session is not None
        sts = self._session.client(
            "sts",
            endpoint_url=self.config.stsendpoint or None,
            region_name=self._region,
            config=botocore_config(self.config),
        )
        try:
            await self.call(sts.get_caller_identity)
        except (RetryableError, PermanentError) as exc:
            log.warning(
                "AWS identity check (sts:GetCallerIdentity) failed: %s; deliveries go ahead and "
                "are retried or dead-lettered", exc
            )
        else:
            log.info("%s: AWS credentials accepted by sts:GetCallerIdentity", self.name)
        finally:
            sts.close()

    async def close(self) -> None:
        client, self._client = self._client, None
        executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)
        if client is not None:
            client.close()

    async def call(self, method: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a blocking boto3 call in the output's threads; errors come back classified."""
        if self._client is None:
            await self.start()
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(
                self._executor, functools.partial(method, *args, **kwargs)
            )
        except (BotoCoreError, ClientError) as exc:
            raise classify(self.name, exc) from None
