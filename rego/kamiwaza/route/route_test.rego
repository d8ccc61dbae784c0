package kamiwaza.route_test

import rego.v1

_endpoints := {
	"gpu": {"type": "openai-compatible", "in_vpc": true},
	"gpu-b": {"type": "openai-compatible", "in_vpc": true},
	"saas": {"type": "anthropic", "in_vpc": false},
	"saas-b": {"type": "openai", "in_vpc": false},
}

_match := {
	"route_to": "saas",
	"fallback": ["saas-b", "gpu"],
	"rule": {"index": 1, "name": "r1", "source": "p.yaml:7"},
	"conditions": [{"field": "tenant", "op": "==", "expected": "acme", "actual": "acme", "result": true}],
}

_default := {
	"route_to": "gpu",
	"fallback": ["gpu-b"],
	"rule": {"index": 2, "name": "default", "source": "p.yaml:12"},
	"conditions": [],
}

_no_overrides := {}

_classes := {"order": ["public", "internal", "confidential", "pii-restricted"], "in_vpc_only": ["pii-restricted"]}

# A whole decision: the given fields over those of a refused, unrouted request.
_decision(fields) := object.union(
	{
		"route_to": null,
		"fallback": [],
		"rule": null,
		"conditions": [],
		"overridden_by": null,
		"deny": [],
		"revision": null,
	},
	fields,
)

test_compiled_rule_wins_over_default if {
	d := data.kamiwaza.route.decision with data.kamiwaza.endpoints as _endpoints
		with data.kamiwaza.classes as _classes
		with data.kamiwaza.policy as {"match": _match, "default_route": _default, "revision": "sha256:x"}
		with data.overrides as _no_overrides
		with input as {"tenant": "acme"}
	d == {
		"route_to": "saas",
		"fallback": ["saas-b", "gpu"],
		"rule": _match.rule,
		"conditions": _match.conditions,
		"overridden_by": null,
		"deny": [],
		"revision": "sha256:x",
	}
}

test_default_when_no_rule_matches if {
	d := data.kamiwaza.route.decision with data.kamiwaza.endpoints as _endpoints
		with data.kamiwaza.classes as _classes
		with data.kamiwaza.policy as {"default_route": _default, "revision": "sha256:x"}
		with data.overrides as _no_overrides
		with input as {"tenant": "acme"}
	d == {
		"route_to": "gpu",
		"fallback": ["gpu-b"],
		"rule": _default.rule,
		"conditions": [],
		"overridden_by": null,
		"deny": [],
		"revision": "sha256:x",
	}
}

test_no_route_without_match_or_default if {
	d := data.kamiwaza.route.decision with data.kamiwaza.endpoints as _endpoints
		with data.kamiwaza.classes as _classes
		with data.kamiwaza.policy as {"revision": "sha256:x"}
		with data.overrides as _no_overrides
		with input as {"tenant": "acme"}
	d == {
		"route_to": null,
		"fallback": [],
		"rule": null,
		"conditions": [],
		"overridden_by": null,
		"deny": ["no route: no rule matched the request and the policy has no default"],
		"revision": "sha256:x",
	}
}

test_revision_is_null_without_compiled_policy if {
	d := data.kamiwaza.route.decision with data.kamiwaza.endpoints as _endpoints
		with data.kamiwaza.classes as _classes
		with data.kamiwaza.policy as {}
		with data.overrides as _no_overrides
		with input as {}
	d == _decision({"deny": ["no route: no rule matched the request and the policy has no default"]})
}

test_forced_route_beats_compiled_rules if {
	d := data.kamiwaza.route.decision with data.kamiwaza.endpoints as _endpoints
		with data.kamiwaza.classes as _classes
		with data.kamiwaza.policy as {"match": _match, "default_route": _default}
		with data.overrides as {"zz": {"route": {"route_to": "saas-b"}}, "aa": {"route": {"route_to": "gpu", "fallback": ["gpu-b"]}}}
		with input as {"tenant": "acme"}
	d == _decision({"route_to": "gpu", "fallback": ["gpu-b"], "overridden_by": "aa"})
}

test_override_deny_beats_forced_route if {
	d := data.kamiwaza.route.decision with data.kamiwaza.endpoints as _endpoints
		with data.kamiwaza.classes as _classes
		with data.kamiwaza.policy as {"match": _match}
		with data.overrides as {"a": {"route": {"route_to": "gpu"}}, "b": {"deny": {"suspended tenant"}}}
		with input as {"tenant": "acme"}
	d == _decision({"overridden_by": "a", "deny": ["override b: suspended tenant"]})
}

test_malformed_override_route_is_a_deny if {
	d := data.kamiwaza.route.decision with data.kamiwaza.endpoints as _endpoints
		with data.kamiwaza.classes as _classes
		with data.kamiwaza.policy as {"match": _match}
		with data.overrides as {"bad": {"route": {"route_to": 7}}}
		with input as {"tenant": "acme"}
	d == _decision({
		"rule": _match.rule,
		"conditions": _match.conditions,
		"deny": [`override bad returned a malformed route (want {"route_to": string, "fallback": [string]})`],
	})
}

test_route_to_unknown_endpoint_is_a_deny if {
	d := data.kamiwaza.route.decision with data.kamiwaza.endpoints as _endpoints
		with data.kamiwaza.classes as _classes
		with data.kamiwaza.policy as {"match": _match}
		with data.overrides as {"o": {"route": {"route_to": "nowhere"}}}
		with input as {"tenant": "acme"}
	d == _decision({"overridden_by": "o", "deny": [`endpoint "nowhere" is not in the endpoint registry`]})
}

test_guard_refusal_of_selected_route_is_a_deny if {
	d := data.kamiwaza.route.decision with data.kamiwaza.endpoints as _endpoints
		with data.kamiwaza.classes as _classes
		with data.kamiwaza.policy as {"match": _match}
		with data.overrides as _no_overrides
		with input as {"tenant": "acme", "data_class": "pii-restricted"}
	d == _decision({
		"rule": _match.rule,
		"conditions": _match.conditions,
		"deny": [`guard in-vpc: pii-restricted data may only reach an endpoint with in_vpc: true; "saas" is outside the VPC`],
	})
}

test_guards_bind_forced_routes if {
	d := data.kamiwaza.route.decision with data.kamiwaza.endpoints as _endpoints
		with data.kamiwaza.classes as _classes
		with data.kamiwaza.policy as {}
		with data.overrides as {"o": {"route": {"route_to": "saas"}}}
		with input as {"data_class": "pii-restricted"}
	d == _decision({
		"overridden_by": "o",
		"deny": [`guard in-vpc: pii-restricted data may only reach an endpoint with in_vpc: true; "saas" is outside the VPC`],
	})
}

test_guards_drop_refused_and_unknown_fallbacks if {
	d := data.kamiwaza.route.decision with data.kamiwaza.endpoints as _endpoints
		with data.kamiwaza.classes as _classes
		with data.kamiwaza.policy as {"match": object.union(_match, {"route_to": "gpu", "fallback": ["saas", "ghost", "gpu-b", "saas-b"]})}
		with data.overrides as _no_overrides
		with input as {"data_class": "pii-restricted"}
	d == _decision({"route_to": "gpu", "fallback": ["gpu-b"], "rule": _match.rule, "conditions": _match.conditions})
}

test_fallbacks_kept_when_no_guard_applies if {
	d := data.kamiwaza.route.decision with data.kamiwaza.endpoints as _endpoints
		with data.kamiwaza.classes as _classes
		with data.kamiwaza.policy as {"match": object.union(_match, {"route_to": "gpu", "fallback": ["saas", "ghost", "gpu-b"]})}
		with data.overrides as _no_overrides
		with input as {"data_class": "internal"}
	d == _decision({"route_to": "gpu", "fallback": ["saas", "gpu-b"], "rule": _match.rule, "conditions": _match.conditions})
}

test_empty_registry_denies_everything if {
	d := data.kamiwaza.route.decision with data.kamiwaza.endpoints as {}
		with data.kamiwaza.policy as {"match": _match}
		with data.overrides as _no_overrides
		with input as {}
	d == _decision({
		"rule": _match.rule,
		"conditions": _match.conditions,
		"deny": [`endpoint "saas" is not in the endpoint registry`],
	})
}
