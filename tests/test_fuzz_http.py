"""HTTP-level fuzzing of a running gateway (on kamiwaza serve's guarded server):
the seed corpus of tests/fuzz_corpus/ and deterministic mutants of every seed,
raw requests on sockets and JSON bodies on the model paths.

Whatever arrives: no answer is a 500, every error is in the OpenAI JSON shape,
the errors aiohttp's parser answers echo nothing of the request, no connection
is held open, nothing in the log is a traceback, and every audit record is of a
request that was answered. A failing input is written to build/fuzz-crashers/
(see tests/fuzz_corpus/README.md): add it to the corpus with its fix.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import re
from pathlib import Path
from typing import Any

import pytest

from gateway.server import ServerLimits
from tests.gateway_harness import ROOT, Gateway, start_gateway

pytestmark = pytest.mark.integration

CORPUS = Path(__file__).resolve().parent / "fuzz_corpus"
CRASHERS = ROOT / "build" / "fuzz-crashers"
SEED = int(os.environ.get("KAMIWAZA_FUZZ_SEED", "17"))
MUTANTS = int(os.environ.get("KAMIWAZA_FUZZ_MUTANTS", "5"))
CANARY = b"CANARY-fz"
LIMITS = ServerLimits(header_timeout_s=0.5, keepalive_timeout_s=0.3, max_connections=64)
PATHS = ("/v1/chat/completions", "/v1/embeddings")

RAW_TOKENS = [
    b"\r\n",
    b"\n",
    b"\r\n\r\n",
    b"\x00",
    b":",
    b" ",
    b"\xff\xfe",
    b"\x80",
    b"Content-Length: 18446744073709551616\r\n",
    b"Content-Length: 3\r\n",
    b"Transfer-Encoding: chunked\r\n",
    b"Transfer-Encoding: gzip, chunked\r\n",
    b"0\r\n\r\n",
    b"-1",
    b"%00",
    b"A" * 9000,
    CANARY,
]
JSON_TOKENS = [
    b"9" * 5000,
    b"[" * 3000,
    b"\\ud800",
    b'"\\udfff"',
    b"NaN",
    b"-Infinity",
    b"1e999",
    b"null",
    b'"',
    b"{",
    b"}",
    b",",
    b"\xff",
    b"\x00",
]
JSON_VALUES: list[Any] = [
    None,
    True,
    0,
    -1,
    2**64,
    10**400,
    1e308,
    "",
    "\ud800",
    "a" * 70_000,
    [],
    {},
    [[[[[[]]]]]],
    {"kamiwaza": {"data_class": "top-secret"}},
    {"data_class": ["x"], "labels": {"a": 1}},
    {"role": 7, "content": {"type": "image_url"}},
    [{"type": "function", "function": None}],
    {"include_usage": "yes"},
]


def raw_seeds(key: str) -> list[tuple[str, bytes]]:
    return [
        (path.name, path.read_bytes().replace(b"{KEY}", key.encode()))
        for path in sorted((CORPUS / "raw").glob("*.http"))
    ]


def json_seeds() -> list[tuple[str, bytes]]:
    return [(path.name, path.read_bytes()) for path in sorted((CORPUS / "json").glob("*.json"))]


def mutate_bytes(data: bytes, rng: random.Random, tokens: list[bytes]) -> bytes:
    for _ in range(rng.randint(1, 3)):
        at = rng.randrange(len(data) + 1)
        op = rng.randrange(6)
        if op == 0 and data:  # flip a byte
            at = min(at, len(data) - 1)
            data = data[:at] + bytes([data[at] ^ (1 << rng.randrange(8))]) + data[at + 1 :]
        elif op == 1:  # insert a token
            data = data[:at] + rng.choice(tokens) + data[at:]
        elif op == 2:  # delete a slice
            data = data[:at] + data[at + rng.randint(1, 16) :]
        elif op == 3:  # duplicate a slice
            data = data[:at] + data[at : at + 40] + data[at:]
        elif op == 4:  # truncate
            data = data[:at]
        else:  # bare LF line ends
            data = data.replace(b"\r\n", b"\n", 1)
    return data


def mutate_json(data: bytes, rng: random.Random) -> bytes:
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError):
        doc = None
    if not isinstance(doc, dict) or rng.random() < 0.3:
        return mutate_bytes(data, rng, JSON_TOKENS)
    slots: list[tuple[Any, Any]] = []
    stack: list[Any] = [doc]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            slots += [(item, key) for key in item]
            stack += item.values()
        elif isinstance(item, list):
            slots += [(item, index) for index in range(len(item))]
            stack += item
    for _ in range(rng.randint(1, 2)):
        if slots and rng.random() < 0.8:
            container, key = rng.choice(slots)
            container[key] = rng.choice(JSON_VALUES)
        else:
            doc[rng.choice(["stream", "tools", "n", "api_base", "kamiwaza", "input"])] = rng.choice(
                JSON_VALUES
            )
    return json.dumps(doc).encode()


def post(path: str, key: str, body: bytes) -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {key}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    ).encode() + body


async def exchange(port: int, data: bytes) -> bytes:
    """Send `data`, read until the gateway closes (its keep-alive timeout is short)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        async with asyncio.timeout(8):  # a connection held past this is a failure
            return await reader.read()
    except (ConnectionResetError, BrokenPipeError):
        return b"<reset>"
    finally:
        writer.close()


# aiohttp answers in the request's HTTP version, 0.9 for a request line without one.
_STATUS_LINE = re.compile(rb"(?:^|\r\n)(HTTP/\d\.\d (\d{3}) [^\r\n]*)\r\n")


def problems(sent: bytes, reply: bytes) -> list[str]:
    """What is wrong with the gateway's `reply` to `sent` (nothing: [])."""
    if reply == b"<reset>":
        return []  # the gateway closed on bytes it had not read: allowed, nothing leaked
    if not reply:
        # Only a connection that sent nothing may be closed without an answer
        # (aiohttp's keep-alive timer ends it).
        return [] if not sent else ["no answer at all"]
    head, _, body = reply.partition(b"\r\n\r\n")
    match = _STATUS_LINE.match(head + b"\r\n")
    if match is None:
        return [f"not an HTTP answer: {reply[:80]!r}"]
    found = []
    statuses = [int(m.group(2)) for m in _STATUS_LINE.finditer(reply)]
    if 500 in statuses or 501 in statuses:
        found.append(f"server error in {statuses}")
    status = int(match.group(2))
    headers = {
        line.split(b":", 1)[0].strip().lower(): line.split(b":", 1)[1].strip()
        for line in head.split(b"\r\n")[1:]
        if b":" in line
    }
    if status >= 400 and b"chunked" not in headers.get(b"transfer-encoding", b""):
        length = int(headers.get(b"content-length", b"0"))
        if not headers.get(b"content-type", b"").startswith(b"application/json"):
            found.append(f"{status} is not JSON: {headers.get(b'content-type')!r}")
        else:
            try:
                error = json.loads(body[:length])["error"]
                assert isinstance(error["message"], str) and isinstance(error["type"], str)
                assert "code" in error
            except (ValueError, KeyError, TypeError, AssertionError):
                found.append(f"{status} is not an OpenAI error: {body[:200]!r}")
    if b"x-request-id" not in headers and CANARY in sent and CANARY in reply:
        found.append("a parser error echoed the request")
    return found


@pytest.fixture
async def gw(tmp_path: Path, fake_upstream: Any, opa_bin: str) -> Any:
    gateway = await start_gateway(
        tmp_path,
        fake_upstream,
        limits=LIMITS,
        settings_overrides={
            "audit_prompt_salt_env": "FUZZ_SALT",
            "max_body_bytes": 1 << 20,
            "body_timeout_s": 0.5,
        },
        environ={"FUZZ_SALT": "fuzz-salt"},
    )
    yield gateway
    await gateway.close()


async def test_the_corpus_and_its_mutants_never_break_the_gateway(
    gw: Gateway, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    rng = random.Random(SEED)
    key = gw.keys["acme"]
    cases: list[tuple[str, bytes]] = []
    for name, data in raw_seeds(key):
        cases.append((name, data))
        cases += [(f"{name}~{i}", mutate_bytes(data, rng, RAW_TOKENS)) for i in range(MUTANTS)]
    for name, body in json_seeds():
        for path in PATHS:
            cases.append((f"{name}@{path}", post(path, key, body)))
            cases += [
                (f"{name}@{path}~{i}", post(path, key, mutate_json(body, rng)))
                for i in range(MUTANTS)
            ]
    gate = asyncio.Semaphore(8)
    port = gw.server.make_url("/").port
    assert port is not None

    async def one(name: str, data: bytes) -> tuple[str, bytes, list[str]]:
        async with gate:
            try:
                reply = await exchange(port, data)
            except TimeoutError:
                return name, data, ["the connection was held open"]
            return name, data, problems(data, reply)

    results = await asyncio.gather(*(one(name, data) for name, data in cases))
    failures = [(name, data, found) for name, data, found in results if found]
    records = await gw.audit_records()
    if failures:
        CRASHERS.mkdir(parents=True, exist_ok=True)
        for name, data, found in failures:
            (CRASHERS / name.replace("/", "_")).write_bytes(data)
            (CRASHERS / (name.replace("/", "_") + ".why")).write_text("\n".join(found))
    assert failures == [], f"{len(failures)} crashers written to {CRASHERS}"
    tracebacks = [
        (r.name, r.getMessage(), repr(r.exc_info[1]) if r.exc_info else None)
        for r in caplog.records
        if r.exc_info or r.levelno >= 40
    ]
    assert tracebacks == []
    assert len(cases) > 300
    assert [(r["status"], r["error"]) for r in records if r["status"] in (500, 501)] == []
