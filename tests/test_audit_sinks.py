"""The S3 and GCS sinks against real emulators on loopback: moto's S3 server
(SigV4-signed requests from boto3) and fake-gcs-server."""

from __future__ import annotations

import gzip
import hashlib
import json
import uuid
from pathlib import Path
from typing import Any

import boto3
import pytest
from click.testing import CliRunner

from gateway.cli import main
from observability.audit_reader import SourceOptions, open_source, request_records
from observability.sinks import parse_key
from observability.sinks.gcs import GcsSink, gcs_client
from observability.sinks.s3 import S3Sink, s3_client
from tests.audit_helpers import local_pipeline, record

pytestmark = pytest.mark.integration


async def _ship(tmp_path: Path, sink: Any, count: int) -> str:
    pipeline, _ = local_pipeline(tmp_path, prefix="audit/gw")
    pipeline.sink = sink
    await pipeline.start()
    for n in range(count):
        pipeline.write(record(n))
        if n == 2:
            await pipeline.flush()
    await pipeline.close()
    return pipeline.stream


def _check_objects(stream: str, objects: dict[str, tuple[bytes, dict[str, str]]]) -> None:
    assert len(objects) == 2  # two batches: records 0-2, then 3-4
    seqs = []
    for key, (body, meta) in sorted(objects.items()):
        parsed = parse_key(key)
        assert parsed is not None, key
        assert key.startswith("audit/gw/dt=")
        assert parsed[2] == stream
        seqs.append(parsed[3])
        assert meta["sha256"] == hashlib.sha256(body).hexdigest()
        entries = [json.loads(line) for line in gzip.decompress(body).splitlines()]
        assert entries[0]["seq"] == parsed[3] == int(meta["first-seq"])
        assert entries[-1]["seq"] == int(meta["last-seq"])
        assert meta["records"] == str(len(entries)) and meta["stream"] == stream
    assert seqs == [0, 3]


async def test_s3_sink_against_moto(tmp_path: Path, moto_s3: str, aws_env: dict[str, str]) -> None:
    client = s3_client("us-east-1", moto_s3)
    bucket = f"audit-{uuid.uuid4().hex[:8]}"
    client.create_bucket(Bucket=bucket)
    kms_key = boto3.client("kms", endpoint_url=moto_s3, region_name="us-east-1").create_key()[
        "KeyMetadata"
    ]["KeyId"]
    sink = S3Sink(bucket, region="us-east-1", kms_key_id=kms_key, endpoint_url=moto_s3)
    assert sink.describe() == f"s3://{bucket} at {moto_s3}"
    stream = await _ship(tmp_path, sink, 5)
    objects = {}
    for item in client.list_objects_v2(Bucket=bucket)["Contents"]:
        answer = client.get_object(Bucket=bucket, Key=item["Key"])
        assert answer["ServerSideEncryption"] == "aws:kms"
        assert answer["SSEKMSKeyId"].endswith(kms_key)
        assert answer["ContentType"] == "application/gzip"
        objects[item["Key"]] = (answer["Body"].read(), answer["Metadata"])
    _check_objects(stream, objects)
    source = open_source(f"s3://{bucket}/audit", SourceOptions(endpoint_url=moto_s3))
    assert [r["request_id"] for r in request_records(source)] == [f"req-{n:04d}" for n in range(5)]
    result = CliRunner().invoke(
        main, ["audit", "verify", f"s3://{bucket}/audit/gw", "--endpoint-url", moto_s3]
    )
    assert result.exit_code == 0, result.output
    assert "ok: 5 entries in 2 object(s)" in result.output
    # kamiwaza stats reads the bucket prefix directly.
    result = CliRunner().invoke(
        main,
        ["stats", f"s3://{bucket}/audit", "--endpoint-url", moto_s3, "--format", "json"],
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert {t["tenant"]: t["requests"] for t in summary["tenants"]} == {"acme": 2, "globex": 3}
    # An edited object in the bucket: its digest no longer matches.
    key = sorted(objects)[1]
    body, meta = objects[key]
    lines = gzip.decompress(body).replace(b'"status":200', b'"status":201', 1)
    client.put_object(Bucket=bucket, Key=key, Body=gzip.compress(lines), Metadata=meta)
    result = CliRunner().invoke(
        main, ["audit", "verify", f"s3://{bucket}/audit/gw", "--endpoint-url", moto_s3]
    )
    assert result.exit_code == 1
    assert f"first: {key}: content does not match its SHA-256 digest" in result.output


async def test_gcs_sink_against_fake_gcs_server(tmp_path: Path, fake_gcs: str) -> None:
    client = gcs_client("test-project", fake_gcs)
    bucket = f"audit-{uuid.uuid4().hex[:8]}"
    client.create_bucket(bucket)
    sink = GcsSink(bucket, project="test-project", endpoint_url=fake_gcs)
    stream = await _ship(tmp_path, sink, 5)
    objects = {}
    for blob in client.list_blobs(bucket):
        objects[blob.name] = (blob.download_as_bytes(), blob.metadata or {})
        assert blob.content_type == "application/gzip"
    _check_objects(stream, objects)
    result = CliRunner().invoke(
        main,
        ["audit", "query", f"gs://{bucket}/audit", "--endpoint-url", fake_gcs, "--format",
         "jsonl", "--tenant", "acme"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    ids = [json.loads(line)["request_id"] for line in result.stdout.splitlines()]
    assert ids == ["req-0001", "req-0003"]
    result = CliRunner().invoke(
        main, ["audit", "verify", f"gs://{bucket}/audit", "--endpoint-url", fake_gcs]
    )
    assert result.exit_code == 0, result.output
