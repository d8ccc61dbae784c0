# METADATA
# title: Kamiwaza routing entry point
# description: |
#   Combines security overrides, guards and the rules compiled from the YAML
#   routing policy into the one decision the gateway asks for.
#   Precedence: deny (overrides, guards) > route forced by an override >
#   compiled rules (first match) > the policy's default > "no route".
package kamiwaza.route

import rego.v1

import data.kamiwaza.health

# METADATA
# title: Routing decision
# description: |
#   The decision object of the contract in docs/design.md. `deny` is non-empty when
#   the request must be refused (the gateway answers 403); `route_to` is then null.
#   `fallback` lists only endpoints the guards accept for this request.
# entrypoint: true
decision := object.union(_decision, {"shadow": _shadow}) if {
	_shadow
} else := _decision

# The decision of the live policy (data.kamiwaza.policy); with a `health:`
# section it reports what endpoint health changed (kamiwaza.health).
_decision := object.union(_core, {"health": _arranged.report}) if {
	health.configured
	_arranged.report != null
} else := _core

_core := {
	"route_to": null,
	"fallback": [],
	"rule": _rule,
	"conditions": _conditions,
	"overridden_by": _overridden_by,
	"deny": sort(deny),
	"revision": _revision,
} if {
	count(deny) > 0
} else := {
	"route_to": _arranged.route[0],
	"fallback": array.slice(_arranged.route, 1, count(_arranged.route)),
	"rule": _rule,
	"conditions": _conditions,
	"overridden_by": _overridden_by,
	"deny": [],
	"revision": _revision,
}

# METADATA
# title: Reasons to refuse the request
# description: Every reason from overrides, guards, the registry and "no route".
deny contains sprintf("override %s: %s", [name, msg]) if {
	some name
	some msg in data.overrides[name].deny
}

deny contains msg if {
	some msg in data.kamiwaza.guards.refusals[_route.route_to]
}

deny contains sprintf("endpoint %q is not in the endpoint registry", [_route.route_to]) if {
	not _endpoints[_route.route_to]
}

deny contains sprintf("override %s returned a malformed route (want {\"route_to\": string, \"fallback\": [string]})", [name]) if {
	some name
	route := data.overrides[name].route
	not _well_formed(route)
}

deny contains msg if {
	some msg in _arranged.deny
}

deny contains "no route: no rule matched the request and the policy has no default" if {
	not _route
}

default _endpoints := {}

_endpoints := data.kamiwaza.endpoints

default _revision := null

_revision := data.kamiwaza.policy.revision

_well_formed(route) if {
	is_string(route.route_to)
	every f in object.get(route, "fallback", []) {
		is_string(f)
	}
}

# Overrides that force a route, ordered by package name so that the choice is
# deterministic when several apply.
_forced := [{"name": name, "route": route} |
	some name
	route := data.overrides[name].route
	_well_formed(route)
]

_route := {
	"route_to": f.route.route_to,
	"fallback": object.get(f.route, "fallback", []),
	"rule": null,
	"conditions": [],
	"overridden_by": f.name,
} if {
	f := _forced[0]
} else := object.union(data.kamiwaza.policy.match, {"overridden_by": null}) if {
	data.kamiwaza.policy.match
} else := object.union(data.kamiwaza.policy.default_route, {"overridden_by": null}) if {
	data.kamiwaza.policy.default_route
}

default _rule := null

_rule := _route.rule

default _conditions := []

_conditions := _route.conditions

default _overridden_by := null

_overridden_by := _route.overridden_by

# Guards bind fallbacks too: an endpoint the guards refuse, or one the registry
# does not know, is dropped rather than tried.
_fallback := [name |
	some name in _route.fallback
	_endpoints[name]
	not data.kamiwaza.guards.refusals[name]
]

# The route as health arranges it: compiled rules and the default only; a route
# an override forces is taken as it is.
_arranged := health.arrange(array.concat([_route.route_to], _fallback)) if {
	health.configured
	_overridden_by == null
} else := {"route": array.concat([_route.route_to], _fallback), "deny": [], "report": null}

# The same request decided by a candidate policy compiled under
# data.kamiwaza.shadow (the gateway's `shadow_policy` setting), with the same
# overrides, guards and registry: only the compiled rules and default differ.
# Reported beside the live decision, never used for routing.
_shadow := {
	"revision": d.revision,
	"route_to": d.route_to,
	"fallback": d.fallback,
	"rule": d.rule,
	"deny": d.deny,
} if {
	data.kamiwaza.shadow.revision
	d := _decision with data.kamiwaza.policy as data.kamiwaza.shadow
}
