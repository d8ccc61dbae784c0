"""Hot reload of the routing policy in files mode: SIGHUP or `policy_watch_s`.

The policy and the endpoint registry are read and checked again (in a thread:
the event loop keeps serving). A policy with errors is refused, each error
logged as `file:line:col`, and the running revision stays in force. A valid one
replaces the compiled module in the sidecar with one `PUT /v1/policies/<id>`:
OPA compiles the new module set and swaps it in one transaction, so every
decision is made by the old revision or the new one, never a mix, and no
request waits or fails meanwhile (OPA's `--watch` would reload from files,
which are written one by one). The same files are then written to the
sidecar's runtime directory, so that a restarted sidecar loads the new
revision too.

What OPA knows of the registry (its facts) and what the gateway uses from it
(URLs, credentials, timeouts, prices) must change together; the gateway's
upstream connections are built at start-up, so a reload whose registry differs
from the running one is refused with a message asking for a restart (a rolling
restart in Kubernetes, where bundles are the way to roll policies out).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
from aiohttp import web

from gateway.policy_state import POLICY_STATE, REQUEST_TIMEOUT_S, format_opa_errors
from gateway.settings import Settings
from gateway.state import POLICY, REGISTRY, SETTINGS
from translator.errors import PolicyError, Position
from translator.registry import Endpoint, Registry

log = logging.getLogger("gateway.policy")

POLICY_MODULE = "kamiwaza/policy/policy.rego"
TEST_MODULE = "kamiwaza/policy/policy_test.rego"
_NOWHERE = Position("", 0, 0)


def _connections(registry: Registry) -> dict[str, Endpoint]:
    """The registry as the gateway uses it, source positions aside."""
    return {name: replace(e, pos=_NOWHERE) for name, e in registry.endpoints.items()}


class PolicyReloader:
    """Recompiles and swaps the policy; reloads run one at a time, coalesced."""

    def __init__(self, app: web.Application) -> None:
        self.app = app
        self.settings: Settings = app[SETTINGS]
        self.state = app[POLICY_STATE]
        self.url = app[POLICY].url.rstrip("/")
        self._lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()
        self._queued = False
        self.reloads = 0  # swaps done

    def trigger(self, why: str) -> None:
        """Reload soon. While one reload runs, one more is queued (it reads the
        files again); further triggers meanwhile add nothing."""
        if self._queued:
            return
        self._queued = True
        task = asyncio.ensure_future(self._run(why))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, why: str) -> None:
        async with self._lock:
            self._queued = False
            await self._reload_reporting(why)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def reload(self, why: str) -> bool:
        """One reload now; True when a new revision was swapped in."""
        async with self._lock:
            return await self._reload_reporting(why)

    async def _reload_reporting(self, why: str) -> bool:
        try:
            return await self._reload(why)
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as err:
            self.state.refuse(f"policy reload ({why}): OPA: {type(err).__name__}: {err}")
            return False

    async def _reload(self, why: str) -> bool:
        from translator.pipeline import compile_policy  # jinja2: only when reloading

        settings = self.settings
        try:
            result, files = await asyncio.to_thread(
                compile_policy, settings.policy, settings.endpoints, classes=settings.classes_data()
            )
        except PolicyError as err:
            self.state.refuse(
                f"policy reload ({why}): the routing policy has errors:\n{err.report}"
            )
            return False
        assert result.ir is not None  # compile_policy raised otherwise
        revision = result.ir.revision
        if revision == self.state.revision:
            log.info("policy reload (%s): revision %s unchanged", why, revision)
            return False
        new, running = _connections(result.registry), _connections(self.app[REGISTRY])
        if new != running:
            names = sorted(n for n in set(new) | set(running) if new.get(n) != running.get(n))
            self.state.refuse(
                f"policy reload ({why}): the endpoint registry changed "
                f"({', '.join(names)}); restart the gateway to apply registry changes"
            )
            return False
        async with aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S * 5)
        ) as session:
            module_id = await self._module_id(session, POLICY_MODULE)
            if module_id is None:
                self.state.refuse(f"policy reload ({why}): OPA has no {POLICY_MODULE} to replace")
                return False
            error = await self._put(session, module_id, files[POLICY_MODULE])
            if error is not None:
                self.state.refuse(f"policy reload ({why}): OPA refused the policy:\n{error}")
                return False
            await self._sync_tests(session, module_id, files.get(TEST_MODULE))
        self._write_runtime_files(module_id, files)
        self.reloads += 1
        self.state.activate(revision)
        log.info("policy reload (%s): revision %s swapped in", why, revision)
        return True

    async def _module_id(self, session: aiohttp.ClientSession, suffix: str) -> str | None:
        async with session.get(f"{self.url}/v1/policies") as resp:
            doc = await resp.json(content_type=None)
        ids = [p.get("id", "") for p in (doc or {}).get("result") or []]
        found = [i for i in ids if i == suffix or i.endswith("/" + suffix)]
        return found[0] if len(found) == 1 else None

    async def _put(self, session: aiohttp.ClientSession, module_id: str, text: str) -> str | None:
        async with session.put(
            f"{self.url}/v1/policies/{quote(module_id, safe='')}",
            data=text.encode(),
            headers={"Content-Type": "text/plain"},
        ) as resp:
            if resp.status == 200:
                return None
            doc = await resp.json(content_type=None)
        return format_opa_errors(doc if isinstance(doc, dict) else {"message": str(doc)})

    async def _sync_tests(
        self, session: aiohttp.ClientSession, module_id: str, text: str | None
    ) -> None:
        """The compiled tests follow (they decide nothing: not part of the swap)."""
        test_id = module_id.removesuffix(POLICY_MODULE) + TEST_MODULE
        if text is not None:
            error = await self._put(session, test_id, text)
            if error is not None:
                log.warning("policy reload: the compiled tests were not loaded: %s", error)
        else:
            async with session.delete(f"{self.url}/v1/policies/{quote(test_id, safe='')}"):
                pass

    def _write_runtime_files(self, module_id: str, files: dict[str, str]) -> None:
        """Our own sidecar loads from a runtime directory: update it for restarts."""
        if self.settings.opa_url is not None:
            return
        runtime_dir = Path("/" + module_id.removesuffix(POLICY_MODULE))
        if not runtime_dir.is_dir():
            return
        from translator.pipeline import write_output

        write_output(files, str(runtime_dir))


def _fingerprint(paths: list[str]) -> tuple[Any, ...]:
    """What changes when a file is edited or a ConfigMap's symlink is swapped."""
    out: list[Any] = []
    for path in paths:
        try:
            st = os.stat(path)
            out.append((path, st.st_ino, st.st_size, st.st_mtime_ns))
        except OSError:
            out.append((path, None))
    return tuple(out)


async def _watch(reloader: PolicyReloader, interval_s: float) -> None:
    from translator.pipeline import default_registry_path

    settings = reloader.settings
    paths = [settings.policy, settings.endpoints or default_registry_path(settings.policy)]
    seen = _fingerprint(paths)
    while True:
        await asyncio.sleep(interval_s)
        now = await asyncio.to_thread(_fingerprint, paths)
        if now != seen:
            seen = now
            reloader.trigger("file change")


POLICY_RELOADER = web.AppKey("policy_reloader", PolicyReloader)


async def reloader_ctx(app: web.Application) -> AsyncIterator[None]:
    """Files mode: the reloader (SIGHUP uses it) and, with policy_watch_s, the watcher."""
    if app[SETTINGS].policy_source != "files":
        yield
        return
    reloader = PolicyReloader(app)
    app[POLICY_RELOADER] = reloader
    watcher: asyncio.Task[None] | None = None
    if app[SETTINGS].policy_watch_s > 0:
        watcher = asyncio.create_task(
            _watch(reloader, app[SETTINGS].policy_watch_s), name="policy-watch"
        )
    try:
        yield
    finally:
        if watcher is not None:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
        await reloader.close()
