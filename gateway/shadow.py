"""The shadow policy: a candidate compiled beside the live one at start-up.

With the `shadow_policy` setting, the candidate is checked against the live
registry and emitted as package `kamiwaza.shadow`; the entry point then decides
every request with it too, in the same OPA query (the decision's `shadow`
field), without affecting routing. The gateway records disagreements in the
audit record (`AuditRecord.shadow`) and counts them by live and shadow rule.
"""

from __future__ import annotations

from gateway.errors import ConfigError
from gateway.settings import Settings
from translator.errors import PolicyError
from translator.pipeline import check, default_registry_path


class ShadowPolicyError(ConfigError):
    """The shadow policy has errors; the message renders them."""


def compile_shadow(settings: Settings) -> dict[str, str]:
    """The shadow policy's module, by path under the compiled policy's directory."""
    from translator.emit import SHADOW_PACKAGE, emit_rules, shadow_file

    assert settings.shadow_policy is not None
    registry = settings.endpoints or default_registry_path(settings.policy)
    result = check(settings.shadow_policy, registry)
    if result.ir is None:
        err = PolicyError(result.diagnostics, result.render_diagnostics())
        raise ShadowPolicyError(f"the shadow policy has errors:\n{err.report}")
    return {shadow_file(SHADOW_PACKAGE): emit_rules(result.ir, SHADOW_PACKAGE)}
