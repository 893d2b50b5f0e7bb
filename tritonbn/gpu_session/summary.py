"""``summary.md`` of a GPU session: one screen saying what ran, what was skipped or failed, and the
headline numbers, computed from the result files the steps wrote (nothing is typed in by hand)."""

from __future__ import annotations

import csv
import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from pathlib import Path

__all__ = ["bench_ratios", "read_kind", "render_summary"]

_BENCH_KEY = ("suite", "dim", "N", "C", "spatial", "dtype", "layout", "mode", "pass", "affine")
MAX_LISTED = 10


def read_kind(results: str | Path, kind: str) -> list[dict]:
    """Rows of every result file of ``kind`` (a key of :data:`tritonbn.schema.RESULT_KINDS`: ``bench``,
    ``check``, ``env``, ...) under ``results``, in file-name order."""
    from tritonbn.schema import result_kind

    rows: list[dict] = []
    for path in sorted(Path(results).rglob("*.csv")):
        if result_kind(path) != kind:
            continue
        with path.open(newline="", encoding="utf-8") as f:
            rows.extend(csv.DictReader(f))
    return rows


def _float(v) -> float | None:
    try:
        x = float(v)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def _geomean(values: list[float]) -> float:
    return math.exp(sum(math.log(v) for v in values) / len(values))


def bench_ratios(
    rows: Iterable[Mapping[str, str]],
    baseline: str,
    metric: str = "ms_median",
    mode: str = "train",
    pass_: str = "fwd_bwd",
    provider: str = "tritonbn",
) -> dict[str, tuple[float, float, int]]:
    """``{dtype: (geomean, worst, count)}`` of ``baseline time / provider time`` (> 1: ``provider`` is
    faster) over the configurations where both were timed (``status`` ok) in ``mode`` and ``pass_``. GPU
    times (``ms_median``) are compared only when both came from the same timer (CUDA graph or do_bench)."""
    times: dict[tuple, dict[str, tuple[float, str]]] = defaultdict(dict)
    for r in rows:
        if r.get("status") != "ok" or r.get("mode") != mode or r.get("pass") != pass_:
            continue
        t = _float(r.get(metric))
        if t and t > 0:
            times[tuple(r.get(k) for k in _BENCH_KEY)][r["provider"]] = (t, r.get("timer", ""))
    ratios: dict[str, list[float]] = defaultdict(list)
    for key, by in times.items():
        if baseline in by and provider in by:
            (b, b_timer), (p, p_timer) = by[baseline], by[provider]
            if metric == "ms_median" and b_timer != p_timer:
                continue
            ratios[str(key[5])].append(b / p)
    return {d: (_geomean(v), min(v), len(v)) for d, v in sorted(ratios.items())}


def _fmt_s(s) -> str:
    x = _float(s)
    return "—" if x is None else f"{x:.0f} s"


def _steps_table(steps: list[Mapping]) -> list[str]:
    lines = ["| step | status | took | cap | result |", "|---|---|---|---|---|"]
    for s in steps:
        note = str(s.get("note", "")).replace("|", "\\|").replace("\n", " ")
        took, cap = _fmt_s(s.get("seconds")), _fmt_s(s.get("cap_s"))
        lines.append(f"| {s['name']} | {s['status']} | {took} | {cap} | {note} |")
    return lines


def _short_id(nodeid: str, width: int = 70) -> str:
    name = nodeid.split("::")[-1]
    return name if len(name) <= width else name[: width - 1] + "…"


def _tests_section(results: Path) -> list[str]:
    rows = read_kind(results, "tests")
    if not rows:
        return []
    lines = ["", "## Tests on CUDA", ""]
    by_run: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        by_run[r["run"]].append(r)
    for run, rs in sorted(by_run.items(), key=lambda kv: (kv[0] != "gpu-tests", kv[0])):
        c = Counter(r["outcome"] for r in rs)
        budget = sum(1 for r in rs if r["outcome"] == "skipped" and "time budget" in r["message"])
        slow = sorted(rs, key=lambda r: -(_float(r["seconds"]) or 0))[:3]
        lines.append(
            f"- **{run}**: {c['passed']} passed, {c['failed']} failed, {c['error']} errors, {c['skipped']} skipped"
            + (f" ({budget} of them because the time budget ran out)" if budget else "")
            + "; slowest: "
            + ", ".join(f"`{_short_id(r['nodeid'])}` {_float(r['seconds']) or 0:.1f} s" for r in slow)
        )
    bad = [r for r in rows if r["outcome"] in ("failed", "error")]
    if bad:
        lines += ["", f"Failures ({len(bad)}):"]
        lines += [f"- `{r['nodeid']}`: {r['message']}" for r in bad[:MAX_LISTED]]
        if len(bad) > MAX_LISTED:
            lines.append(f"- ... and {len(bad) - MAX_LISTED} more (the tests CSV lists them all)")
    return lines


def _check_section(results: Path) -> list[str]:
    rows = read_kind(results, "check")
    if not rows:
        return []
    lines = ["", "## Correctness (tritonbn-check on CUDA, against float64)", ""]
    for provider in ("tritonbn", "torch"):
        c = Counter(r["status"] for r in rows if r["provider"] == provider)
        if c:
            total = c["ok"] + c["fail"] + c["error"]
            lines.append(
                f"- {provider}: {c['ok']} of {total} checks within tolerance ({c['fail']} over, {c['error']} "
                f"errors; {c['skipped']} skipped)"
            )
    from tritonbn.correctness.cases import full_grid

    cases = {(r["case"], r["dtype"], r["layout"], r["mode"]) for r in rows}
    lines.append(f"- {len(cases)} of the {len(full_grid())} cases of the full grid ran")
    bad = [r for r in rows if r["provider"] == "tritonbn" and r["status"] in ("fail", "error")]
    for r in bad[:MAX_LISTED]:
        err = _float(r["max_rel_err"])
        what = f"rel err {err:.2e} > tol {_float(r['tol']) or 0:.1e}" if err is not None else r["note"]
        lines.append(f"  - FAIL {r['case']} {r['dtype']} {r['layout']} {r['mode']} {r['quantity']}: {what}")
    return lines


def _bench_section(results: Path, copy_gbps: float | None) -> list[str]:
    rows = read_kind(results, "bench")
    if not rows:
        return []
    configs = {tuple(r.get(k) for k in _BENCH_KEY) for r in rows}
    timed = Counter(r["provider"] for r in rows if r.get("status") == "ok" and r.get("pass") == "fwd_bwd")
    lines = ["", "## Speed (tritonbn-bench)", ""]
    lines.append(
        f"{len(configs)} configurations; fwd+bwd timed for "
        + ", ".join(f"{p} {n}" for p, n in sorted(timed.items()))
        + ". Ratios are baseline time / tritonbn time (> 1: tritonbn is faster), geometric mean (worst) "
        "over train-mode forward+backward."
    )
    lines += ["", "| baseline | dtype | GPU time | eager wall time | configs |", "|---|---|---|---|---|"]
    for baseline in ("cudnn", "native", "inductor"):
        gpu = bench_ratios(rows, baseline)
        wall = bench_ratios(rows, baseline, metric="wall_ms")
        for dtype, (g, worst, n) in gpu.items():
            w = wall.get(dtype)
            wall_s = f"{w[0]:.2f}× ({w[1]:.2f}×)" if w else "—"
            lines.append(f"| {baseline} | {dtype} | {g:.2f}× ({worst:.2f}×) | {wall_s} | {n} |")
    big = defaultdict(list)
    for r in rows:
        pct, numel = _float(r.get("pct_of_peak")), _float(r.get("numel"))
        eval_fwd = r.get("status") == "ok" and r.get("mode") == "eval" and r.get("pass") == "fwd"
        if eval_fwd and pct and numel and numel >= 8 * 2**20:
            big[r["provider"]].append(pct)
    if big:
        parts = [f"{p} {sorted(v)[len(v) // 2]:.0f}% (n={len(v)})" for p, v in sorted(big.items())]
        lines += ["", "Eval forward on ≥ 8M elements, median % of the copy bandwidth: " + ", ".join(parts) + "."]
    if copy_gbps:
        lines += ["", f"Copy bandwidth (peak_gbps): {copy_gbps:.0f} GB/s."]
    return lines


def _kernels_section(results: Path) -> list[str]:
    rows = [r for r in read_kind(results, "kernels") if _float(r.get("registers")) is not None]
    if not rows:
        return []
    regs = [int(float(r["registers"])) for r in rows]
    worst = max(rows, key=lambda r: float(r["registers"]))
    over = sum(1 for x in regs if x > 128)
    spilling = sum(1 for r in rows if (_float(r.get("spills")) or 0) > 0)
    return [
        "",
        "## Kernels compiled in this session",
        "",
        f"{len(rows)} tritonbn specialisations ({rows[0]['source']}): registers {min(regs)}–{max(regs)} "
        f"(max: {worst['kernel']}, tiles {worst['tiles']}, {worst['num_warps']} warps), {over} above 128, "
        f"{spilling} spilling.",
    ]


def _sync_section(results: Path) -> list[str]:
    rows = read_kind(results, "sync")
    if not rows:
        return []
    c = Counter(r["status"] for r in rows)
    checks = ", ".join(dict.fromkeys(r["check"] for r in rows))
    lines = ["", "## SyncBatchNorm across processes", ""]
    lines.append(
        f"{c['ok']} of {c['ok'] + c['fail'] + c['error']} rows within tolerance of one process on the "
        f"concatenated batch ({checks}); {c['skipped']} skipped."
    )
    for r in rows:
        if r["status"] in ("fail", "error", "skipped"):
            lines.append(f"- {r['status']}: {r['check']} {r.get('quantity', '')} {r.get('note', '')}".rstrip())
    return lines


def _train_section(results: Path) -> list[str]:
    rows = read_kind(results, "train")
    if not rows:
        return []
    lines = ["", "## Training step", ""]
    lines += [
        "| model | dtype | torch ms/step | tritonbn ms/step | torch / tritonbn | loss after 3 steps (torch, tritonbn) "
        "| fused batch norms |",
        "|---|---|---|---|---|---|---|",
    ]
    by = defaultdict(dict)
    for r in rows:
        by[(r["model"], r["batch"], r["dtype"])][r["batch_norm"]] = r
    for (model, batch, dtype), v in by.items():
        t, o = v.get("torch", {}), v.get("tritonbn", {})
        tm, om = _float(t.get("ms_median")), _float(o.get("ms_median"))
        ratio = f"{tm / om:.2f}×" if tm and om else "—"
        losses = f"{_float(t.get('loss_after')) or float('nan'):.4f}, {_float(o.get('loss_after')) or float('nan'):.4f}"
        fused = f"{o.get('fused_relu', '—')}/{o.get('bn_layers', '—')}" if o else "—"
        t_s = f"{tm:.1f}" if tm else t.get("status", "—")
        o_s = f"{om:.1f}" if om else o.get("status", "—")
        lines.append(f"| {model} b{batch} | {dtype} | {t_s} | {o_s} | {ratio} | {losses} | {fused} |")
    return lines


def render_summary(
    steps: list[Mapping], env: Mapping[str, object], results: str | Path, budget_s: float, elapsed_s: float
) -> str:
    """The Markdown summary of a session: header (device, versions, sha), the steps table, then one
    section per kind of result found under ``results``."""
    results = Path(results)
    prov = env.get("provenance", {}) if isinstance(env.get("provenance"), Mapping) else {}
    gpu = env.get("gpu") or prov.get("gpu") or "unknown device"
    date = str(prov.get("timestamp", ""))[:10] or "unknown date"
    sha = prov.get("git_sha", "unknown")
    lines = [f"# tritonbn GPU session: {gpu}, {date}, git {sha}", ""]
    facts = []
    for key, label in (
        ("torch", "torch"),
        ("triton", "triton"),
        ("cuda", "CUDA"),
        ("cudnn", "cuDNN"),
        ("driver", "driver"),
        ("sm_count", "SMs"),
        ("memory_gib", "GiB"),
    ):
        if env.get(key) not in (None, ""):
            facts.append(f"{env[key]} {label}" if key in ("sm_count", "memory_gib") else f"{label} {env[key]}")
    copy_gbps = _float(env.get("copy_gbps"))
    if copy_gbps:
        facts.append(f"copy {copy_gbps:.0f} GB/s")
    if facts:
        lines += [" · ".join(facts), ""]
    counts = Counter(s["status"] for s in steps)
    lines.append(
        f"Budget {budget_s:.0f} s, used {elapsed_s:.0f} s. Steps: "
        + ", ".join(f"{n} {status}" for status, n in counts.items())
        + "."
    )
    lines += ["", *_steps_table(steps)]
    for section in (_tests_section, _check_section, _kernels_section, _sync_section, _train_section):
        lines += section(results)
    lines += _bench_section(results, copy_gbps)
    return "\n".join(lines) + "\n"
