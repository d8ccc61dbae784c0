"""The S3 sink (boto3): one object per batch, with its SHA-256 digest.

Works with AWS S3 (credentials from boto3's usual chain: environment, profile,
instance or task role), VPC endpoints and S3-compatible stores (`endpoint_url`).
Each object carries user metadata `sha256` (hex digest of the object),
`stream`, `first-seq`, `last-seq` and `records`; the upload also sends the
digest as `ChecksumSHA256`, so S3 itself rejects a body corrupted in transit.
With a KMS key, objects are encrypted with SSE-KMS under that key.
"""

from __future__ import annotations

import base64
from datetime import datetime, timedelta
from typing import Any

from observability.sinks import Batch, SinkError, in_range, parse_key


def s3_client(region: str | None, endpoint_url: str | None) -> Any:
    try:
        import boto3
        from botocore.config import Config
    except ImportError as err:  # pragma: no cover - a dependency of the package
        raise SinkError("the S3 sink needs boto3 (pip install boto3)") from err
    config = Config(
        retries={"max_attempts": 3, "mode": "standard"},
        connect_timeout=5,
        read_timeout=60,
    )
    return boto3.client("s3", region_name=region, endpoint_url=endpoint_url, config=config)


class S3Sink:
    name = "s3"

    def __init__(
        self,
        bucket: str,
        *,
        region: str | None = None,
        kms_key_id: str | None = None,
        endpoint_url: str | None = None,
        client: Any = None,
    ) -> None:
        self.bucket = bucket
        self.kms_key_id = kms_key_id
        self.endpoint_url = endpoint_url
        self._client = client or s3_client(region, endpoint_url)

    def describe(self) -> str:
        where = f" at {self.endpoint_url}" if self.endpoint_url else ""
        return f"s3://{self.bucket}{where}"

    def put(self, batch: Batch) -> None:
        extra: dict[str, str] = {}
        if self.kms_key_id:
            extra = {"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": self.kms_key_id}
        self._client.put_object(
            Bucket=self.bucket,
            Key=batch.key,
            Body=batch.gz,
            ContentType="application/gzip",
            Metadata=batch.metadata(),
            ChecksumSHA256=base64.b64encode(bytes.fromhex(batch.sha256)).decode(),
            **extra,
        )

    def close(self) -> None:
        self._client.close()


class S3Source:
    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        region: str | None = None,
        endpoint_url: str | None = None,
        client: Any = None,
    ) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self._client = client or s3_client(region, endpoint_url)

    def describe(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"

    def keys(self, since: datetime | None = None, until: datetime | None = None) -> list[str]:
        prefix = f"{self.prefix}/" if self.prefix else ""
        params: dict[str, Any] = {"Bucket": self.bucket, "Prefix": prefix}
        if since is not None:
            # Keys sort by date: skip the days before `since` without listing them.
            params["StartAfter"] = f"{prefix}dt={(since - timedelta(days=1)):%Y-%m-%d}"
        found = []
        for page in self._client.get_paginator("list_objects_v2").paginate(**params):
            for item in page.get("Contents", []):
                key = item["Key"]
                if parse_key(key) is not None and in_range(key, since, until):
                    found.append(key)
        return sorted(found)

    def read(self, key: str) -> tuple[bytes, str | None]:
        answer = self._client.get_object(Bucket=self.bucket, Key=key)
        body: bytes = answer["Body"].read()
        return body, answer.get("Metadata", {}).get("sha256")
