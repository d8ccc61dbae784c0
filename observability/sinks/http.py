"""The HTTPS collector sink (the hosted option): one POST per batch.

    POST <url>
    Authorization: Bearer <token>
    Content-Type: application/x-ndjson
    Content-Encoding: gzip
    Idempotency-Key: <object key>
    X-Kamiwaza-Object-Key: <object key>
    X-Kamiwaza-Sha256: <hex digest of the body>
    X-Kamiwaza-Stream / -First-Seq / -Last-Seq / -Records

Any 2xx answer means stored; anything else (or no answer) is retried later with
the same body and key, so the collector should treat a key it already has as
success. Plain http is accepted for loopback addresses only; redirects are
never followed (the token would go with them).
"""

from __future__ import annotations

import ssl
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import urlsplit

from observability.hosts import is_loopback_host
from observability.sinks import Batch, SinkError


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


class HttpSink:
    name = "http"

    def __init__(
        self, url: str, token: str, *, timeout_s: float = 30.0, ca_file: str | None = None
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("https", "http") or not parts.hostname:
            raise SinkError(f"collector URL {url!r}: expected https://host/path")
        if parts.scheme == "http" and not is_loopback_host(parts.hostname):
            raise SinkError(f"collector URL {url!r}: plain http only to a loopback address")
        if not token:
            raise SinkError("collector: the bearer token is empty")
        self.url = url
        self._token = token
        self.timeout_s = timeout_s
        context = ssl.create_default_context(cafile=ca_file)
        self._opener = urllib.request.build_opener(
            _NoRedirects(), urllib.request.HTTPSHandler(context=context)
        )

    def describe(self) -> str:
        return f"collector {self.url}"

    def put(self, batch: Batch) -> None:
        meta = batch.metadata()
        request = urllib.request.Request(
            self.url,
            data=batch.gz,
            method="POST",
            headers={
                "Authorization": f"Bearer {self._token}",
                "Content-Type": "application/x-ndjson",
                "Content-Encoding": "gzip",
                "Idempotency-Key": batch.key,
                "X-Kamiwaza-Object-Key": batch.key,
                "X-Kamiwaza-Sha256": batch.sha256,
                "X-Kamiwaza-Stream": meta["stream"],
                "X-Kamiwaza-First-Seq": meta["first-seq"],
                "X-Kamiwaza-Last-Seq": meta["last-seq"],
                "X-Kamiwaza-Records": meta["records"],
            },
        )
        try:
            with self._opener.open(request, timeout=self.timeout_s) as answer:
                status = answer.status
        except urllib.error.HTTPError as err:
            raise SinkError(f"collector answered HTTP {err.code}") from None
        except (urllib.error.URLError, OSError) as err:
            reason = getattr(err, "reason", err)
            raise SinkError(f"collector unreachable: {reason}") from None
        if not 200 <= status < 300:
            raise SinkError(f"collector answered HTTP {status}")

    def close(self) -> None:
        pass
