"""moto's server for the AWS output tests: a real process on loopback, and boto3 clients for it.

moto accepts any credentials; these fake ones are distinctive so tests can check that they never
leak into errors, logs or dumps.
"""

from __future__ import annotations

import subprocess
import sys
import time
from typing import Any

import boto3
import httpx
from botocore.client import BaseClient
from botocore.config import Config

from tests.support import free_port, wait_port

ACCESS_KEY = "AKIALANNERTESTKEY001"
SECRET_KEY = "lanner-test-secret-key-do-not-leak-0001"
REGION = "us-east-1"
ACCOUNT = "123456789012"  # moto's account id, which its queue URLs carry


class MotoServer:
    """``moto.server`` in its own process (the same code as the ``moto_server`` command)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_port(self.port, proc=self.proc)
        self.url = f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> MotoServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)

    def reset(self) -> None:
        httpx.post(f"{self.url}/moto-api/reset").raise_for_status()

    def client(self, service: str) -> BaseClient:
        extra: dict[str, Any] = {"s3": {"addressing_style": "path"}} if service == "s3" else {}
        return boto3.Session(
            aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY, region_name=REGION
        ).client(service, endpoint_url=self.url, config=Config(**extra))

    # -- SQS -------------------------------------------------------------------------------

    def create_queue(self, name: str) -> str:
        attributes = {"FifoQueue": "true"} if name.endswith(".fifo") else {}
        return self.client("sqs").create_queue(QueueName=name, Attributes=attributes)["QueueUrl"]

    def messages(self, queue_url: str, expect: int = 0, timeout: float = 10.0) -> list[dict]:
        """Every message in the queue (kept invisible once read), waiting for ``expect``."""
        sqs = self.client("sqs")
        got: list[dict] = []
        deadline = time.monotonic() + timeout
        while True:
            answer = sqs.receive_message(
                QueueUrl=queue_url,
                MaxNumberOfMessages=10,
                VisibilityTimeout=600,
                MessageAttributeNames=["All"],
                MessageSystemAttributeNames=["All"],
            )
            batch = answer.get("Messages", [])
            got += batch
            if not batch and (len(got) >= expect or time.monotonic() > deadline):
                return got
            if not batch:
                time.sleep(0.1)

    # -- S3 --------------------------------------------------------------------------------

    def create_bucket(self, name: str) -> None:
        self.client("s3").create_bucket(Bucket=name)

    def keys(self, bucket: str) -> list[str]:
        listing = self.client("s3").list_objects_v2(Bucket=bucket)
        return [item["Key"] for item in listing.get("Contents", [])]

    def wait_keys(self, bucket: str, count: int, timeout: float = 15.0) -> list[str]:
        deadline = time.monotonic() + timeout
        while len(keys := self.keys(bucket)) < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(keys)} of {count} objects in {timeout}s")
            time.sleep(0.1)
        return keys

    def get(self, bucket: str, key: str) -> dict[str, Any]:
        """The object's GetObject answer, its body read as bytes under ``Body``."""
        answer = self.client("s3").get_object(Bucket=bucket, Key=key)
        answer["Body"] = answer["Body"].read()
        return answer
