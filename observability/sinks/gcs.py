"""The Google Cloud Storage sink (google-cloud-storage): one object per batch.

Credentials are Application Default Credentials (workload identity, a service
account key named by GOOGLE_APPLICATION_CREDENTIALS, gcloud's user login). With
`endpoint_url` (an emulator such as fake-gcs-server, or a private endpoint) and
no credentials available, requests are sent unauthenticated. Each object
carries custom metadata `sha256` (hex digest of the object), `stream`,
`first-seq`, `last-seq` and `records`; the client also sends a CRC32C, which
GCS checks on arrival.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from observability.sinks import Batch, SinkError, in_range, parse_key


def gcs_client(project: str | None, endpoint_url: str | None) -> Any:
    try:
        import google.auth
        from google.auth.credentials import AnonymousCredentials
        from google.auth.exceptions import DefaultCredentialsError
        from google.cloud import storage
    except ImportError as err:  # pragma: no cover - a dependency of the package
        raise SinkError("the GCS sink needs google-cloud-storage") from err
    credentials: Any
    try:
        credentials, default_project = google.auth.default()
        project = project or default_project
    except DefaultCredentialsError as err:
        if endpoint_url is None:
            raise SinkError(f"GCS: no credentials ({err})") from err
        credentials = AnonymousCredentials()  # type: ignore[no-untyped-call]
    options = {"api_endpoint": endpoint_url} if endpoint_url else None
    return storage.Client(
        project=project or "kamiwaza", credentials=credentials, client_options=options
    )


class GcsSink:
    name = "gcs"

    def __init__(
        self,
        bucket: str,
        *,
        project: str | None = None,
        endpoint_url: str | None = None,
        client: Any = None,
    ) -> None:
        self.bucket_name = bucket
        self.endpoint_url = endpoint_url
        self._client = client or gcs_client(project, endpoint_url)
        self._bucket = self._client.bucket(bucket)

    def describe(self) -> str:
        where = f" at {self.endpoint_url}" if self.endpoint_url else ""
        return f"gs://{self.bucket_name}{where}"

    def put(self, batch: Batch) -> None:
        blob = self._bucket.blob(batch.key)
        blob.metadata = batch.metadata()
        blob.upload_from_string(batch.gz, content_type="application/gzip", timeout=60)

    def close(self) -> None:
        self._client.close()


class GcsSource:
    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        project: str | None = None,
        endpoint_url: str | None = None,
        client: Any = None,
    ) -> None:
        self.bucket_name = bucket
        self.prefix = prefix.strip("/")
        self._client = client or gcs_client(project, endpoint_url)

    def describe(self) -> str:
        return f"gs://{self.bucket_name}/{self.prefix}"

    def keys(self, since: datetime | None = None, until: datetime | None = None) -> list[str]:
        prefix = f"{self.prefix}/" if self.prefix else ""
        found = [
            blob.name
            for blob in self._client.list_blobs(self.bucket_name, prefix=prefix)
            if parse_key(blob.name) is not None and in_range(blob.name, since, until)
        ]
        return sorted(found)

    def read(self, key: str) -> tuple[bytes, str | None]:
        blob = self._client.bucket(self.bucket_name).get_blob(key)
        if blob is None:
            raise FileNotFoundError(key)
        body: bytes = blob.download_as_bytes(checksum=None)
        return body, (blob.metadata or {}).get("sha256")
