"""Memory soak: `kamiwaza serve` under steady load for minutes, RSS sampled.

Sixteen concurrent clients (`--concurrency`) send chat completions back to
back, half of them streamed (`--stream-share`), for `--seconds` (default ten
minutes), all on loopback. The route's first endpoint is a flaky upstream that
fails a share of requests with 503 (`--fail-share`, bench/flaky_upstream.py),
so those fail over to the second endpoint (bench/fast_upstream.py). Audit
shipping is on: the spool ships to the local files sink every
`--batch-interval-s` and the OPA sidecar ships its decision log to the gateway.

Every `--sample-s` the RSS of the gateway process(es) and of the OPA
sidecar(s) is read from /proc. The report gives, for each, the first sample,
the last, the maximum, and the slope (least squares, MiB per minute) over the
whole run and over its second half (after warm-up: pools, caches and the
allocator's arenas fill in the first minutes). Memory is called flat when the
second half grows by less than 5% of its first value (and 2 MiB).

After the load the gateway is stopped with SIGTERM (its spool ships) and the
audit trail is checked: exactly one record per request answered (errors too).

    .venv/bin/python bench/soak.py [--seconds 600] [--workers 1] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.gateway_bench import child_pids, rss_kib, wait_ready  # noqa: E402
from gateway.auth import KeyStore  # noqa: E402
from observability.audit_reader import iter_entries, open_source  # noqa: E402
from observability.chain import ChainVerifier  # noqa: E402
from tests.processes import free_port  # noqa: E402

BIN = Path(sys.executable).parent
FLAT_SHARE = 0.05
FLAT_MIN_KIB = 2048

POLICY = """\
version: v1
rules:
  - default: {route_to: flaky, fallback: [steady]}
"""


def registry(flaky: int, steady: int) -> str:
    return "endpoints:\n" + "".join(
        f"  {name}:\n"
        "    type: openai-compatible\n"
        f"    base_url: http://127.0.0.1:{port}/v1\n"
        "    in_vpc: true\n"
        "    auth: {bearer_token_env: SOAK_TOKEN}\n"
        "    pricing: {input_per_1k: 0.0002, output_per_1k: 0.0002}\n"
        for name, port in (("flaky", flaky), ("steady", steady))
    )


def slope_mib_per_min(samples: list[tuple[float, int]]) -> float:
    """Least-squares slope of (seconds, KiB) samples, in MiB per minute."""
    if len(samples) < 2:
        return 0.0
    n = len(samples)
    mean_t = sum(t for t, _ in samples) / n
    mean_v = sum(v for _, v in samples) / n
    var = sum((t - mean_t) ** 2 for t, _ in samples)
    if var == 0:
        return 0.0
    cov = sum((t - mean_t) * (v - mean_v) for t, v in samples)
    return cov / var * 60 / 1024


def summarize(samples: list[tuple[float, int]]) -> dict[str, Any]:
    values = [v for _, v in samples]
    half = samples[len(samples) // 2 :]
    grown = half[-1][1] - half[0][1] if half else 0
    return {
        "start_mib": values[0] / 1024,
        "end_mib": values[-1] / 1024,
        "max_mib": max(values) / 1024,
        "slope_mib_per_min": slope_mib_per_min(samples),
        "second_half_slope_mib_per_min": slope_mib_per_min(half),
        "second_half_growth_mib": grown / 1024,
        "flat": bool(half) and grown < max(FLAT_SHARE * half[0][1], FLAT_MIN_KIB),
    }


def gateway_processes(gateway: int, workers: int) -> tuple[list[int], list[int]]:
    """(gateway pids, OPA pids): the process itself or its workers, and their sidecars."""
    served = child_pids(gateway) if workers > 1 else [gateway]
    return served, [opa for pid in served for opa in child_pids(pid)]


def rss_of(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):  # a worker being restarted
            total += rss_kib(pid)
    return total


async def load(
    url: str, key: str, *, seconds: float, concurrency: int, stream_share: float
) -> dict[str, Any]:
    """Closed-loop load: the counts, the errors by kind, and the request ids of
    every answer (errors included: each has its audit record too)."""
    ids: list[str] = []
    counts = {"ok": 0, "streams": 0, "errors": 0, "failed_over": 0}
    kinds: dict[str, int] = {}

    def failed(kind: str) -> None:
        counts["errors"] += 1
        kinds[kind] = kinds.get(kind, 0) + 1

    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    every = round(1 / stream_share) if stream_share else 0
    deadline = time.monotonic() + seconds

    async def client(number: int, http: aiohttp.ClientSession) -> None:
        sent = number
        while time.monotonic() < deadline:
            sent += 1
            stream = bool(every) and sent % every == 0
            body = {
                "model": "soak",
                "stream": stream,
                "messages": [{"role": "user", "content": f"ping {sent}"}],
            }
            try:
                async with http.post(url, data=json.dumps(body), headers=headers) as resp:
                    text = await resp.read()
                    if "X-Request-Id" in resp.headers:
                        ids.append(resp.headers["X-Request-Id"])
                    if resp.status != 200:
                        failed(f"{resp.status} {error_code(text)}")
                        continue
                    if stream and not text.rstrip().endswith(b"[DONE]"):
                        failed("stream without [DONE]")
                        continue
                    counts["ok"] += 1
                    counts["streams"] += stream
                    counts["failed_over"] += resp.headers.get("X-Kamiwaza-Endpoint") == "steady"
            except aiohttp.ClientError as err:
                failed(type(err).__name__)

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as http:
        await asyncio.gather(*(client(n, http) for n in range(concurrency)))
    return {"ids": ids, **counts, "error_kinds": kinds}


def error_code(body: bytes) -> str:
    try:
        return str(json.loads(body)["error"]["code"])
    except (ValueError, KeyError, TypeError):
        return "(no JSON error)"


async def sample(
    gateway: int, workers: int, every: float, stop: asyncio.Event
) -> tuple[list[tuple[float, int]], list[tuple[float, int]]]:
    gw: list[tuple[float, int]] = []
    opa: list[tuple[float, int]] = []
    began = time.monotonic()
    while True:
        served, sidecars = gateway_processes(gateway, workers)
        now = time.monotonic() - began
        gw.append((now, rss_of(served)))
        opa.append((now, rss_of(sidecars)))
        try:
            await asyncio.wait_for(stop.wait(), every)
            return gw, opa
        except TimeoutError:
            pass


def audit_check(audit: Path, ids: list[str]) -> dict[str, Any]:
    verifier = ChainVerifier()
    records = [
        e["id"]
        for e in iter_entries(open_source(str(audit / "records")), verifier)
        if e["kind"] == "request"
    ]
    return {
        "records": len(records),
        "one_per_request": sorted(records) == sorted(ids),
        "requests": len(ids),
        "chain_ok": verifier.report.ok,
        "streams": len(verifier.report.streams),
    }


def show(label: str, s: dict[str, Any]) -> None:
    print(
        f"  {label:<12} RSS start {s['start_mib']:7.1f} MiB  end {s['end_mib']:7.1f}  "
        f"max {s['max_mib']:7.1f}  slope {s['slope_mib_per_min']:+.2f} MiB/min "
        f"(second half {s['second_half_slope_mib_per_min']:+.2f}, "
        f"{s['second_half_growth_mib']:+.1f} MiB): {'flat' if s['flat'] else 'GROWING'}"
    )


async def run(args: argparse.Namespace) -> int:
    work = Path(tempfile.mkdtemp(prefix="kamiwaza-soak-"))
    procs: list[subprocess.Popen[bytes]] = []
    gateway: subprocess.Popen[bytes] | None = None
    try:
        flaky, steady, port = free_port(), free_port(), free_port()
        bench = ROOT / "bench"
        flaky_args = [str(bench / "flaky_upstream.py"), str(flaky), str(args.fail_share)]
        procs.append(subprocess.Popen([sys.executable, *flaky_args]))
        steady_args = [str(bench / "fast_upstream.py"), str(steady)]
        procs.append(subprocess.Popen([sys.executable, *steady_args]))
        (work / "routing.yaml").write_text(POLICY)
        (work / "endpoints.yaml").write_text(registry(flaky, steady))
        _, key = KeyStore.load(work / "keys.json", missing_ok=True).create(tenant="soak")
        env = {
            **os.environ,
            "SOAK_TOKEN": "soak-token",
            "KAMIWAZA_AUDIT_BATCH_INTERVAL_S": str(args.batch_interval_s),
            "KAMIWAZA_LOG_LEVEL": "warning",  # no access log: the soak is not about stderr
        }
        with (work / "serve.log").open("wb") as log:
            gateway = subprocess.Popen(
                [str(BIN / "kamiwaza"), "serve", "--policy", "routing.yaml", "--keys", "keys.json",
                 "--port", str(port), "--audit-dir", "audit", "--rego", str(ROOT / "rego"),
                 "--workers", str(args.workers)],
                cwd=work, env=env, stdout=subprocess.DEVNULL, stderr=log,
            )  # fmt: skip
        await wait_ready(f"http://127.0.0.1:{flaky}/")
        await wait_ready(f"http://127.0.0.1:{steady}/")
        await wait_ready(f"http://127.0.0.1:{port}/readyz")
        while len(gateway_processes(gateway.pid, args.workers)[1]) < args.workers:
            await asyncio.sleep(0.05)  # until every worker's sidecar runs
        print(
            f"soak: {args.seconds:g} s, {args.concurrency} concurrent, "
            f"{args.stream_share:.0%} streamed, {args.fail_share:.0%} of the first endpoint's "
            f"answers fail over, audit shipped every {args.batch_interval_s:g} s, "
            f"{args.workers} worker(s); RSS every {args.sample_s:g} s"
        )
        stop = asyncio.Event()
        sampler = asyncio.ensure_future(sample(gateway.pid, args.workers, args.sample_s, stop))
        began = time.monotonic()
        result = await load(
            f"http://127.0.0.1:{port}/v1/chat/completions",
            key,
            seconds=args.seconds,
            concurrency=args.concurrency,
            stream_share=args.stream_share,
        )
        elapsed = time.monotonic() - began
        stop.set()
        gw, opa = await sampler
        gateway.send_signal(signal.SIGTERM)
        code = gateway.wait(timeout=120)
        ids = result.pop("ids")
        report: dict[str, Any] = {
            **result,
            "rps": result["ok"] / elapsed,
            "gateway": summarize(gw),
            "opa": summarize(opa),
            "samples": {"gateway_kib": gw, "opa_kib": opa},
            "exit_code": code,
            "audit": audit_check(work / "audit", ids),
        }
        print(
            f"  {result['ok']} answered ({report['rps']:.0f} req/s, {result['streams']} streamed, "
            f"{result['failed_over']} failed over), {result['errors']} errors"
            + "".join(f"; {n} {kind}" for kind, n in sorted(result["error_kinds"].items()))
        )
        show("gateway", report["gateway"])
        show("OPA", report["opa"])
        audit = report["audit"]
        print(
            f"  audit: {audit['records']} records in {audit['streams']} stream(s) for "
            f"{audit['requests']} requests, one each: "
            f"{'yes' if audit['one_per_request'] else 'NO'}, "
            f"chain {'verifies' if audit['chain_ok'] else 'BROKEN'}; gateway exit {code}"
        )
        if args.json:
            Path(args.json).write_text(json.dumps(report, indent=2))
        # The gateway's own error answers (e.g. 503 policy_timeout when OPA is
        # starved of CPU) are answers with a record; broken exchanges are not.
        broken = sum(n for kind, n in result["error_kinds"].items() if not kind[:3].isdigit())
        ok = code == 0 and audit["one_per_request"] and audit["chain_ok"] and not broken
        return 0 if ok else 1
    finally:
        if gateway is not None and gateway.poll() is None:
            gateway.kill()
            gateway.wait()
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=600.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--sample-s", type=float, default=5.0, help="RSS sampling interval")
    parser.add_argument("--stream-share", type=float, default=0.5)
    parser.add_argument("--fail-share", type=float, default=0.2)
    parser.add_argument("--batch-interval-s", type=float, default=2.0)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--json", default=None, help="also write the report to this file")
    return asyncio.run(run(parser.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
