"""The policy translator: YAML routing policy compiled to ordered Rego.

Stages (each a pure function): :mod:`translator.source` (load with positions)
→ :mod:`translator.check` → :mod:`translator.ir` (lower) → :mod:`translator.emit`
(jinja2 templates). :mod:`translator.pipeline` wires them together.
"""
