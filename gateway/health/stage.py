"""Endpoint health as the composition root and the decide stage use it.

    health = build_health(settings, registry, forwarder)   # create_app; None: off
    attach(app, health, registry, interval_s)               # AppKeys, the scraper's context

    # decide: before asking OPA, and with its answer
    add_health_input(health, doc)
    note_decision(health, decision, record)

The monitor (:mod:`.monitor`) is fed by the forwarder's attempt hooks; the
decision's health report goes back to it (recovery) and into the audit record.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from gateway.forwarding import Forwarder
from gateway.health.monitor import HealthMonitor, HealthSettings
from gateway.health.scrape import MetricsScraper
from gateway.policy import Decision
from gateway.settings import Settings
from observability.audit import AuditRecord
from translator.registry import Registry

HEALTH = web.AppKey("health", HealthMonitor)
SCRAPER = web.AppKey("health_scraper", MetricsScraper)
FIELD = "health"  # input.health, the decision's and the audit record's `health`


def build_health(
    settings: Settings, registry: Registry, forwarder: Forwarder
) -> HealthMonitor | None:
    """The monitor wired to the forwarder's hooks, or None with `health: false`."""
    if not settings.health:
        return None
    names = forwarder.endpoint_names

    def breaker_state(name: str) -> str:
        return str(forwarder.breaker(name).state)

    monitor = HealthMonitor(
        names,
        HealthSettings(
            window_s=settings.health_window_s,
            cooldown_s=settings.health_cooldown_s,
            probe_share=settings.health_probe_share,
        ),
        breaker_state=breaker_state,
    )
    forwarder.starters.append(monitor.attempt_started)
    forwarder.observers.append(monitor.attempt_finished)
    forwarder.response_observers.append(monitor.response_headers)
    return monitor


def scrape_urls(registry: Registry, names: tuple[str, ...]) -> dict[str, str]:
    """Each usable endpoint's `metrics_url` (the registry's openai-compatible option)."""
    urls = {}
    for name in names:
        url = registry.endpoints[name].options.get("metrics_url")
        if isinstance(url, str):
            urls[name] = url
    return urls


def attach(app: web.Application, monitor: HealthMonitor | None, registry: Registry,
           interval_s: float) -> None:  # fmt: skip
    """Store the monitor and its scraper under their keys, the scraper's context last."""
    if monitor is None:
        return
    app[HEALTH] = monitor
    scraper = MetricsScraper(monitor, scrape_urls(registry, monitor.names), interval_s=interval_s)
    app[SCRAPER] = scraper
    app.cleanup_ctx.append(scraper.cleanup_ctx)


def add_health_input(monitor: HealthMonitor | None, doc: dict[str, Any]) -> None:
    """`input.health`, when the monitor knows anything (absent fields are left out)."""
    if monitor is None:
        return
    health = monitor.opa_input()
    if health is not None:
        doc[FIELD] = health


def note_decision(monitor: HealthMonitor | None, decision: Decision, record: AuditRecord) -> None:
    """The decision's health report: back to the monitor, and into the audit record
    when it skipped or moved anything."""
    report = decision.health
    if report is None:
        return
    if monitor is not None:
        monitor.note_verdicts(report)
    skipped, moved = report.get("skipped") or [], report.get("moved") or []
    if skipped or moved:
        record.health = {"skipped": skipped, "moved": moved}
