"""Ingestion of OPA's decision log into the audit spool.

The OPA sidecar's `decision_logs` plugin POSTs batches of events (a gzip JSON
array) to a small HTTP server that the gateway runs on 127.0.0.1 only, on its
own port, apart from the public listener, behind a bearer token made up at each
start. Each event is spooled as an `opa_decision` entry keyed by its
`decision_id`, beside the gateway's request records, and shipped with them.

OPA's buffer is in memory and best-effort; the gateway's own record is the
durable one, and `kamiwaza audit reconcile` names every decision that has no
OPA event (and the reverse). An answer other than 2xx makes OPA keep the batch
and retry it: the server answers 503 when the spool refuses (spool full, refuse
mode), so that OPA holds on to its events meanwhile.
"""

from __future__ import annotations

import hmac
import json
import logging
import secrets
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiohttp import web

log = logging.getLogger(__name__)

# Bounds: what one POST may carry, compressed and decompressed.
MAX_BODY_BYTES = 8 << 20
MAX_INFLATED_BYTES = 64 << 20
SERVICE = "kamiwaza-audit"
# The query path of the gateway's routing decisions (gateway.policy); the events
# of other queries (the guards query behind `GET /v1/models`) decide no request,
# so no request record answers them.
ROUTE_DECISION_PATH = "kamiwaza/route/decision"


def is_route_decision(event: dict[str, Any]) -> bool:
    """Whether an OPA decision event is a routing decision (one request record
    each). An event without a path is taken as one."""
    path = event.get("path")
    return path is None or str(path).strip("/").replace(".", "/") == ROUTE_DECISION_PATH


# Accepts one event; False: refused (spool full in refuse mode), answer 503.
EventWriter = Callable[[dict[str, Any]], bool]


def _inflate(body: bytes) -> bytes:
    # aiohttp already undid a `Content-Encoding: gzip`; this is for a gzip body
    # sent without that header.
    if body[:2] != b"\x1f\x8b":
        return body
    inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    out = inflater.decompress(body, MAX_INFLATED_BYTES)
    if inflater.unconsumed_tail:
        raise ValueError("decompressed decision log batch is too large")
    return out


class DecisionLogIngest:
    """The loopback-only receiver of OPA's decision log."""

    def __init__(
        self, write: EventWriter, *, port: int = 0, token_file: Path | None = None
    ) -> None:
        self._write = write
        self.port = port
        self.token = secrets.token_urlsafe(32)
        # Where an OPA that runs apart (the Helm chart's sidecar container) reads
        # the token: OPA reads its `token_path` again for every upload.
        self.token_file = token_file
        self._runner: web.AppRunner | None = None
        self.received = 0
        self.rejected_batches = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/opa"

    async def start(self) -> None:
        if self.token_file is not None:
            self.token_file.parent.mkdir(parents=True, exist_ok=True)
            partial = self.token_file.with_name(self.token_file.name + ".partial")
            partial.touch(mode=0o600)
            partial.write_text(self.token)
            partial.replace(self.token_file)
        app = web.Application(client_max_size=MAX_BODY_BYTES)
        app.router.add_post("/opa/logs", self._logs)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port)
        await site.start()
        self.port = int(self._runner.addresses[0][1])
        log.info("OPA decision log ingestion on %s (loopback only)", self.url)

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _logs(self, request: web.Request) -> web.Response:
        expected = f"Bearer {self.token}"
        if not hmac.compare_digest(request.headers.get("Authorization", ""), expected):
            return web.json_response({"error": "unauthorized"}, status=401)
        try:
            raw = _inflate(await request.read())
            events = json.loads(raw)
        except (ValueError, zlib.error) as err:
            return web.json_response({"error": f"bad decision log batch: {err}"}, status=400)
        if not isinstance(events, list):
            return web.json_response({"error": "expected a JSON array of events"}, status=400)
        for event in events:
            if not isinstance(event, dict) or not isinstance(event.get("decision_id"), str):
                continue
            if not self._write(event):
                self.rejected_batches += 1
                # OPA keeps what it has not had a 2xx for and retries it; events
                # of this batch already spooled come again and are deduplicated.
                return web.json_response({"error": "audit spool full"}, status=503)
            self.received += 1
        return web.json_response({"accepted": len(events)})

    def opa_config(self) -> dict[str, Any]:
        """The OPA configuration that ships its decision log here."""
        return opa_decision_log_config(self.url, token=self.token)

    def write_opa_config(self, directory: str | Path) -> Path:
        """Write the OPA config (it holds the token: owner-only) and return its path."""
        path = Path(directory) / "opa-decision-logs.json"
        path.touch(mode=0o600)
        path.write_text(json.dumps(self.opa_config(), indent=2))
        return path


def opa_decision_log_config(
    url: str, *, token: str | None = None, token_path: str | None = None
) -> dict[str, Any]:
    """OPA's `services` and `decision_logs` shipping to the ingestion at `url`,
    with the bearer token itself or the file that holds it (the Helm chart's
    sidecar container reads the file the gateway writes: `token_file`)."""
    bearer = {"token": token} if token is not None else {"token_path": token_path}
    return {
        "services": {
            SERVICE: {
                "url": url,
                "credentials": {"bearer": bearer},
                "response_header_timeout_seconds": 10,
            }
        },
        "decision_logs": {
            "service": SERVICE,
            "resource": "/logs",
            # Shipped here, not also to the console: that copy would grow the
            # sidecar's log by ~1 KB a decision with nothing to rotate it.
            "console": False,
            "reporting": {
                # Each event is encoded and shipped as soon as a chunk fills;
                # the rest at least every second.
                "trigger": "immediate",
                "buffer_type": "event",
                "buffer_size_limit_events": 10000,
                "upload_size_limit_bytes": 65536,
                "min_delay_seconds": 1,
                "max_delay_seconds": 1,
            },
        },
    }
