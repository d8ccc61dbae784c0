"""Property-based tests (hypothesis) of the request path up to the decision: for
any bytes, and any JSON a client could send, every front's parser and the
metadata reader either accept the request or refuse it with a 4xx GatewayError;
nothing else escapes (an escape is a 500 and a traceback in production).

The same holds for OPA's answers (`parse_decision`) and upstream error bodies
(`classify_error`), which are input the gateway does not control either.
Examples are bounded to keep CI fast; `KAMIWAZA_FUZZ_EXAMPLES` raises the bound
for a longer local run.
"""

from __future__ import annotations

import json
import os
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.auth import Identity
from gateway.errors import GatewayError
from gateway.fronts import Front, all_fronts
from gateway.metadata import opa_input, resolve_metadata
from gateway.pipeline.stages import parse_json_object
from gateway.policy import parse_decision
from gateway.providers.openai_compatible import translate
from gateway.settings import Settings
from observability.audit import AuditRecord, utc_now
from observability.pipeline import prompt_hmac

EXAMPLES = int(os.environ.get("KAMIWAZA_FUZZ_EXAMPLES", "100"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
SETTINGS = Settings(tenant_floors={"hospital": "pii-restricted"})
IDENTITIES = [
    Identity("acme", "u", ("analyst",), "k1", None, None, "api_key"),
    Identity("limited", None, (), "k2", ("public", "internal"), "public", "api_key"),
    Identity("hospital", "dr", (), None, None, None, "jwt"),
]
HEADERS = ("X-Data-Class", "X-Latency-Budget-Ms", "X-Cost-Cap-Per-1k", "X-Labels")
FIELDS = (
    "model",
    "messages",
    "stream",
    "tools",
    "tool_choice",
    "max_tokens",
    "temperature",
    "stream_options",
    "input",
    "kamiwaza",
    "n",
    "stop",
    "response_format",
)
NASTY_TEXT = st.sampled_from(
    ["", "\ud800", "x\udfff", "\x00", "9" * 5000, "1e999", "-0", "NaN", "💥", "a" * 10_000]
)
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=10**300, max_value=10**4000),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=50),
    NASTY_TEXT,
)
JSON = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=5),
        st.dictionaries(
            st.one_of(st.sampled_from(FIELDS), st.text(max_size=10)), inner, max_size=5
        ),
    ),
    max_leaves=30,
)
MESSAGE = st.fixed_dictionaries(
    {},
    optional={
        "role": st.one_of(st.sampled_from(["user", "system", "assistant", "tool", "x"]), JSON),
        "content": st.one_of(st.text(max_size=30), JSON),
        "tool_calls": JSON,
        "name": JSON,
    },
)
METADATA = st.fixed_dictionaries(
    {},
    optional={
        "data_class": st.one_of(st.sampled_from(["public", "internal", "pii-restricted"]), JSON),
        "latency_budget_ms": JSON,
        "cost_cap_per_1k": JSON,
        "labels": JSON,
    },
)
BODY = st.fixed_dictionaries(
    {},
    optional={
        "model": JSON,
        "messages": st.one_of(st.lists(MESSAGE, max_size=4), JSON),
        "input": JSON,
        "stream": JSON,
        "tools": JSON,
        "kamiwaza": st.one_of(METADATA, JSON),
        "stream_options": JSON,
    },
).flatmap(lambda base: st.dictionaries(st.text(max_size=10), JSON, max_size=3).map(base.__or__))
HEADER_VALUES = st.dictionaries(
    st.sampled_from(HEADERS),
    # aiohttp decodes header bytes that are not UTF-8 as lone surrogates.
    st.one_of(st.text(max_size=40), NASTY_TEXT, st.sampled_from(["a=\udcff", '{"a": "\udc80"}'])),
    max_size=4,
)


def read_request(front: Front, raw: bytes, headers: dict[str, str], identity: Identity) -> None:
    """What the pipeline does with a request before it asks OPA: any GatewayError
    it raises must be a 4xx; the record and the OPA input must serialize."""
    record = AuditRecord(request_id="req-x", timestamp=utc_now(), path="/p")
    try:
        body = parse_json_object(raw)
        request = front.parse(body, headers)
        record.requested_model = request.model
        record.prompt_hash = prompt_hmac(b"salt", request.prompt)
        meta = resolve_metadata(identity, headers, request.body, SETTINGS)
        doc = opa_input(
            identity,
            meta,
            operation=request.operation,
            model=request.model,
            request_id="req-x",
            path="/p",
            stream=request.stream,
        )
        json.dumps(doc, allow_nan=False)
        record.latency_budget_ms = meta.latency_budget_ms
        record.cost_cap_per_1k = meta.cost_cap_per_1k
        record.labels = dict(meta.labels)
    except GatewayError as err:
        refused = err
        record.status, record.error = err.status, err.body()["error"]
        json.dumps(err.body(), allow_nan=False)
    else:
        refused = None
    record.to_json().encode()
    if refused is not None:
        assert 400 <= refused.status < 500, (refused.status, refused.message)


@FUZZ
@given(front=st.sampled_from(all_fronts()), raw=st.binary(max_size=300))
def test_any_bytes_are_a_request_or_a_4xx(front: Front, raw: bytes) -> None:
    read_request(front, raw, {}, IDENTITIES[0])


@FUZZ
@given(
    front=st.sampled_from(all_fronts()),
    body=BODY,
    headers=HEADER_VALUES,
    identity=st.sampled_from(IDENTITIES),
)
def test_any_json_body_and_metadata_are_a_request_or_a_4xx(
    front: Front, body: dict[str, Any], headers: dict[str, str], identity: Identity
) -> None:
    # ensure_ascii: lone surrogates travel as \\ud800 escapes, as a client sends them.
    read_request(front, json.dumps(body).encode(), headers, identity)


@FUZZ
@given(front=st.sampled_from(all_fronts()), body=JSON)
def test_any_json_value_is_a_request_or_a_4xx(front: Front, body: Any) -> None:
    read_request(front, json.dumps(body).encode(), {}, IDENTITIES[1])


DECISION = st.fixed_dictionaries(
    {},
    optional={
        "route_to": st.one_of(st.text(max_size=5), JSON),
        "fallback": st.one_of(st.lists(st.text(max_size=5), max_size=2), JSON),
        "deny": st.one_of(st.lists(st.text(max_size=5), max_size=2), JSON),
        "rule": st.one_of(
            st.fixed_dictionaries({"index": JSON, "name": JSON, "source": JSON}), JSON
        ),
        "conditions": JSON,
        "overridden_by": JSON,
        "revision": JSON,
        "shadow": JSON,
    },
)


@FUZZ
@given(doc=st.one_of(DECISION, JSON), decision_id=JSON)
def test_any_opa_answer_is_a_decision_or_a_503(doc: Any, decision_id: Any) -> None:
    try:
        decision = parse_decision(doc, decision_id, 0.0)
    except GatewayError as err:
        refused: GatewayError | None = err
    else:
        refused = None
    if refused is not None:
        assert (refused.status, refused.code) == (503, "policy_malformed")
        return
    assert all(isinstance(name, str) and name for name in decision.route)
    json.dumps(
        [decision.rule, decision.conditions, decision.shadow_disagreement()], allow_nan=False
    )


@FUZZ
@given(status=st.integers(100, 599), body=st.one_of(st.binary(max_size=200), JSON))
def test_any_upstream_error_body_is_classified(status: int, body: Any) -> None:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    failure = translate.classify_server_error("tgi", status, {}, raw, redact=lambda t: t)
    assert isinstance(failure.message, str) and len(failure.message) <= 500
    assert 400 <= failure.status_for_client < 600
