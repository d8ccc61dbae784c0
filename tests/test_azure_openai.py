"""Azure OpenAI adapter units, Entra ID tokens against the fake token endpoint, and
the refresh-before-expiry cache they use."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from gateway.providers import (
    AttemptFailed,
    AttemptFailure,
    ProviderConfigError,
    Secret,
    adapter_for,
)
from gateway.providers.azure_openai.adapter import AzureOpenAIAdapter, EntraTokenSource
from gateway.providers.openai_compatible.adapter import OpenAICompatibleAdapter
from gateway.providers.refresh import Refreshing
from tests.fake_azure import FakeAzure, validate_openai_request
from translator.errors import Position
from translator.registry import Endpoint

KEY = "azure-key-canary-0a1b2c3d4e"
SECRET = "entra-secret-canary-5e6f7a8b"
TENANT = "tenant-1"
CLIENT = "client-1"
BODY: dict[str, Any] = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}


def endpoint(**kwargs: Any) -> Endpoint:
    values: dict[str, Any] = {
        "name": "azure",
        "type": "azure-openai",
        "pos": Position("endpoints.yaml", 1, 1),
        "base_url": "https://res.openai.azure.com/",
        "auth": {"api_key_env": "AZURE_KEY"},
        "options": {"deployment": "gpt-4o prod", "api_version": "2024-10-21"},
    }
    values.update(kwargs)
    return Endpoint(**values)


@pytest.fixture
async def fake_azure() -> AsyncIterator[FakeAzure]:
    fake = await FakeAzure(
        api_key=KEY, tenant=TENANT, client_id=CLIENT, client_secret=SECRET
    ).start()
    yield fake
    await fake.close()


async def test_api_key_adapter_builds_deployment_url_and_header() -> None:
    adapter = adapter_for(endpoint(), environ={"AZURE_KEY": KEY})
    assert isinstance(adapter, AzureOpenAIAdapter)
    assert isinstance(adapter, OpenAICompatibleAdapter)  # reused, not copied
    request = await adapter.prepare(BODY, stream=True)
    assert request.url == (
        "https://res.openai.azure.com/openai/deployments/gpt-4o%20prod/chat/completions"
        "?api-version=2024-10-21"
    )
    assert request.headers == {"Content-Type": "application/json", "api-key": KEY}
    sent = json.loads(request.body)
    assert sent == {
        "model": "gpt-4o prod",
        "messages": BODY["messages"],
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    assert validate_openai_request(sent) is None
    assert KEY not in repr(request)
    assert adapter.redact(f"key {KEY}") == "key ***"


async def test_api_versions_before_stream_options_get_none() -> None:
    ep = endpoint(options={"deployment": "d", "api_version": "2024-06-01"})
    adapter = adapter_for(ep, environ={"AZURE_KEY": KEY})
    sent = json.loads((await adapter.prepare(BODY, stream=True)).body)
    assert sent == {"model": "d", "messages": BODY["messages"], "stream": True}


def test_credentials_are_required() -> None:
    with pytest.raises(ProviderConfigError, match=r"auth\.api_key_env"):
        adapter_for(endpoint(auth={}), environ={})
    with pytest.raises(ProviderConfigError, match=r"lacks auth\.entra_client_id"):
        adapter_for(
            endpoint(auth={"entra_tenant_id": "t", "entra_client_secret_env": "S"}),
            environ={"S": SECRET},
        )


def entra_endpoint(fake: FakeAzure, **auth: str) -> Endpoint:
    return endpoint(
        base_url=fake.url,
        options={"deployment": fake.deployment, "api_version": "2024-10-21"},
        auth={
            "entra_tenant_id": TENANT,
            "entra_client_id": CLIENT,
            "entra_client_secret_env": "ENTRA_SECRET",
            "entra_authority": fake.url,
            **auth,
        },
    )


async def test_entra_token_from_the_client_credentials_grant(fake_azure: FakeAzure) -> None:
    adapter = adapter_for(entra_endpoint(fake_azure), environ={"ENTRA_SECRET": SECRET})
    try:
        first = await adapter.prepare(BODY, stream=False)
        second = await adapter.prepare(BODY, stream=False)
    finally:
        await adapter.close()
    assert fake_azure.token_requests == 1
    (token,) = fake_azure.tokens
    assert (
        first.headers
        == second.headers
        == {
            "Content-Type": "application/json",
            "Authorization": f"Bearer {token}",
        }
    )


async def test_entra_refuses_a_wrong_secret_without_echoing_it(fake_azure: FakeAzure) -> None:
    fake_azure.client_secret = "the-real-secret"
    adapter = adapter_for(entra_endpoint(fake_azure), environ={"ENTRA_SECRET": SECRET})
    try:
        with pytest.raises(AttemptFailed) as info:
            await adapter.prepare(BODY, stream=False)
    finally:
        await adapter.close()
    assert info.value.failure == AttemptFailure(
        502,
        "upstream_auth_failed",
        "Entra ID refused the gateway's client credentials (invalid_client)",
        True,
    )
    assert fake_azure.rejected == ["invalid_client"]


async def test_entra_endpoint_unreachable() -> None:
    source = EntraTokenSource(
        endpoint="azure",
        authority="http://127.0.0.1:9",  # discard port: nothing listens
        tenant_id=TENANT,
        client_id=CLIENT,
        client_secret=Secret(SECRET),
    )
    try:
        with pytest.raises(Exception, match="could not be reached"):
            await source.token()
    finally:
        await source.close()


def test_azure_error_bodies() -> None:
    from gateway.providers.azure_openai.adapter import classify_azure_error

    failure = classify_azure_error(
        429,
        {"Retry-After": "7", "retry-after-ms": "6500"},
        b'{"error": {"code": "429", "message": "Rate limit is exceeded."}}',
        redact=str,
    )
    assert failure == AttemptFailure(
        429, "rate_limit_exceeded", "Rate limit is exceeded.", True, 6.5, 429
    )
    failure = classify_azure_error(
        503,
        {"Retry-After": "2"},
        b'{"error": {"code": "503", "message": "The service is busy."}}',
        redact=str,
    )
    assert failure == AttemptFailure(
        502, "upstream_unavailable", "The service is busy.", True, 2.0, 503
    )
    failure = classify_azure_error(
        401, {}, b'{"error": {"code": "401", "message": "Access denied"}}', redact=str
    )
    assert (failure.status_for_client, failure.code, failure.retryable) == (
        502,
        "upstream_auth_failed",
        True,
    )


# ---------------------------------------------------------------------------
# Refreshing


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_refreshing_fetches_once_refreshes_in_background_and_waits_when_stale() -> None:
    clock = Clock()
    fetched: list[int] = []
    release = asyncio.Event()
    release.set()

    async def fetch() -> tuple[str, float | None]:
        await release.wait()
        fetched.append(len(fetched) + 1)
        return f"token-{len(fetched)}", clock.now + 3600

    cache: Refreshing[str] = Refreshing(fetch, name="t", margin_s=300, clock=clock)
    # Concurrent first requests share one fetch.
    assert await asyncio.gather(cache.get(), cache.get()) == ["token-1", "token-1"]
    clock.now += 3000  # not yet in the refresh window (the last 300 s)
    assert await cache.get() == "token-1"
    assert fetched == [1]
    clock.now += 400  # in the window: the old token is served, a refresh starts
    release.clear()
    assert await cache.get() == "token-1"
    release.set()
    await cache.settle()
    assert fetched == [1, 2]
    assert await cache.get() == "token-2"
    clock.now += 3600  # past expiry: the request waits for a fresh one
    assert await cache.get() == "token-3"
    await cache.close()


async def test_refreshing_background_failure_keeps_the_value_and_backs_off() -> None:
    clock = Clock()
    calls = 0

    async def fetch() -> tuple[str, float | None]:
        nonlocal calls
        calls += 1
        if calls > 1:
            raise OSError("token endpoint down")
        return "token", clock.now + 100

    cache: Refreshing[str] = Refreshing(fetch, name="t", margin_s=300, clock=clock)
    assert await cache.get() == "token"
    clock.now += 60  # past half of the life: refresh window
    assert await cache.get() == "token"
    await cache.settle()
    assert calls == 2
    assert await cache.get() == "token"  # backing off: no new attempt yet
    await cache.settle()
    assert calls == 2
    clock.now += 40  # past the stale point: the request fetches itself, and fails
    with pytest.raises(OSError, match="token endpoint down"):
        await cache.get()
    await cache.close()
