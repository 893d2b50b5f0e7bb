"""The summary printed after a run: geometric-mean speed-up over cuDNN per suite and dtype."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping

__all__ = ["format_summary", "speedups"]

_KEY = ("suite", "dtype", "dim", "N", "C", "spatial", "layout", "mode", "pass", "affine")


def speedups(
    rows: Iterable[Mapping[str, object]], baseline: str = "cudnn"
) -> dict[tuple[str, str], dict[str, tuple[float, int]]]:
    """``{(suite, dtype): {provider: (geomean of baseline_ms / provider_ms, count)}}`` over the
    measurements that both the provider and the baseline timed successfully."""
    times: dict[tuple, dict[str, float]] = defaultdict(dict)
    for r in rows:
        if r.get("status") == "ok" and r.get("ms_median") not in (None, ""):
            times[tuple(r[k] for k in _KEY)][str(r["provider"])] = float(r["ms_median"])
    logs: dict[tuple[str, str], dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for key, by_provider in times.items():
        base = by_provider.get(baseline)
        if not base:
            continue
        for provider, ms in by_provider.items():
            if provider != baseline and ms > 0:
                logs[(str(key[0]), str(key[1]))][provider].append(math.log(base / ms))
    return {
        group: {p: (math.exp(sum(v) / len(v)), len(v)) for p, v in by_provider.items()}
        for group, by_provider in sorted(logs.items())
    }


def format_summary(rows: list[Mapping[str, object]], providers: list[str], baseline: str = "cudnn") -> str:
    """A compact table: one line per (suite, dtype), one column per provider (speed-up ×, >1 is faster
    than the baseline), plus counts of rows that were not timed."""
    others = [p for p in providers if p != baseline]
    table = speedups(rows, baseline)
    lines = []
    if others and baseline in providers:
        header = f"{'suite':10s} {'dtype':5s} " + " ".join(f"{p:>10s}" for p in others) + "   (speed-up vs "
        lines.append(header + f"{baseline}, geomean)")
        for (suite, dtype), by_provider in table.items():
            cells = []
            for p in others:
                if p in by_provider:
                    s, _ = by_provider[p]
                    cells.append(f"{s:9.2f}x")
                else:
                    cells.append(f"{'-':>10s}")
            lines.append(f"{suite:10s} {dtype:5s} " + " ".join(cells))
        if not table:
            lines.append(f"(no configuration was timed for both {baseline} and another provider)")
    not_ok: dict[str, int] = defaultdict(int)
    for r in rows:
        if r.get("status") != "ok":
            not_ok[str(r["provider"])] += 1
    for p, n in sorted(not_ok.items()):
        lines.append(f"{p}: {n} rows not timed (see the status column)")
    return "\n".join(lines)
