"""Endpoint health from the gateway's own traffic, for the routing decision.

:mod:`.window` keeps one endpoint's rolling window in bounded memory,
:mod:`.monitor` the per-endpoint values and the recovery state machine,
:mod:`.scrape` the optional scrape of self-hosted servers' metrics, and
:mod:`.stage` the few calls the composition root and the decide stage make.
The judging itself is Rego (rego/kamiwaza/health), against the policy's
`health:` section; docs/health.md describes the whole.
"""

from gateway.health.monitor import HealthMonitor, HealthSettings
from gateway.health.scrape import MetricsScraper, parse_metrics
from gateway.health.window import RollingWindow

__all__ = ["HealthMonitor", "HealthSettings", "MetricsScraper", "RollingWindow", "parse_metrics"]
