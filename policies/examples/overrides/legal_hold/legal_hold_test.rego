package overrides.legal_hold_test

import rego.v1

test_legal_hold_forces_private_gpu if {
	r := data.overrides.legal_hold.route with input as {"labels": {"legal_hold": "true"}}
	r == {"route_to": "private-gpu", "fallback": []}
}

test_no_route_without_legal_hold if {
	not data.overrides.legal_hold.route with input as {"labels": {"legal_hold": "false"}}
	not data.overrides.legal_hold.route with input as {}
}

test_embargoed_requests_are_denied if {
	d := data.overrides.legal_hold.deny with input as {"labels": {"export_control": "embargoed"}}
	d == {"export-controlled request: data labelled export_control=embargoed may not be processed"}
}

test_other_export_labels_pass if {
	d := data.overrides.legal_hold.deny with input as {"labels": {"export_control": "ear99"}}
	d == set()
}

# The whole decision, as the gateway asks for it: the forced route wins over a
# compiled rule that matches (here the example policy's cost-capped rule).
test_a_legal_hold_forces_the_private_gpu_whatever_the_rules_say if {
	d := data.kamiwaza.route.decision with data.kamiwaza.endpoints as {
		"private-gpu": {"type": "openai-compatible", "in_vpc": true},
		"bedrock": {"type": "bedrock", "in_vpc": false},
	}
		with data.kamiwaza.policy as {"match": {
			"route_to": "bedrock",
			"fallback": [],
			"rule": {"index": 2, "name": "cost-capped", "source": "policies/routing.yaml:17"},
			"conditions": [],
		}}
		with input as {"tenant": "globex", "cost_cap_per_1k": 0.001, "labels": {"legal_hold": "true"}}
	d.route_to == "private-gpu"
	d.rule == null
	d.overridden_by == "legal_hold"
}
