"""`kamiwaza stats` output: the summary of :func:`observability.stats.compute`
as aligned text tables or as JSON."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any


def _table(headers: list[str], rows: list[list[str]], numeric_from: int = 1) -> list[str]:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]

    def line(cells: list[str]) -> str:
        return "  ".join(
            cell.rjust(widths[i]) if i >= numeric_from else cell.ljust(widths[i])
            for i, cell in enumerate(cells)
        ).rstrip()

    return [line(headers), *(line(r) for r in rows)]


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _usage_cells(row: Mapping[str, Any]) -> list[str]:
    return [
        str(row["requests"]),
        str(row["input_tokens"]),
        str(row["output_tokens"]),
        f"{row['cost_usd']:.6f}",
    ]


USAGE = ["requests", "input tokens", "output tokens", "cost (USD)"]


def render_table(summary: Mapping[str, Any]) -> str:
    window = summary["window"]
    head = f"{summary['requests']} requests from {window['since']} to {window['until']}"
    if not summary["requests"]:
        return head + "\n"
    out = [f"{head}, {summary['errors']} errors ({summary['error_rate']:.1%})"]
    out += ["", "Latency and errors by endpoint (ms)"]
    out += _table(
        ["endpoint", "requests", "errors", "error rate", "p50", "p95", "p99", "failovers"],
        [
            [
                r["endpoint"],
                str(r["requests"]),
                str(r["errors"]),
                f"{r['error_rate']:.1%}",
                _ms(r["p50_ms"]),
                _ms(r["p95_ms"]),
                _ms(r["p99_ms"]),
                str(r["failovers"]),
            ]
            for r in summary["endpoints"]
        ],
    )
    streamed = [r for r in summary["endpoints"] if r["ttft_p50_ms"] is not None]
    if streamed:
        out += ["", "Time to first token by endpoint (streams, ms)"]
        out += _table(
            ["endpoint", "p50", "p95", "p99"],
            [
                [r["endpoint"], _ms(r["ttft_p50_ms"]), _ms(r["ttft_p95_ms"]), _ms(r["ttft_p99_ms"])]
                for r in streamed
            ],
        )
    out += ["", "Usage by endpoint and model"]
    out += _table(
        ["endpoint", "model", *USAGE],
        [[r["endpoint"], r["model"], *_usage_cells(r)] for r in summary["models"]],
        numeric_from=2,
    )
    out += ["", "Cost and tokens by tenant"]
    out += _table(["tenant", *USAGE], [[r["tenant"], *_usage_cells(r)] for r in summary["tenants"]])
    out += ["", "Requests by rule"]
    out += _table(
        ["rule", "requests", "share", "input tokens", "output tokens", "cost (USD)"],
        [
            [r["rule"], str(r["requests"]), f"{r['share']:.1%}", *_usage_cells(r)[1:]]
            for r in summary["rules"]
        ],
    )
    out += ["", "Requests by operation"]
    out += _table(
        ["operation", *USAGE],
        [[r["operation"], *_usage_cells(r)] for r in summary["operations"]],
    )
    if summary["failovers"]:
        out += ["", "Failovers (the endpoint left, and why)"]
        out += _table(
            ["endpoint", "reason", "count"],
            [[r["endpoint"], r["reason"], str(r["count"])] for r in summary["failovers"]],
            numeric_from=2,
        )
    if summary.get("health"):
        out += ["", "Endpoint health (endpoints skipped or moved behind their fallbacks)"]
        out += _table(
            ["endpoint", "reason", "requests"],
            [[r["endpoint"], r["reason"], str(r["requests"])] for r in summary["health"]],
            numeric_from=2,
        )
    return "\n".join(out) + "\n"


def render_json(summary: Mapping[str, Any]) -> str:
    return json.dumps(summary, indent=2) + "\n"
