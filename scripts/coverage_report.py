"""Summarise `opa test --coverage --format json` per file and enforce a threshold."""

from __future__ import annotations

import argparse
import json
import sys


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("report")
    parser.add_argument("--threshold", type=float, default=0.0)
    args = parser.parse_args()
    with open(args.report, encoding="utf-8") as fh:
        report = json.load(fh)
    for name, info in sorted(report.get("files", {}).items()):
        if name.endswith("_test.rego"):
            continue
        missed = [f"{r['start']['row']}-{r['end']['row']}" for r in info.get("not_covered", [])]
        line = f"  {info.get('coverage', 0.0):6.2f}%  {name}"
        print(line + (f"  (not covered: lines {', '.join(missed)})" if missed else ""))
    total = float(report.get("coverage", 0.0))
    print(f"  {total:6.2f}%  total (threshold {args.threshold:g}%)")
    if total < args.threshold:
        print(f"Rego coverage {total:.2f}% is below {args.threshold:g}%", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
