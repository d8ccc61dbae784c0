# METADATA
# title: Example override - legal hold and export control
# description: |
#   An example of what security teams write, shipped opt-in: the gateway loads
#   it only when an operator adds policies/examples/overrides to the
#   `overrides_dirs` setting. Contract:
#
#   - Package: `overrides.<name>`, in `<dir>/<name>/<name>.rego` where <dir> is
#     rego/overrides/ or a directory of `overrides_dirs`, with tests in
#     `overrides.<name>_test`.
#   - `deny`: optional, a set of strings. Any element refuses the request (403);
#     the gateway reports each as "override <name>: <message>".
#   - `route`: optional, an object `{"route_to": string, "fallback": [string]}`.
#     It replaces the compiled YAML rules for this request. When several
#     overrides force a route, the one whose package name sorts first wins.
#     Guards still apply: a forced route the guards refuse is a deny.
#   - Overrides read only `input` (the request document) and `data`; they must
#     not define anything else that the gateway depends on.
package overrides.legal_hold

import rego.v1

# METADATA
# title: Requests under legal hold stay on the private GPU
# entrypoint: true
route := {"route_to": "private-gpu", "fallback": []} if {
	input.labels.legal_hold == "true"
}

# METADATA
# title: Embargoed export-control requests are refused
# entrypoint: true
deny contains "export-controlled request: data labelled export_control=embargoed may not be processed" if {
	input.labels.export_control == "embargoed"
}
