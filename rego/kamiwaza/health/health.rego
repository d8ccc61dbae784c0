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

default _conditions := []

_conditions := _config.lagging

default _min_samples := 20

_min_samples := _config.min_samples

_enforced(what) if _config[what] == "enforce"

_refuse if _config.when_none_healthy == "refuse"

default _observed := {}

_observed := input.health.endpoints

default _probes := []

_probes := input.health.probe

# Values measured over the request sample (percentiles and rates) count only
# with enough requests in the window; gauges (queue depth, in flight, rate-limit
# headroom) count as soon as they are known.
_sampled := {
	"p50_ttft_ms", "p95_ttft_ms", "p50_latency_ms", "p95_latency_ms",
	"error_rate", "timeout_rate",
}

# METADATA
# title: Observed values of one endpoint ({} when the gateway has none)
values(name) := object.get(_observed, name, {})

_counts(field, _) if not field in _sampled

_counts(field, v) if {
	field in _sampled
	object.get(v, "samples", 0) >= _min_samples
}

_holds(">", a, b) if a > b

_holds(">=", a, b) if a >= b

_holds("<", a, b) if a < b

_holds("<=", a, b) if a <= b

_holds("==", a, b) if a == b

_holds("!=", a, b) if a != b

# METADATA
# title: Lagging conditions that hold on an endpoint's observed values
observed_lagging[name] contains sprintf("%s %v %s %v", [c.field, value, c.op, c.value]) if {
	some name, v in _observed
	some c in _conditions
	value := v[c.field]
	is_number(value)
	_counts(c.field, v)
	_holds(c.op, value, c.value)
}

# METADATA
# title: What the observed values alone say of an endpoint
# description: |
#   "lagging" (a condition holds), "healthy" (none holds over enough samples) or
#   "unknown" (too few samples). The gateway's hysteresis reads it back.
verdict(name) := "lagging" if {
	observed_lagging[name]
} else := "healthy" if {
	object.get(values(name), "samples", 0) >= _min_samples
} else := "unknown"

_state(name) := object.get(values(name), "state", "healthy")

# METADATA
# title: An endpoint's health for this request
# description: |
#   "lagging", "probing" (recovering, and this request is one of its probes) or
#   "healthy"; every endpoint of the registry has one.
status[name] := _status(name) if some name, _ in data.kamiwaza.endpoints

_status(name) := "lagging" if {
	_state(name) == "lagging"
} else := "probing" if {
	_state(name) == "probing"
	name in _probes
	not observed_lagging[name]
} else := "lagging" if {
	_state(name) == "probing"
} else := "lagging" if {
	observed_lagging[name]
} else := "healthy"

_lag_reasons(name) := ["held lagging by this replica until its cooldown ends"] if {
	_state(name) == "lagging"
} else := ["recovering: judged again on a share of the traffic"] if {
	_state(name) == "probing"
	not observed_lagging[name]
} else := sort(observed_lagging[name])

# -- enforcement guards ---------------------------------------------------------

# METADATA
# title: An endpoint's price per 1k tokens, for the cost cap
# description: The dearer of its input and output prices (registry pricing).
price(name) := max([
	object.get(data.kamiwaza.endpoints, [name, "pricing", "input_per_1k"], 0),
	object.get(data.kamiwaza.endpoints, [name, "pricing", "output_per_1k"], 0),
])

_over_cap(name) if {
	_enforced("cost_cap")
	is_number(input.cost_cap_per_1k)
	price(name) > input.cost_cap_per_1k
}

# A stream waits for its first token, a JSON answer for all of it.
_budget_field := "p95_ttft_ms" if input.request.stream == true

default _budget_field := "p95_latency_ms"

_observed_latency(name) := value if {
	v := values(name)
	value := v[_budget_field]
	is_number(value)
	_counts(_budget_field, v)
}

_over_budget(name) if {
	_enforced("latency_budget")
	is_number(input.latency_budget_ms)
	_observed_latency(name) > input.latency_budget_ms
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
	priced := [n | some n in candidates; not _over_cap(n)]
	in_budget := [n | some n in priced; not _over_budget(n)]
	kept := _budget_kept(priced, in_budget)
	healthy := [n | some n in kept; status[n] != "lagging"]
	lagging := [n | some n in kept; status[n] == "lagging"]
	route := array.concat(healthy, lagging)
	deny := array.concat(
		array.concat(_cost_deny(candidates, priced), _budget_deny(priced, in_budget)),
		_lagging_deny(kept, healthy),
	)
	report := {
		"skipped": array.concat(
			[_skip(n, "cost_cap", sprintf("price %v per 1k > cost cap %v", [price(n), input.cost_cap_per_1k])) |
				some n in candidates
				_over_cap(n)
			],
			[_skip(n, "latency_budget", sprintf("%s %v > latency budget %v ms", [_budget_field, _observed_latency(n), input.latency_budget_ms])) |
				some n in priced
				_over_budget(n)
				not n in kept
			],
		),
		"moved": [_moved(n) | some n in lagging; count(healthy) > 0],
		"verdicts": {n: verdict(n) | some n in candidates},
	}
}

_skip(name, reason, detail) := {"endpoint": name, "reason": reason, "detail": detail, "values": values(name)}

_moved(name) := {"endpoint": name, "reason": "lagging", "detail": _lag_reasons(name), "values": values(name)}

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
		_observed_latency(n) <= _observed_latency(other)
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
