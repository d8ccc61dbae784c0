# METADATA
# title: Kamiwaza guards
# description: |
#   Hand-written rules that hold whatever the YAML policy or an override says.
#   A guard refuses an endpoint for the current request; the entry point turns a
#   refusal of the selected endpoint into a deny and drops refused fallbacks.
package kamiwaza.guards

import rego.v1

# METADATA
# title: Endpoints refused for this request
# description: |
#   Maps an endpoint name to the set of reasons the guards refuse it for the
#   current input. Endpoint facts come from the registry (data.kamiwaza.endpoints),
#   the data classes that must stay in the VPC from the gateway's configuration
#   (data.kamiwaza.classes.in_vpc_only).
# entrypoint: true
refusals[name] contains msg if {
	input.data_class in _in_vpc_only
	some name, endpoint in data.kamiwaza.endpoints
	not _in_vpc(endpoint)
	msg := sprintf("guard in-vpc: %s data may only reach an endpoint with in_vpc: true; %q is outside the VPC", [input.data_class, name])
}

# Without its configuration the in-VPC guard cannot tell which classes it
# protects: it refuses every endpoint outside the VPC rather than none.
refusals[name] contains msg if {
	not _configured
	some name, endpoint in data.kamiwaza.endpoints
	not _in_vpc(endpoint)
	msg := sprintf("guard in-vpc: data.kamiwaza.classes.in_vpc_only is not configured; %q is outside the VPC", [name])
}

refusals[name] contains msg if {
	some name, endpoint in data.kamiwaza.endpoints
	served := object.get(endpoint, "operations", _generation)
	not _operation in served
	msg := sprintf("guard operation: %q does not serve %s requests (it serves %s)", [name, _operation, concat(", ", sort(served))])
}

_generation := ["chat", "messages", "responses"]

default _operation := "chat"

_operation := input.operation

_configured if is_array(data.kamiwaza.classes.in_vpc_only)

default _in_vpc_only := []

_in_vpc_only := data.kamiwaza.classes.in_vpc_only

_in_vpc(endpoint) if endpoint.in_vpc == true
