# Tests of the shadow decision: a candidate policy under data.kamiwaza.shadow is
# decided beside the live one, with the same overrides and guards.
package kamiwaza.route_test

import rego.v1

_shadow_endpoints := {
	"gpu": {"type": "openai-compatible", "in_vpc": true},
	"gpu-b": {"type": "openai-compatible", "in_vpc": true},
	"saas": {"type": "anthropic", "in_vpc": false},
}

_live := {
	"match": {
		"route_to": "gpu",
		"fallback": ["gpu-b"],
		"rule": {"index": 0, "name": "live-rule", "source": "live.yaml:5"},
		"conditions": [{"field": "tenant", "op": "==", "expected": "acme", "actual": "acme", "result": true}],
	},
	"revision": "sha256:live",
}

_candidate := {
	"match": {
		"route_to": "saas",
		"fallback": ["gpu"],
		"rule": {"index": 0, "name": "candidate-rule", "source": "candidate.yaml:5"},
		"conditions": [],
	},
	"default_route": {
		"route_to": "gpu-b",
		"fallback": [],
		"rule": {"index": 1, "name": "default", "source": "candidate.yaml:9"},
		"conditions": [],
	},
	"revision": "sha256:candidate",
}

test_no_shadow_field_without_a_shadow_policy if {
	d := data.kamiwaza.route.decision with data.kamiwaza.endpoints as _shadow_endpoints
		with data.kamiwaza.classes as _shadow_classes
		with data.kamiwaza.policy as _live
		with data.overrides as {}
		with input as {"tenant": "acme"}
	not "shadow" in object.keys(d)
	d.route_to == "gpu"
}

test_shadow_decides_beside_the_live_policy if {
	d := data.kamiwaza.route.decision with data.kamiwaza.endpoints as _shadow_endpoints
		with data.kamiwaza.classes as _shadow_classes
		with data.kamiwaza.policy as _live
		with data.kamiwaza.shadow as _candidate
		with data.overrides as {}
		with input as {"tenant": "acme"}
	d.route_to == "gpu"
	d.rule.name == "live-rule"
	d.revision == "sha256:live"
	d.shadow == {
		"revision": "sha256:candidate",
		"route_to": "saas",
		"fallback": ["gpu"],
		"rule": _candidate.match.rule,
		"deny": [],
	}
}

test_shadow_takes_the_candidate_default_not_the_live_match if {
	d := data.kamiwaza.route.decision with data.kamiwaza.endpoints as _shadow_endpoints
		with data.kamiwaza.classes as _shadow_classes
		with data.kamiwaza.policy as _live
		with data.kamiwaza.shadow as object.remove(_candidate, ["match"])
		with data.overrides as {}
		with input as {"tenant": "acme"}
	d.shadow.route_to == "gpu-b"
	d.shadow.rule.name == "default"
}

test_guards_bind_the_shadow_too if {
	d := data.kamiwaza.route.decision with data.kamiwaza.endpoints as _shadow_endpoints
		with data.kamiwaza.classes as _shadow_classes
		with data.kamiwaza.policy as _live
		with data.kamiwaza.shadow as _candidate
		with data.overrides as {}
		with input as {"tenant": "acme", "data_class": "pii-restricted"}
	d.route_to == "gpu"
	d.deny == []
	d.shadow == {
		"revision": "sha256:candidate",
		"route_to": null,
		"fallback": [],
		"rule": _candidate.match.rule,
		"deny": [`guard in-vpc: pii-restricted data may only reach an endpoint with in_vpc: true; "saas" is outside the VPC`],
	}
}

test_overrides_apply_to_the_shadow if {
	d := data.kamiwaza.route.decision with data.kamiwaza.endpoints as _shadow_endpoints
		with data.kamiwaza.classes as _shadow_classes
		with data.kamiwaza.policy as _live
		with data.kamiwaza.shadow as _candidate
		with data.overrides as {"hold": {"route": {"route_to": "gpu-b"}}}
		with input as {"tenant": "acme"}
	d.overridden_by == "hold"
	d.shadow == {"revision": "sha256:candidate", "route_to": "gpu-b", "fallback": [], "rule": null, "deny": []}
}

test_a_shadow_without_a_route_is_a_shadow_deny_only if {
	d := data.kamiwaza.route.decision with data.kamiwaza.endpoints as _shadow_endpoints
		with data.kamiwaza.classes as _shadow_classes
		with data.kamiwaza.policy as _live
		with data.kamiwaza.shadow as {"revision": "sha256:empty"}
		with data.overrides as {}
		with input as {"tenant": "acme"}
	d.route_to == "gpu"
	d.deny == []
	d.shadow == {
		"revision": "sha256:empty",
		"route_to": null,
		"fallback": [],
		"rule": null,
		"deny": ["no route: no rule matched the request and the policy has no default"],
	}
}

_shadow_classes := {"order": ["public", "internal", "confidential", "pii-restricted"], "in_vpc_only": ["pii-restricted"]}
