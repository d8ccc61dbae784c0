package kamiwaza.guards_test

import rego.v1

_endpoints := {
	"gpu": {"type": "openai-compatible", "in_vpc": true},
	"saas": {"type": "anthropic", "in_vpc": false},
	"unspecified": {"type": "openai"},
	"stringly": {"type": "openai", "in_vpc": "true"},
}

test_pii_refuses_every_endpoint_outside_the_vpc if {
	r := data.kamiwaza.guards.refusals with data.kamiwaza.endpoints as _endpoints
		with input as {"data_class": "pii-restricted"}
	r == {
		"saas": {`guard pii-in-vpc: pii-restricted data may only reach an endpoint with in_vpc: true; "saas" is outside the VPC`},
		"unspecified": {`guard pii-in-vpc: pii-restricted data may only reach an endpoint with in_vpc: true; "unspecified" is outside the VPC`},
		"stringly": {`guard pii-in-vpc: pii-restricted data may only reach an endpoint with in_vpc: true; "stringly" is outside the VPC`},
	}
}

test_other_classes_refuse_nothing if {
	every class in ["public", "internal", "confidential", "PII-RESTRICTED"] {
		r := data.kamiwaza.guards.refusals with data.kamiwaza.endpoints as _endpoints
			with input as {"data_class": class}
		r == {}
	}
}

test_no_data_class_refuses_nothing if {
	r := data.kamiwaza.guards.refusals with data.kamiwaza.endpoints as _endpoints
		with input as {"tenant": "acme"}
	r == {}
}
