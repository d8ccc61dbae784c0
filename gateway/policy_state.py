"""Which policy revision this replica enforces, and whether it has one yet.

:class:`PolicyState` is what `/readyz` and the `kamiwaza.gateway.policy.revision`
metric report. In files mode the revision is read from the sidecar at start-up
and after each hot reload (:mod:`gateway.policy_reload`). In bundle mode a
:class:`BundleWatcher` polls the sidecar's status API (`GET /v1/status`, or
`/health?bundles` and `data.system.bundles` when an external OPA has no status
plugin): readiness stays false until OPA has activated a bundle; a new revision
is logged as it becomes active; a download or activation failure is logged
with OPA's `file:row:col` errors, counted, and shown in `/readyz` while OPA
keeps enforcing the previous revision.

Every audit record names the revision that admitted it through the decision's
own `revision` (`data.kamiwaza.policy.revision`): `kamiwaza policy bundle`
writes the same hash into the manifest, and the watcher warns if an active
bundle's manifest and policy disagree. It also checks that the bundle's data
classes are the ones this gateway ranks requests by: a bundle built for other
classes would let the in-VPC guard protect the wrong names, so the replica
reports not ready instead (fail closed).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
from aiohttp import web

from gateway.policy_source import BUNDLE_NAME
from gateway.state import METRICS, POLICY, SETTINGS
from observability.metrics import PolicySnapshot

log = logging.getLogger("gateway.policy")

POLL_INTERVAL_S = 1.0  # loopback GETs; how soon a rollout shows in /readyz and the log
REQUEST_TIMEOUT_S = 2.0


class PolicyState:
    """The replica's policy: source, active revision, last failure (event loop only)."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.revision: str | None = None
        self.active = False
        self.activated_at: float | None = None
        self.failures = 0  # bundles refused, hot reloads refused
        self.error: str | None = None  # the last failure, cleared by a new revision
        self.mismatch: str | None = None  # why the active policy cannot be used (not ready)

    def activate(self, revision: str | None) -> None:
        if revision != self.revision or not self.active:
            if self.revision is not None and revision != self.revision:
                log.info("policy revision %s active (was %s)", revision, self.revision)
            else:
                log.info("policy revision %s active (%s)", revision, self.source)
            self.activated_at = time.time()
            self.error = None
        self.revision = revision
        self.active = True

    def refuse(self, error: str) -> None:
        """A new policy was refused; the running one (if any) stays in force."""
        self.failures += 1
        self.error = error
        kept = f"revision {self.revision} stays in force" if self.active else "no policy yet"
        log.error("policy refused (%s): %s", kept, error)

    @property
    def ready(self) -> bool:
        return self.active and self.mismatch is None

    def snapshot(self) -> PolicySnapshot:
        return PolicySnapshot(self.source, self.revision, self.active, self.failures)

    def describe(self) -> dict[str, Any]:
        """The `policy` object of `/readyz`."""
        doc: dict[str, Any] = {
            "source": self.source,
            "revision": self.revision,
            "active": self.active,
            "failures": self.failures,
        }
        if self.activated_at is not None:
            doc["activated_at"] = time.strftime(
                "%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.activated_at)
            )
        if self.error is not None:
            doc["last_error"] = self.error
        if self.mismatch is not None:
            doc["unusable"] = self.mismatch
        return doc


POLICY_STATE = web.AppKey("policy_state", PolicyState)


def format_opa_errors(status: dict[str, Any]) -> str:
    """A bundle status' failure as one message, each OPA error as `file:row:col: message`."""
    lines = [f"{status.get('code', 'bundle_error')}: {status.get('message', '')}".rstrip(": ")]
    for err in status.get("errors") or []:
        if not isinstance(err, dict):
            continue
        loc = err.get("location") or {}
        where = f"{loc.get('file', '?')}:{loc.get('row', 0)}:{loc.get('col', 0)}: " if loc else ""
        lines.append(f"{where}{err.get('message', err)}")
    return "\n".join(lines)


class BundleWatcher:
    """Polls the sidecar for the bundle's activation and failures."""

    def __init__(
        self,
        opa_url: str,
        state: PolicyState,
        *,
        classes: dict[str, Any],
        interval_s: float = POLL_INTERVAL_S,
    ) -> None:
        self.url = opa_url.rstrip("/")
        self.state = state
        self.classes = classes
        self.interval_s = interval_s
        self._last_failure: str | None = None
        self._checked: str | None = None  # the revision whose data was checked
        self._session: aiohttp.ClientSession | None = None

    async def run(self) -> None:
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
        )
        try:
            while True:
                try:
                    await self.poll()
                except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as err:
                    # The sidecar restarting, say; requests fail closed meanwhile.
                    log.debug("bundle status poll failed: %s", err)
                await asyncio.sleep(self.interval_s)
        finally:
            await self._session.close()

    async def _get(self, path: str) -> tuple[int, Any]:
        assert self._session is not None
        async with self._session.get(self.url + path) as resp:
            return resp.status, await resp.json(content_type=None)

    async def poll(self) -> None:
        status_code, doc = await self._get("/v1/status")
        if status_code == 200 and isinstance(doc, dict):
            bundle = ((doc.get("result") or {}).get("bundles") or {}).get(BUNDLE_NAME)
            if not isinstance(bundle, dict):
                return  # the plugin has not reported yet
            revision = bundle.get("active_revision") or None
            # Go's zero time until the first activation.
            activated = not str(bundle.get("last_successful_activation") or "0001").startswith(
                "0001"
            )
            failure = format_opa_errors(bundle) if bundle.get("code") else None
        else:  # an external OPA without the status plugin: no failure details
            health, _ = await self._get("/health?bundles")
            activated = health == 200
            _, manifest = await self._get(f"/v1/data/system/bundles/{BUNDLE_NAME}/manifest")
            revision = ((manifest or {}).get("result") or {}).get("revision")
            failure = None
        if failure is not None and failure != self._last_failure:
            self.state.refuse(failure)
        self._last_failure = failure
        if activated:
            if revision != self._checked:
                await self._check_data(revision)
                self._checked = revision
            self.state.activate(revision)

    async def _check_data(self, revision: str | None) -> None:
        _, classes = await self._get("/v1/data/kamiwaza/classes")
        _, policy = await self._get("/v1/data/kamiwaza/policy/revision")
        bundled = (classes or {}).get("result")
        if bundled != self.classes:
            self.state.mismatch = (
                f"bundle revision {revision} was built for data classes {bundled}, "
                f"this gateway ranks {self.classes} (kamiwaza policy bundle --data-classes)"
            )
            log.error("policy bundle unusable, not ready: %s", self.state.mismatch)
        else:
            self.state.mismatch = None
        rego_revision = (policy or {}).get("result")
        if rego_revision != revision:
            log.warning(
                "bundle manifest revision %s differs from the policy's own revision %s; "
                "audit records name the latter (build bundles with kamiwaza policy bundle)",
                revision,
                rego_revision,
            )


async def read_files_revision(opa_url: str) -> str | None:
    """The compiled policy's revision as the sidecar has it (files mode)."""
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)) as session,
        session.get(f"{opa_url.rstrip('/')}/v1/data/kamiwaza/policy/revision") as resp,
    ):
        doc = await resp.json(content_type=None)
    result = doc.get("result") if isinstance(doc, dict) else None
    return result if isinstance(result, str) else None


async def policy_state_ctx(app: web.Application) -> AsyncIterator[None]:
    """Runs the watcher (bundle mode) or reads the files' revision, once OPA is up."""
    state = app[POLICY_STATE]
    url = app[POLICY].url
    app[METRICS].watch_policy(state.snapshot)  # read by the exporter's thread
    task: asyncio.Task[None] | None = None
    if state.source == "bundle":
        watcher = BundleWatcher(url, state, classes=app[SETTINGS].classes_data())
        task = asyncio.create_task(watcher.run(), name="bundle-watcher")
    else:
        try:
            state.activate(await read_files_revision(url))
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as err:
            log.warning("could not read the policy revision from OPA: %s", err)
            state.activate(None)
    try:
        yield
    finally:
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
