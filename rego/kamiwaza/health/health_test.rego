package kamiwaza.health_test

import rego.v1

_endpoints := {
	"gpu": {"type": "openai-compatible", "in_vpc": true, "pricing": {"input_per_1k": 0.0002, "output_per_1k": 0.0002}},
	"saas": {"type": "anthropic", "in_vpc": false, "pricing": {"input_per_1k": 0.003, "output_per_1k": 0.015}},
	"cheap": {"type": "bedrock", "in_vpc": false, "pricing": {"input_per_1k": 0.00025, "output_per_1k": 0.00125}},
}

_classes := {"order": ["public", "internal", "confidential", "pii-restricted"], "in_vpc_only": ["pii-restricted"]}

_health := {
	"lagging": {"strict": [
		{"field": "p95_ttft_ms", "op": ">", "value": 1500, "sign": 1, "bound": 1500, "min_samples": 5},
		{"field": "error_rate", "op": ">", "value": 0.2, "sign": 1, "bound": 0.2, "min_samples": 5},
		{"field": "queue_depth", "op": ">", "value": 32, "sign": 1, "bound": 32, "min_samples": 0},
	]},
	"min_samples": 5,
	"latency_budget": "enforce",
	"cost_cap": "enforce",
	"when_none_healthy": "try_best",
}

_rule := {"index": 0, "name": "r", "source": "p.yaml:3"}

_policy(config) := {
	"match": {"route_to": "saas", "fallback": ["cheap", "gpu"], "rule": _rule, "conditions": []},
	"revision": "sha256:h",
	"health": config,
}

_fast := {"state": "healthy", "samples": 10, "p95_ttft_ms": 200, "p95_latency_ms": 250, "error_rate": 0}

_slow := {"state": "healthy", "samples": 10, "p95_ttft_ms": 2100, "p95_latency_ms": 2500, "error_rate": 0}

_decide(config, doc) := d if {
	d := data.kamiwaza.route.decision with data.kamiwaza.endpoints as _endpoints
		with data.kamiwaza.classes as _classes
		with data.kamiwaza.policy as _policy(config)
		with data.overrides as {}
		with input as doc
}

test_healthy_route_is_kept if {
	d := _decide(_health, {"tenant": "a", "health": {"endpoints": {"saas": _fast, "cheap": _fast}}})
	d.route_to == "saas"
	d.fallback == ["cheap", "gpu"]
	d.health == {
		"skipped": [],
		"moved": [],
		"verdicts": {"saas": "healthy", "cheap": "healthy", "gpu": "unknown"},
	}
	d.deny == []
}

test_lagging_primary_moves_behind_its_fallbacks if {
	d := _decide(_health, {"tenant": "a", "health": {"endpoints": {"saas": _slow, "cheap": _fast}}})
	d.route_to == "cheap"
	d.fallback == ["gpu", "saas"]
	d.health.moved == [{
		"endpoint": "saas",
		"reason": "lagging",
		"detail": ["p95_ttft_ms 2100 > 1500"],
		"values": _slow,
	}]
	d.health.verdicts.saas == "lagging"
}

test_too_few_samples_do_not_lag if {
	one_slow := object.union(_slow, {"samples": 1})
	d := _decide(_health, {"tenant": "a", "health": {"endpoints": {"saas": one_slow}}})
	d.route_to == "saas"
	d.health.verdicts.saas == "unknown"
}

test_gauges_count_without_samples if {
	queued := {"state": "healthy", "samples": 0, "queue_depth": 40}
	d := _decide(_health, {"tenant": "a", "health": {"endpoints": {"saas": queued}}})
	d.route_to == "cheap"
	d.health.moved[0].detail == ["queue_depth 40 > 32"]
}

test_every_condition_is_reported if {
	bad := object.union(_slow, {"error_rate": 0.5, "queue_depth": 33})
	d := _decide(_health, {"tenant": "a", "health": {"endpoints": {"saas": bad}}})
	d.health.moved[0].detail == ["p95_ttft_ms 2100 > 1500", "error_rate 0.5 > 0.2", "queue_depth 33 > 32"]
}

test_all_lagging_still_tries_the_best if {
	all_slow := {"saas": _slow, "cheap": _slow, "gpu": _slow}
	d := _decide(_health, {"tenant": "a", "health": {"endpoints": all_slow}})
	d.route_to == "saas"
	d.fallback == ["cheap", "gpu"]
	d.health.moved == []
	d.deny == []
}

test_all_lagging_refused_when_the_policy_says_so if {
	refuse := object.union(_health, {"when_none_healthy": "refuse"})
	all_slow := {"saas": _slow, "cheap": _slow, "gpu": _slow}
	d := _decide(refuse, {"tenant": "a", "health": {"endpoints": all_slow}})
	d.route_to == null
	d.deny == ["health: every endpoint of the route lags (saas, cheap, gpu) and the policy says when_none_healthy: refuse"]
}

test_held_lagging_state_moves_it if {
	held := {"state": "lagging", "samples": 0}
	d := _decide(_health, {"tenant": "a", "health": {"endpoints": {"saas": held}}})
	d.route_to == "cheap"
	d.health.moved[0].detail == ["held lagging by this replica until its cooldown ends"]
}

test_probing_endpoint_serves_its_probes_only if {
	probing := {"state": "probing", "samples": 0}
	probe := _decide(_health, {"tenant": "a", "health": {"endpoints": {"saas": probing}, "probe": ["saas"]}})
	probe.route_to == "saas"
	other := _decide(_health, {"tenant": "a", "health": {"endpoints": {"saas": probing}}})
	other.route_to == "cheap"
	other.health.moved[0].detail == ["recovering: judged again on a share of the traffic"]
}

test_probe_that_lags_again_is_not_tried_first if {
	probing := object.union(_slow, {"state": "probing"})
	d := _decide(_health, {"tenant": "a", "health": {"endpoints": {"saas": probing}, "probe": ["saas"]}})
	d.route_to == "cheap"
	d.health.moved[0].detail == ["p95_ttft_ms 2100 > 1500"]
	d.health.verdicts.saas == "lagging"
}

test_cost_cap_skips_dearer_endpoints if {
	d := _decide(_health, {"tenant": "a", "cost_cap_per_1k": 0.002})
	d.route_to == "cheap"
	d.fallback == ["gpu"]
	d.health.skipped == [{
		"endpoint": "saas",
		"reason": "cost_cap",
		"detail": "price 0.015 per 1k > cost cap 0.002",
		"values": {},
	}]
}

test_cost_cap_no_endpoint_meets_is_a_deny_naming_the_cheapest if {
	d := _decide(_health, {"tenant": "a", "cost_cap_per_1k": 0.0001})
	d.route_to == null
	d.deny == ["cost cap: no endpoint of the route meets the cost cap of 0.0001 USD per 1k tokens (cheapest: gpu at 0.0002 per 1k)"]
	count(d.health.skipped) == 3
}

test_cost_cap_off_is_not_enforced if {
	off := object.union(_health, {"cost_cap": "off"})
	d := _decide(off, {"tenant": "a", "cost_cap_per_1k": 0.0001})
	d.route_to == "saas"
}

test_latency_budget_skips_slow_endpoints if {
	d := _decide(_health, {"tenant": "a", "latency_budget_ms": 300, "health": {"endpoints": {"saas": _slow, "cheap": _fast}}})
	d.route_to == "cheap"
	d.fallback == ["gpu"]
	d.health.skipped[0].endpoint == "saas"
	d.health.skipped[0].detail == "p95_latency_ms 2500 > latency budget 300 ms"
}

test_latency_budget_of_a_stream_reads_ttft if {
	doc := {
		"tenant": "a", "latency_budget_ms": 2200, "request": {"stream": true},
		"health": {"endpoints": {"saas": _slow}},
	}
	budget_only := object.remove(_health, ["lagging"])
	streamed := _decide(budget_only, doc)
	streamed.route_to == "saas"
	json_doc := object.union(doc, {"request": {"stream": false}})
	answered := _decide(budget_only, json_doc)
	answered.route_to == "cheap"
}

test_latency_budget_none_meets_tries_the_fastest if {
	slower := object.union(_slow, {"p95_latency_ms": 3000})
	all_slow := {"saas": slower, "cheap": _slow, "gpu": slower}
	d := _decide(_health, {"tenant": "a", "latency_budget_ms": 300, "health": {"endpoints": all_slow}})
	d.route_to == "cheap"
	d.fallback == []
	[s.endpoint | some s in d.health.skipped] == ["saas", "gpu"]
}

test_latency_budget_none_meets_refused if {
	refuse := object.union(_health, {"when_none_healthy": "refuse"})
	all_slow := {"saas": _slow, "cheap": _slow, "gpu": _slow}
	d := _decide(refuse, {"tenant": "a", "latency_budget_ms": 300, "health": {"endpoints": all_slow}})
	d.route_to == null
	d.deny == ["latency budget: no endpoint of the route meets the latency budget of 300 ms (when_none_healthy: refuse)"]
}

test_without_health_section_nothing_changes if {
	d := data.kamiwaza.route.decision with data.kamiwaza.endpoints as _endpoints
		with data.kamiwaza.classes as _classes
		with data.kamiwaza.policy as object.remove(_policy(_health), ["health"])
		with data.overrides as {}
		with input as {"tenant": "a", "cost_cap_per_1k": 0.0001, "health": {"endpoints": {"saas": _slow}}}
	d.route_to == "saas"
	not d.health
}

test_forced_route_is_not_arranged if {
	d := data.kamiwaza.route.decision with data.kamiwaza.endpoints as _endpoints
		with data.kamiwaza.classes as _classes
		with data.kamiwaza.policy as _policy(_health)
		with data.overrides as {"hold": {"route": {"route_to": "saas", "fallback": []}}}
		with input as {"tenant": "a", "health": {"endpoints": {"saas": _slow}}}
	d.route_to == "saas"
	d.overridden_by == "hold"
	not d.health
}

test_comparisons if {
	c := {
		"strict": [
			{"field": "queue_depth", "op": ">", "value": 2, "sign": 1, "bound": 2, "min_samples": 0},
			{"field": "ratelimit_remaining_requests", "op": "<", "value": 10, "sign": -1, "bound": -10, "min_samples": 0},
		],
		"inclusive": [
			{"field": "in_flight", "op": ">=", "value": 8, "sign": 1, "bound": 8, "min_samples": 0},
			{"field": "kv_cache_usage", "op": "<=", "value": 0.1, "sign": -1, "bound": -0.1, "min_samples": 0},
			{"field": "timeout_rate", "op": ">=", "value": 1, "sign": 1, "bound": 1, "min_samples": 20},
			{"field": "p50_ttft_ms", "op": ">=", "value": 5, "sign": 1, "bound": 5, "min_samples": 20},
		],
	}
	v := {"samples": 20, "queue_depth": 3, "in_flight": 8, "ratelimit_remaining_requests": 3, "kv_cache_usage": 0.05, "timeout_rate": 1, "p50_ttft_ms": 6}
	reasons := data.kamiwaza.health.observed_lagging("x") with data.kamiwaza.policy.health as {"lagging": c}
		with input as {"health": {"endpoints": {"x": v}}}
	reasons == [
		"queue_depth 3 > 2", "ratelimit_remaining_requests 3 < 10", "in_flight 8 >= 8",
		"kv_cache_usage 0.05 <= 0.1", "timeout_rate 1 >= 1", "p50_ttft_ms 6 >= 5",
	]
	unread := data.kamiwaza.health.observed_lagging("x") with data.kamiwaza.policy.health as {"lagging": c}
		with input as {"health": {"endpoints": {"x": object.union(v, {"samples": 19, "queue_depth": "3"})}}}
	unread == ["ratelimit_remaining_requests 3 < 10", "in_flight 8 >= 8", "kv_cache_usage 0.05 <= 0.1"]
}

test_default_min_samples_is_twenty if {
	few := data.kamiwaza.health.verdict("x") with data.kamiwaza.policy.health as {}
		with input as {"health": {"endpoints": {"x": {"samples": 19, "error_rate": 1}}}}
	few == "unknown"
	enough := data.kamiwaza.health.verdict("x") with data.kamiwaza.policy.health as {}
		with input as {"health": {"endpoints": {"x": {"samples": 20, "error_rate": 1}}}}
	enough == "healthy"
	unobserved := data.kamiwaza.health.observed_lagging("y") with input as {}
	unobserved == []
}

test_status_covers_every_endpoint if {
	s := data.kamiwaza.health.status with data.kamiwaza.endpoints as _endpoints
		with data.kamiwaza.policy.health as _health
		with input as {"health": {"endpoints": {"saas": _slow}}}
	s == {"saas": "lagging", "cheap": "healthy", "gpu": "healthy"}
}
