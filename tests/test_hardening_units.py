"""Regression tests of issue 17's defects, at the unit level: bad client input is
a 400 (never a 500 or an endpoint failure), upstream text is redacted in every
spelling, OPA's decision contract is checked whole, JWT times are numbers, the
fields OpenAI-compatible upstreams are sent, refusals past the spool bound leave
a gap entry, and the OPA sidecar dies with a SIGKILLed gateway."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from gateway.auth import JwtSettings, JwtVerifier
from gateway.cli import main
from gateway.errors import AuthenticationError, BadRequestError, PolicyUnavailableError
from gateway.fronts import ChatFront
from gateway.logs import RedactingFilter, redact_credentials
from gateway.metadata import resolve_metadata
from gateway.pipeline.stages import parse_json_object
from gateway.policy import parse_decision
from gateway.providers.credentials import redact_values
from gateway.providers.failures import AttemptFailed
from gateway.providers.openai_compatible import fields, translate
from gateway.providers.wire import encode_body
from gateway.settings import Settings
from gateway.sidecar import _with_parent_death_signal
from observability.audit_reader import request_records
from tests.audit_helpers import local_pipeline, objects, read_lines, record

KEY = "sk-proj-Abc/123+xyz"
ESCAPED = json.dumps(KEY)[1:-1].replace("/", "\\/")  # sk-proj-Abc\/123+xyz
UNICODE = "".join(f"\\u{ord(c):04x}" for c in KEY)


def redact(text: str) -> str:
    return redact_values(text, [KEY])


# -- bad client input: a 400 that says what is wrong ---------------------------


@pytest.mark.parametrize(
    ("raw", "code", "message"),
    [
        (b'{"messages": "\\ud800"}', "invalid_body", "(a lone surrogate)"),
        (b'{"a": {"b": "\\udfff x"}}', "invalid_body", "(a lone surrogate)"),
        (b"[" * 100_000 + b"]" * 100_000, "invalid_json", "nested too deeply"),
        (b'{"max_tokens": ' + b"9" * 5000 + b"}", "invalid_json", "integer string conversion"),
        (b'{"a": 1', "invalid_json", "Expecting"),
        (b"\xff\xfe", "invalid_json", "not valid JSON"),
        (b"[1, 2]", "invalid_body", "must be a JSON object"),
    ],
)
def test_bodies_json_cannot_carry_safely_are_400s(raw: bytes, code: str, message: str) -> None:
    with pytest.raises(BadRequestError) as caught:
        parse_json_object(raw)
    assert (caught.value.status, caught.value.code) == (400, code)
    assert message in caught.value.message


def test_a_lone_surrogate_the_adapter_cannot_encode_is_the_clients_400() -> None:
    with pytest.raises(AttemptFailed) as caught:
        encode_body({"messages": [{"role": "user", "content": "\ud800"}]})
    failure = caught.value.failure
    # Not retryable: the forwarder never counts it against the endpoint's breaker.
    assert (failure.status_for_client, failure.code, failure.retryable) == (
        400,
        "invalid_body",
        False,
    )


@pytest.mark.parametrize(
    ("declared", "message"),
    [
        ({"latency_budget_ms": int("9" * 400)}, "kamiwaza.latency_budget_ms is too large"),
        ({"cost_cap_per_1k": int("9" * 400)}, "kamiwaza.cost_cap_per_1k is too large"),
        ({"latency_budget_ms": "1e999"}, "must be a positive finite number"),
        ({"cost_cap_per_1k": True}, "must be a number, got true"),
    ],
)
def test_metadata_numbers_out_of_range_are_400s(declared: dict[str, Any], message: str) -> None:
    from gateway.auth import Identity

    identity = Identity("t", "u", (), "k", None, None, "api_key")
    with pytest.raises(BadRequestError) as caught:
        resolve_metadata(identity, {}, {"kamiwaza": declared}, Settings())
    assert (caught.value.status, caught.value.code) == (400, "bad_metadata")
    assert message in caught.value.message


def test_non_list_tool_calls_are_a_400_at_the_front() -> None:
    body = {"stream": True, "messages": [{"role": "assistant", "tool_calls": {"id": "x"}}]}
    with pytest.raises(BadRequestError, match=r"messages\[0\]\.tool_calls must be a list"):
        ChatFront().parse(body, {})


# -- upstream text reaching clients, records and logs is redacted --------------


@pytest.mark.parametrize("spelling", [KEY, ESCAPED, UNICODE])
def test_a_200_error_object_is_redacted_in_every_spelling(spelling: str) -> None:
    raw = ('{"error": {"message": "Incorrect API key provided: ' + spelling + '"}}').encode()
    with pytest.raises(AttemptFailed) as caught:
        translate.parse_completion(raw, redact=redact)
    failure = caught.value.failure
    assert failure.message == "Incorrect API key provided: ***"
    assert (failure.status_for_client, failure.retryable) == (502, True)


@pytest.mark.parametrize("spelling", [ESCAPED, UNICODE])
def test_a_non_string_error_message_is_parsed_then_redacted(spelling: str) -> None:
    raw = ('{"error": {"message": {"detail": "bad key ' + spelling + '"}}}').encode()
    failure = translate.classify_error(500, {}, raw, redact=redact)
    assert KEY not in failure.message and "\\u" not in failure.message
    assert failure.message == '{"error":{"message":{"detail":"bad key ***"}}}'
    with pytest.raises(AttemptFailed) as caught:
        translate.parse_completion(raw, redact=redact)
    assert caught.value.failure.message == '{"detail":"bad key ***"}'


def test_a_stream_error_event_is_redacted() -> None:
    translator = translate.OpenAIStreamTranslator.for_body({"messages": []}, redact)
    event = b'data: {"error": {"message": "key ' + UNICODE.encode() + b'", "code": "x"}}\n\n'
    with pytest.raises(AttemptFailed) as caught:
        translator.feed(event)
    assert caught.value.failure.message == "key ***"


def test_the_log_filter_keeps_an_escaped_token_whole(caplog: pytest.LogCaptureFixture) -> None:
    assert redact_credentials('auth "Bearer sk-abc\\/def\\u002fghi" end') == (
        'auth "Bearer <redacted>" end'
    )
    assert redact_credentials('Authorization: Bearer sk-1\\"x') == (
        'Authorization: Bearer <redacted>\\"x'
    )
    logger = logging.getLogger("test.hardening")
    # Its own level: a CLI test run before may have set the root's to error.
    logger.setLevel(logging.INFO)
    handler = logging.Handler()
    handler.addFilter(RedactingFilter())
    seen: list[str] = []
    handler.emit = lambda rec: seen.append(rec.getMessage())  # type: ignore[method-assign]
    logger.addHandler(handler)
    try:
        logger.warning("upstream said %s", '{"h": "x-api-key: ab\\/cd\\/ef"}')
    finally:
        logger.removeHandler(handler)
    assert seen == ['upstream said {"h": "x-api-key: <redacted>"}']


# -- OPA's decision contract, checked whole ---------------------------------------

LIVE = {
    "route_to": "gpu",
    "fallback": ["b"],
    "rule": {"index": 0, "name": "a", "source": "p.yaml:3"},
    "conditions": [{"field": "data_class", "op": "eq", "expected": "x", "actual": "x"}],
    "overridden_by": None,
    "deny": [],
    "revision": "sha256:live",
}


@pytest.mark.parametrize(
    ("changes", "decision_id", "why"),
    [
        ({"rule": "a"}, None, "rule must be an object or null"),
        ({"rule": ["a"]}, None, "rule must be an object or null"),
        ({"rule": {"index": 0, "source": "p"}}, None, "rule.name must be a non-empty string"),
        (
            {"rule": {"index": "0", "name": "a", "source": "p"}},
            None,
            "rule.index must be an integer",
        ),
        (
            {"rule": {"index": True, "name": "a", "source": "p"}},
            None,
            "rule.index must be an integer",
        ),
        ({"rule": {"index": 0, "name": "a", "source": 3}}, None, "rule.source must be a string"),
        ({}, 7, "decision_id must be a string"),
        ({"overridden_by": 1}, None, "overridden_by must be a string or null"),
        ({"revision": ["r"]}, None, "revision must be a string or null"),
        ({"conditions": {"a": 1}}, None, "conditions must be a list of objects"),
        ({"conditions": ["a"]}, None, "conditions must be a list of objects"),
        ({"route_to": 5}, None, "route_to must be a string or null"),
        ({"route_to": ""}, None, "route_to is empty"),
        ({"route_to": None}, None, "route_to is null without a deny reason"),
        ({"fallback": "b"}, None, "fallback must be a list of strings"),
        ({"deny": [1]}, None, "deny must be a list of strings"),
        ({"deny": "<drop>"}, None, "deny is missing"),
    ],
)
def test_a_decision_breaking_its_contract_is_policy_malformed(
    changes: dict[str, Any], decision_id: Any, why: str
) -> None:
    doc = {k: v for k, v in {**LIVE, **changes}.items() if v != "<drop>"}
    with pytest.raises(PolicyUnavailableError) as caught:
        parse_decision(doc, decision_id, 1.0)
    assert (caught.value.status, caught.value.code) == (503, "policy_malformed")
    assert caught.value.message == f"OPA returned a malformed decision ({why}); refusing to route"


def test_a_valid_decision_keeps_only_the_rules_three_fields() -> None:
    rule = {**LIVE["rule"], "extra": "x" * 10_000}  # type: ignore[dict-item]
    decision = parse_decision({**LIVE, "rule": rule}, "d-1", 1.0)
    assert decision.rule == {"index": 0, "name": "a", "source": "p.yaml:3"}
    assert (decision.route, decision.decision_id, decision.revision) == (
        ["gpu", "b"],
        "d-1",
        "sha256:live",
    )
    with pytest.raises(PolicyUnavailableError, match="the decision is not an object"):
        parse_decision(["x"], None, 0)


# -- JWT NumericDate claims --------------------------------------------------------


@pytest.mark.parametrize(
    "changes",
    [
        {"exp": str(int(time.time()) + 300)},
        {"nbf": str(int(time.time()) - 10)},
        {"iat": str(int(time.time()))},
        {"iat": True},
    ],
)
async def test_a_jwt_time_claim_that_is_not_a_number_is_refused(
    tmp_path: Path, changes: dict[str, Any]
) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = {**RSAAlgorithm.to_jwk(key.public_key(), as_dict=True), "kid": "k1"}
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": [jwk]}))
    verifier = JwtVerifier(JwtSettings(issuer="https://idp/", audience="gw", jwks_file=str(path)))
    now = int(time.time())
    claims = {"iss": "https://idp/", "aud": "gw", "sub": "a", "tenant": "t", "exp": now + 300}
    good = jwt.encode(claims, key, algorithm="RS256", headers={"kid": "k1"})
    assert (await verifier.verify(good)).tenant == "t"
    token = jwt.encode({**claims, **changes}, key, algorithm="RS256", headers={"kid": "k1"})
    with pytest.raises(AuthenticationError) as caught:
        await verifier.verify(token)
    name = next(iter(changes))
    assert caught.value.message in (
        f"token's {name!r} claim must be a number (NumericDate)",
        "malformed token",
    )
    await verifier.close()


# -- the fields OpenAI-compatible upstreams are sent ---------------------------


def test_chat_fields_cover_the_openai_sdks_parameters() -> None:
    from openai.types.chat import completion_create_params

    published = set(completion_create_params.CompletionCreateParamsBase.__annotations__)
    # A parameter the SDK sends that the gateway would drop is a bug here.
    assert published | {"stream"} <= fields.CHAT_FIELDS, published - fields.CHAT_FIELDS


def test_fields_outside_the_api_never_reach_the_upstream() -> None:
    body = {
        "model": "m",
        "messages": [{"role": "user", "content": "hi"}],
        "temperature": 0.2,
        "top_k": 5,
        "api_base": "http://evil",
        "base_url": "http://evil",
        "extra_headers": {"Authorization": "x"},
        "api_key": "sk-other",
        "whatever": 1,
    }
    sent = translate.build_request_body(
        body, model="served", stream=False, fields=fields.chat_fields("openai")
    )
    assert sent == {
        "model": "served",
        "messages": [{"role": "user", "content": "hi"}],
        "temperature": 0.2,
        "stream": False,
    }
    vllm = translate.build_request_body(
        body, model=None, stream=True, fields=fields.chat_fields("vllm")
    )
    assert vllm == {
        "model": "m",
        "messages": [{"role": "user", "content": "hi"}],
        "temperature": 0.2,
        "top_k": 5,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    assert fields.known_fields({"input": "x", "api_base": "y"}, fields.EMBEDDINGS_FIELDS) == {
        "input": "x"
    }


# -- refusals past the spool's bound are counted in a gap entry -------------------


async def test_refusals_without_room_for_their_record_leave_a_gap_entry(tmp_path: Path) -> None:
    pipeline, sink = local_pipeline(tmp_path, spool_max_bytes=65_536)
    await pipeline.start()
    sink.down = True
    n = 0
    while pipeline.spool.used < 65_536:  # admitted requests' records are always written
        pipeline.write(record(n))
        n += 1
    refusal = {"code": "audit_unavailable", "type": "server_error", "message": "spool full"}
    for i in range(3):
        pipeline.write(record(900 + i, status=503, error=refusal))
    assert pipeline.dropped == 3
    sink.down = False
    await pipeline.flush(5)
    pipeline.write(record(n))  # room again: the gap entry first, then this record
    await pipeline.close()
    lines = [json.loads(line) for path in objects(tmp_path / "audit") for line in read_lines(path)]
    gaps = [entry["body"] for entry in lines if entry["kind"] == "gap"]
    assert len(gaps) == 1
    assert (gaps[0]["dropped"], gaps[0]["refused"]) == (3, 3)
    ids = [r["request_id"] for r in request_records(str(tmp_path / "audit"))]
    assert ids == [f"req-{i:04d}" for i in range(n + 1)]
    result = CliRunner().invoke(main, ["audit", "verify", str(tmp_path / "audit")])
    assert result.exit_code == 0, result.output
    assert "3 record(s) dropped by stream" in result.output


async def test_a_gap_pending_at_shutdown_is_written_before_the_end(tmp_path: Path) -> None:
    pipeline, sink = local_pipeline(tmp_path, spool_max_bytes=65_536, spool_full="drop")
    await pipeline.start()
    sink.down = True
    n = 0
    while pipeline.dropped < 2:
        pipeline.write(record(n))
        n += 1
    sink.down = False
    await pipeline.close()
    lines = [json.loads(line) for path in objects(tmp_path / "audit") for line in read_lines(path)]
    assert next(entry["body"] for entry in lines if entry["kind"] == "gap")["dropped"] == 2


# -- the OPA sidecar dies with its gateway ----------------------------------------

_CHILD = """
import asyncio, sys, tempfile
from pathlib import Path
from gateway.sidecar import OpaSidecar

async def main():
    sidecar = OpaSidecar(sys.argv[1], [tempfile.mkdtemp()], Path(tempfile.mkdtemp()) / "opa.log")
    await sidecar.start()
    print(sidecar._proc.pid, flush=True)
    await asyncio.sleep(3600)

asyncio.run(main())
"""


@pytest.mark.integration
@pytest.mark.skipif(sys.platform != "linux", reason="parent-death signals are Linux's")
def test_the_opa_sidecar_dies_at_once_with_a_sigkilled_gateway(opa_bin: str) -> None:
    assert _with_parent_death_signal(["opa"])[1:3] == ["--pdeathsig", "KILL"]
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, opa_bin], stdout=subprocess.PIPE, cwd=Path.cwd()
    )
    try:
        assert child.stdout is not None
        opa_pid = int(child.stdout.readline())
        os.kill(opa_pid, 0)  # running
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=10)
        killed_at = time.monotonic()
        while _alive(opa_pid) and time.monotonic() - killed_at < 5:
            time.sleep(0.01)
        gone_after = time.monotonic() - killed_at
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        if child.stdout is not None:
            child.stdout.close()
    assert not _alive(opa_pid)
    assert gone_after < 1.0  # was ~10 s with SIGTERM (OPA's graceful shutdown)


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has exited
