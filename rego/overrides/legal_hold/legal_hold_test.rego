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
