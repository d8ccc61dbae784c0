# METADATA
# title: Kamiwaza endpoint health
# description: |
#   Judges each endpoint of a route from the health values the gateway observed
#   on its own traffic (input.health, docs/health.md) against the policy's
#   `health:` section (data.kamiwaza.policy.health), and arranges the route:
#   endpoints priced above the request's cost cap or slower than its latency
#   budget are skipped, lagging ones move behind the healthy ones. Everything it
#   reads is in the input or the policy, so a logged decision replays exactly.
package kamiwaza.health

import rego.v1

# METADATA
# title: Whether the policy has a health section
configured if is_object(data.kamiwaza.policy.health)

default _config := {}

_config := data.kamiwaza.policy.health

# The lagging conditions (translator/health.py), each as one comparison,
# `value * sign > bound` (strict) or `>= bound` (inclusive), with the samples
# it needs: {"strict": [{"field", "op", "value", "sign", "bound", "min_samples"}],
# "inclusive": [...]}.
default _conditions := {}

_conditions := _config.lagging

_strict := object.get(_conditions, "strict", [])

_inclusive := object.get(_conditions, "inclusive", [])

default _min_samples := 20

_min_samples := _config.min_samples

default _enforce_cost_cap := false

_enforce_cost_cap if {
	_config.cost_cap == "enforce"
	is_number(input.cost_cap_per_1k)
}

default _enforce_budget := false

_enforce_budget if {
	_config.latency_budget == "enforce"
	is_number(input.latency_budget_ms)
}

default _refuse := false

_refuse if _config.when_none_healthy == "refuse"

default _observed := {}

_observed := input.health.endpoints

default _probes := []

_probes := input.health.probe

# Only the route's endpoints are judged (and those a rule's endpoint_health
# key names): the work per decision does not grow with the registry.

# METADATA
# title: Observed values of one endpoint ({} when the gateway has none)
values(name) := object.get(_observed, name, {})

# METADATA
# title: Lagging conditions that hold on an endpoint's observed values
# description: Each as "field value op threshold"; [] when none holds.
observed_lagging(name) := _reasons(_observed[name]) if _observed[name]

else := []

_reasons(v) := array.concat(
	[sprintf("%s %v %s %v", [c.field, x, c.op, c.value]) |
		some c in _strict
		x := v[c.field]
		is_number(x)
		x * c.sign > c.bound
		n >= c.min_samples
	],
	[sprintf("%s %v %s %v", [c.field, x, c.op, c.value]) |
		some c in _inclusive
		x := v[c.field]
		is_number(x)
		x * c.sign >= c.bound
		n >= c.min_samples
	],
) if {
	n := object.get(v, "samples", 0)
}

# METADATA
# title: What the observed values alone say of an endpoint
# description: |
#   "lagging" (a condition holds), "healthy" (none holds over enough samples) or
#   "unknown" (too few samples). The gateway's hysteresis reads it back.
verdict(name) := _verdict(name, observed_lagging(name))

_verdict(name, reasons) := "lagging" if {
	count(reasons) > 0
} else := "healthy" if {
	object.get(_observed, [name, "samples"], 0) >= _min_samples
} else := "unknown"

# METADATA
# title: An endpoint's health for this request
# description: |
#   "lagging", "probing" (recovering, and this request is one of its probes) or
#   "healthy"; every endpoint of the registry has one.
status[name] := _status(name, _state(name), observed_lagging(name)) if {
	some name, _ in data.kamiwaza.endpoints
}

_state(name) := object.get(_observed, [name, "state"], "healthy")

_status(_, "lagging", _) := "lagging"

_status(name, "probing", reasons) := "probing" if {
	name in _probes
	count(reasons) == 0
} else := "lagging"

_status(_, "healthy", reasons) := "lagging" if {
	count(reasons) > 0
} else := "healthy"

_lag_reasons(name, reasons) := ["held lagging by this replica until its cooldown ends"] if {
	_state(name) == "lagging"
} else := ["recovering: judged again on a share of the traffic"] if {
	_state(name) == "probing"
	count(reasons) == 0
} else := reasons

# -- enforcement guards ---------------------------------------------------------

# METADATA
# title: An endpoint's price per 1k tokens, for the cost cap
# description: |
#   The dearer of its input and output prices (registry pricing). Read by
#   reference: object.get on data.kamiwaza.endpoints copies the whole registry.
price(name) := max([object.get(p, "input_per_1k", 0), object.get(p, "output_per_1k", 0)]) if {
	p := data.kamiwaza.endpoints[name].pricing
} else := 0

_over_cap(name) if {
	_enforce_cost_cap
	price(name) > input.cost_cap_per_1k
}

# A stream waits for its first token, a JSON answer for all of it.
_budget_field := "p95_ttft_ms" if input.request.stream == true

default _budget_field := "p95_latency_ms"

# The observed latency the budget is held against, where it counts.
_latency(name) := value if {
	v := _observed[name]
	value := v[_budget_field]
	is_number(value)
	object.get(v, "samples", 0) >= _min_samples
}

_over_budget(name) if {
	_enforce_budget
	_latency(name) > input.latency_budget_ms
}

# -- arranging a route ----------------------------------------------------------

# METADATA
# title: A route arranged by health
# description: |
#   `candidates` (the route after the guards) becomes {"route", "deny",
#   "report"}: cost-capped and over-budget endpoints skipped, lagging ones moved
#   behind the healthy ones (their order otherwise kept). With nothing in the
#   budget or nothing healthy left, the best endpoint is still tried unless
#   `when_none_healthy: refuse`; a cost cap no endpoint meets is a deny.
arrange(candidates) := {"route": route, "deny": deny, "report": report} if {
	capped := {n | some n in candidates; _over_cap(n)}
	priced := [n | some n in candidates; not n in capped]
	slow := {n | some n in priced; _over_budget(n)}
	in_budget := [n | some n in priced; not n in slow]
	kept := _budget_kept(priced, in_budget)
	reasons := {n: observed_lagging(n) | some n in candidates}
	lags := {n | some n in kept; _status(n, _state(n), reasons[n]) == "lagging"}
	healthy := [n | some n in kept; not n in lags]
	lagging := [n | some n in kept; n in lags]
	route := array.concat(healthy, lagging)
	deny := array.concat(
		array.concat(_cost_deny(candidates, priced), _budget_deny(priced, in_budget)),
		_lagging_deny(kept, healthy),
	)
	report := {
		"skipped": array.concat(
			[_skip(n, "cost_cap", sprintf("price %v per 1k > cost cap %v", [price(n), input.cost_cap_per_1k])) |
				some n in candidates
				n in capped
			],
			[_skip(n, "latency_budget", sprintf("%s %v > latency budget %v ms", [_budget_field, _latency(n), input.latency_budget_ms])) |
				some n in priced
				n in slow
				not n in kept
			],
		),
		"moved": [_moved(n, reasons[n]) | count(healthy) > 0; some n in lagging],
		"verdicts": {n: _verdict(n, reasons[n]) | some n in candidates},
	}
}

_skip(name, reason, detail) := {"endpoint": name, "reason": reason, "detail": detail, "values": values(name)}

_moved(name, reasons) := {"endpoint": name, "reason": "lagging", "detail": _lag_reasons(name, reasons), "values": values(name)}

# Every endpoint over the budget: the fastest one is still tried, unless refused.
_budget_kept(priced, in_budget) := in_budget if {
	count(in_budget) > 0
} else := [] if {
	_refuse
} else := [_fastest(priced)] if {
	count(priced) > 0
} else := []

_fastest(names) := [n |
	some n in names
	every other in names {
		_latency(n) <= _latency(other)
	}
][0]

_cost_deny(candidates, priced) := [sprintf(
	"cost cap: no endpoint of the route meets the cost cap of %v USD per 1k tokens (cheapest: %s at %v per 1k)",
	[input.cost_cap_per_1k, cheapest, price(cheapest)],
)] if {
	count(candidates) > 0
	count(priced) == 0
	cheapest := _cheapest(candidates)
} else := []

_cheapest(names) := [n |
	some n in names
	every other in names {
		price(n) <= price(other)
	}
][0]

_budget_deny(priced, in_budget) := [sprintf(
	"latency budget: no endpoint of the route meets the latency budget of %v ms (when_none_healthy: refuse)",
	[input.latency_budget_ms],
)] if {
	count(priced) > 0
	count(in_budget) == 0
	_refuse
} else := []

_lagging_deny(kept, healthy) := [sprintf(
	"health: every endpoint of the route lags (%s) and the policy says when_none_healthy: refuse",
	[concat(", ", kept)],
)] if {
	count(kept) > 0
	count(healthy) == 0
	_refuse
} else := []
