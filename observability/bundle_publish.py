"""Uploading a policy bundle where the sidecars poll for it: `kamiwaza policy publish`.

The object is written in one PUT (S3 `put_object`, a GCS upload of the whole
file): a sidecar that polls meanwhile gets either the old bundle or the new
one, never a part. It carries the bundle's revision as user metadata
(`revision`) and its SHA-256, and the store checks the body on arrival
(S3 `ChecksumSHA256`, GCS CRC32C). Credentials are the SDKs' usual chains, the
same ones the audit sinks use (:mod:`observability.sinks.s3`, `.gcs`).
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import tarfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from observability.sinks import SinkError
from observability.sinks.gcs import gcs_client
from observability.sinks.s3 import s3_client

CONTENT_TYPE = "application/gzip"


class PublishError(Exception):
    """The bundle could not be published; the message says why."""


@dataclass(frozen=True, slots=True)
class Target:
    scheme: str  # s3 | gs
    bucket: str
    key: str

    def __str__(self) -> str:
        return f"{self.scheme}://{self.bucket}/{self.key}"


def parse_target(url: str) -> Target:
    """`s3://bucket/path/bundle.tar.gz` or `gs://bucket/path/bundle.tar.gz`."""
    parts = urlsplit(url)
    key = parts.path.lstrip("/")
    if parts.scheme not in ("s3", "gs") or not parts.netloc or not key or key.endswith("/"):
        raise PublishError(
            f"expected s3://bucket/path or gs://bucket/path naming the object, got {url!r}"
        )
    return Target(parts.scheme, parts.netloc, key)


def bundle_revision(data: bytes) -> str:
    """The revision in the bundle's `.manifest`; PublishError when it is not a bundle."""
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
            member = tar.extractfile(".manifest")
            if member is None:
                raise KeyError(".manifest")
            doc = json.loads(member.read())
    except (tarfile.TarError, KeyError, OSError, ValueError) as err:
        raise PublishError(f"not a policy bundle (kamiwaza policy bundle): {err}") from err
    revision = doc.get("revision") if isinstance(doc, dict) else None
    if not isinstance(revision, str) or not revision:
        raise PublishError("the bundle's .manifest has no revision")
    return revision


def publish(
    bundle: str | Path,
    url: str,
    *,
    endpoint_url: str | None = None,
    region: str | None = None,
    project: str | None = None,
) -> tuple[Target, str]:
    """Upload `bundle` to `url`; returns where it went and its revision."""
    target = parse_target(url)
    try:
        data = Path(bundle).read_bytes()
    except OSError as err:
        raise PublishError(f"{bundle}: {err.strerror}") from err
    revision = bundle_revision(data)
    digest = hashlib.sha256(data)
    metadata = {"revision": revision, "sha256": digest.hexdigest()}
    try:
        if target.scheme == "s3":
            s3_client(region, endpoint_url).put_object(
                Bucket=target.bucket,
                Key=target.key,
                Body=data,
                ContentType=CONTENT_TYPE,
                Metadata=metadata,
                ChecksumSHA256=base64.b64encode(digest.digest()).decode(),
            )
        else:
            blob = gcs_client(project, endpoint_url).bucket(target.bucket).blob(target.key)
            blob.metadata = metadata
            blob.upload_from_string(data, content_type=CONTENT_TYPE, checksum="crc32c")
    except SinkError as err:
        raise PublishError(str(err)) from err
    except Exception as err:  # the SDKs' own errors: botocore, google.api_core
        raise PublishError(f"uploading to {target} failed: {type(err).__name__}: {err}") from err
    return target, revision
