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
#   current input. Endpoint facts come from the registry (data.kamiwaza.endpoints).
# entrypoint: true
refusals[name] contains msg if {
	input.data_class == "pii-restricted"
	some name, endpoint in data.kamiwaza.endpoints
	not _in_vpc(endpoint)
	msg := sprintf("guard pii-in-vpc: pii-restricted data may only reach an endpoint with in_vpc: true; %q is outside the VPC", [name])
}

_in_vpc(endpoint) if endpoint.in_vpc == true
