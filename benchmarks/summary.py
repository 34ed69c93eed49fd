"""The benchmark summary table: one row per (op, phase, shape, dtype), eager / torch.compile / ambient_fast, and the
cost of ambient_fast's default value checks against the same call with validate=False ("checks": ours / unchecked
- 1; the target is under 10%).

Used by benchmarks/conftest.py at the end of a run, and as a script to merge JSON-lines results of several runs:
    python benchmarks/summary.py results.jsonl [more.jsonl ...]
"""
from __future__ import annotations

import json
import sys


def summary_lines(results: list[dict], device: str) -> list[str]:
    copies = [r for r in results if r["op"] == "copy"]
    copy_bandwidth = max((r["bytes_moved"] / r["seconds"] for r in copies), default=None)
    rows: dict[tuple, dict] = {}
    for r in results:
        if r["op"] != "copy":
            rows.setdefault((r["op"], r["phase"], r["shape"], r["dtype"]), {})[r["implementation"]] = r
    lines = ["", f"ambient_fast benchmark summary on {device} (median times; GB/s from the written-down byte count)"]
    if copy_bandwidth:
        lines.append(f"measured copy bandwidth: {copy_bandwidth / 1e9:.1f} GB/s (bytes read + written by a tensor copy)")
    header = (
        f"{'op':<17}{'phase':<18}{'shape':<17}{'dtype':<10}{'eager ms':>10}{'compile ms':>12}{'ours ms':>10}"
        f"{'GB/s':>9}{'% copy':>8}{'x eager':>9}{'x compile':>10}{'unchecked ms':>14}{'checks':>8}{'ours compiled ms':>18}"
    )
    lines += [header, "-" * len(header)]
    for (op, phase, shape, dtype), by_impl in sorted(rows.items()):
        ours, eager, compiled = by_impl.get("ambient_fast"), by_impl.get("eager"), by_impl.get("compile")
        unchecked = by_impl.get("ambient_fast_unchecked")
        ours_compiled = by_impl.get("ambient_fast_compiled")  # torch.compile(fullgraph=True) of a step using ours
        gbps = ours["bytes_moved"] / ours["seconds"] / 1e9 if ours else None
        lines.append(
            f"{op:<17}{phase:<18}{shape:<17}{dtype:<10}{_ms(eager):>10}{_ms(compiled):>12}{_ms(ours):>10}"
            f"{_fmt(gbps, '.1f'):>9}"
            f"{_fmt(100 * gbps * 1e9 / copy_bandwidth if gbps and copy_bandwidth else None, '.0f', '%'):>8}"
            f"{_fmt(eager['seconds'] / ours['seconds'] if eager and ours else None, '.2f'):>9}"
            f"{_fmt(compiled['seconds'] / ours['seconds'] if compiled and ours else None, '.2f'):>10}"
            f"{_ms(unchecked):>14}"
            f"{_fmt(100 * (ours['seconds'] / unchecked['seconds'] - 1) if ours and unchecked else None, '+.0f', '%'):>8}"
            f"{_ms(ours_compiled):>18}"
        )
    lines.append("")
    return lines


def _ms(result) -> str:
    return f"{result['seconds'] * 1e3:.3f}" if result else "-"


def _fmt(value, spec: str, suffix: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{suffix}"


def main(paths: list[str]) -> None:
    results = [json.loads(line) for path in paths for line in open(path) if line.strip()]
    if not results:
        raise SystemExit("no benchmark results in " + ", ".join(paths))
    print("\n".join(summary_lines(results, results[0].get("device", "unknown device"))))


if __name__ == "__main__":
    main(sys.argv[1:])
