"""The fake Anthropic and Vertex AI servers against the providers' official
clients: if the `anthropic` and `google-genai` SDKs talk to them without a
hitch, the fakes speak the real protocols (paths, headers, bodies, SSE)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import anthropic
import google.auth.transport.requests
import pytest
from google import genai
from google.genai import types as genai_types
from google.oauth2 import service_account

from tests.fake_anthropic import FakeAnthropic
from tests.fake_vertex import SCOPE, FakeVertex, make_service_account

KEY = "sk-ant-fake-conformance"


async def test_the_anthropic_sdk_against_the_fake() -> None:
    async with FakeAnthropic(api_key=KEY) as fake:
        client = anthropic.AsyncAnthropic(api_key=KEY, base_url=fake.url, max_retries=0)
        message = await client.messages.create(
            model="claude-x",
            max_tokens=50,
            system="Be brief.",
            messages=[{"role": "user", "content": "hello there"}],
        )
        assert [(b.type, getattr(b, "text", None)) for b in message.content] == [
            ("text", "You said: hello there")
        ]
        assert (message.stop_reason, message.usage.input_tokens, message.usage.output_tokens) == (
            "end_turn",
            4,
            4,
        )
        stream = await client.messages.create(
            model="claude-x",
            max_tokens=50,
            messages=[{"role": "user", "content": 'Use get_weather {"city": "Paris"}'}],
            tools=[{"name": "get_weather", "input_schema": {"type": "object"}}],
            stream=True,
        )
        events = [event.type async for event in stream]
        assert events == [
            "message_start",
            "content_block_start",
            "content_block_delta",
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop",
        ]
        await client.close()
        assert fake.invalid == []
        # The 2.x SDK sends the key as a bearer token and the current API version.
        assert fake.requests[0].headers["Authorization"] == f"Bearer {KEY}"
        assert fake.requests[0].headers["anthropic-version"] == "2026-10-21"


# google-genai's async client subclasses aiohttp's ClientSession, which aiohttp warns about.
@pytest.mark.filterwarnings("ignore:Inheritance class AiohttpClientSession:DeprecationWarning")
async def test_google_genai_and_anthropic_vertex_sdks_against_the_fake(tmp_path: Path) -> None:
    async with FakeVertex(project="p1", location="us-central1") as fake:
        account = make_service_account(tmp_path, fake.token_uri)
        fake.trust(account)
        credentials = service_account.Credentials.from_service_account_file(  # type: ignore[no-untyped-call]
            str(account.path), scopes=[SCOPE]
        )
        client = genai.Client(
            vertexai=True,
            project="p1",
            location="us-central1",
            credentials=credentials,
            http_options=genai_types.HttpOptions(base_url=fake.url, api_version="v1"),
        )
        reply = await client.aio.models.generate_content(
            model="gemini-x",
            contents="hello gemini",
            config=genai_types.GenerateContentConfig(system_instruction="be nice"),
        )
        assert reply.text == "You said: hello gemini"
        pieces = [
            chunk.text
            async for chunk in await client.aio.models.generate_content_stream(
                model="gemini-x", contents="hello stream"
            )
        ]
        assert pieces == ["You", " said:", " hello", " stream"]
        assert fake.requests[-1].query == "alt=sse"

        await asyncio.to_thread(credentials.refresh, google.auth.transport.requests.Request())
        vertex_claude = anthropic.AsyncAnthropicVertex(
            region="us-central1",
            project_id="p1",
            access_token=credentials.token,
            base_url=fake.url + "/v1",
            max_retries=0,
        )
        message = await vertex_claude.messages.create(
            model="claude-sonnet-4-5@20250929",
            max_tokens=50,
            messages=[{"role": "user", "content": "hello vertex claude"}],
        )
        assert message.content[0].text == "You said: hello vertex claude"  # type: ignore[union-attr]
        assert fake.requests[-1].path == (
            "/v1/projects/p1/locations/us-central1/publishers/anthropic/models/"
            "claude-sonnet-4-5@20250929:rawPredict"
        )
        stream = await vertex_claude.messages.create(
            model="claude-sonnet-4-5@20250929",
            max_tokens=50,
            messages=[{"role": "user", "content": "hi"}],
            stream=True,
        )
        assert [event.type async for event in stream][-1] == "message_stop"
        await vertex_claude.close()
        assert fake.invalid == []
        assert fake.rejected_assertions == []
