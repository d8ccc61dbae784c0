package kamiwaza.guards_test

import rego.v1

_endpoints := {
	"gpu": {"type": "openai-compatible", "in_vpc": true, "operations": ["chat", "messages", "responses"]},
	"saas": {"type": "anthropic", "in_vpc": false, "operations": ["chat", "messages", "responses"]},
	"unspecified": {"type": "openai", "operations": ["chat"]},
	"stringly": {"type": "openai", "in_vpc": "true", "operations": ["chat"]},
}

_classes := {"order": ["public", "internal", "confidential", "pii-restricted"], "in_vpc_only": ["pii-restricted"]}

_refusals(inp) := r if {
	r := data.kamiwaza.guards.refusals with data.kamiwaza.endpoints as _endpoints
		with data.kamiwaza.classes as _classes
		with input as inp
}

test_pii_refuses_every_endpoint_outside_the_vpc if {
	_refusals({"data_class": "pii-restricted", "operation": "chat"}) == {
		"saas": {`guard in-vpc: pii-restricted data may only reach an endpoint with in_vpc: true; "saas" is outside the VPC`},
		"unspecified": {`guard in-vpc: pii-restricted data may only reach an endpoint with in_vpc: true; "unspecified" is outside the VPC`},
		"stringly": {`guard in-vpc: pii-restricted data may only reach an endpoint with in_vpc: true; "stringly" is outside the VPC`},
	}
}

test_other_classes_refuse_nothing if {
	every class in ["public", "internal", "confidential", "PII-RESTRICTED"] {
		_refusals({"data_class": class, "operation": "chat"}) == {}
	}
}

test_no_data_class_refuses_nothing if {
	_refusals({"tenant": "acme"}) == {}
}

test_the_protected_classes_come_from_configuration if {
	r := data.kamiwaza.guards.refusals with data.kamiwaza.endpoints as _endpoints
		with data.kamiwaza.classes as {"order": ["open", "secret"], "in_vpc_only": ["secret"]}
		with input as {"data_class": "secret", "operation": "chat"}
	object.keys(r) == {"saas", "unspecified", "stringly"}
	r.saas == {`guard in-vpc: secret data may only reach an endpoint with in_vpc: true; "saas" is outside the VPC`}

	# The old top class name protects nothing once it is not configured.
	r2 := data.kamiwaza.guards.refusals with data.kamiwaza.endpoints as _endpoints
		with data.kamiwaza.classes as {"order": ["open", "secret"], "in_vpc_only": ["secret"]}
		with input as {"data_class": "pii-restricted", "operation": "chat"}
	r2 == {}
}

test_missing_configuration_refuses_everything_outside_the_vpc if {
	r := data.kamiwaza.guards.refusals with data.kamiwaza.endpoints as _endpoints
		with data.kamiwaza.classes as {}
		with input as {"data_class": "public", "operation": "chat"}
	r == {
		"saas": {`guard in-vpc: data.kamiwaza.classes.in_vpc_only is not configured; "saas" is outside the VPC`},
		"unspecified": {`guard in-vpc: data.kamiwaza.classes.in_vpc_only is not configured; "unspecified" is outside the VPC`},
		"stringly": {`guard in-vpc: data.kamiwaza.classes.in_vpc_only is not configured; "stringly" is outside the VPC`},
	}
}

test_operation_guard_refuses_endpoints_that_cannot_serve_it if {
	_refusals({"data_class": "internal", "operation": "embeddings"}) == {
		"gpu": {`guard operation: "gpu" does not serve embeddings requests (it serves chat, messages, responses)`},
		"saas": {`guard operation: "saas" does not serve embeddings requests (it serves chat, messages, responses)`},
		"unspecified": {`guard operation: "unspecified" does not serve embeddings requests (it serves chat)`},
		"stringly": {`guard operation: "stringly" does not serve embeddings requests (it serves chat)`},
	}
	_refusals({"data_class": "internal", "operation": "messages"}) == {
		"unspecified": {`guard operation: "unspecified" does not serve messages requests (it serves chat)`},
		"stringly": {`guard operation: "stringly" does not serve messages requests (it serves chat)`},
	}
}

test_operation_defaults_to_chat_and_generation_endpoints if {
	r := data.kamiwaza.guards.refusals with data.kamiwaza.endpoints as {"old": {"type": "openai", "in_vpc": true}}
		with data.kamiwaza.classes as _classes
		with input as {"data_class": "internal"}
	r == {}
	r2 := data.kamiwaza.guards.refusals with data.kamiwaza.endpoints as {"old": {"type": "openai", "in_vpc": true}}
		with data.kamiwaza.classes as _classes
		with input as {"data_class": "internal", "operation": "embeddings"}
	r2 == {"old": {`guard operation: "old" does not serve embeddings requests (it serves chat, messages, responses)`}}
}
