"""Printing the results as tables, and writing them as JSON."""

from __future__ import annotations

import json
from pathlib import Path

from bench.measure import Measured
from bench.scenarios import RATIOS, Figure, ScenarioResult


def _num(x: float | None, digits: int = 2) -> str:
    return "-" if x is None else f"{x:,.{digits}f}"


def runs_table(runs: dict[str, Measured]) -> list[str]:
    lines = [
        f"  {'path':<18}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'cpu us/req':>12}"
        f"{'errors':>8}  server"
    ]
    for name, m in runs.items():
        lines.append(
            f"  {name:<18}{m.rps:>10,.0f}{m.p50_ms:>9.3f}{m.p99_ms:>9.3f}"
            f"{_num(m.cpu_us_per_request, 0):>12}{m.errors:>8}  {m.endpoint.label}"
        )
    return lines


def ratios(runs: dict[str, Measured]) -> list[dict[str, object]]:
    """req/s, latency and CPU/request of path a relative to path b, for each pair in RATIOS."""
    out = []
    for a, b in RATIOS:
        if a in runs and b in runs:
            ra, rb = runs[a], runs[b]
            ca, cb = ra.cpu_us_per_request, rb.cpu_us_per_request
            out.append(
                {
                    "pair": f"{a} / {b}",
                    "rps": ra.rps / rb.rps,
                    "p50": ra.p50_ms / rb.p50_ms,
                    "p99": ra.p99_ms / rb.p99_ms,
                    "cpu": ca / cb if ca is not None and cb else None,
                }
            )
    return out


def ratios_table(rows: list[dict[str, object]]) -> list[str]:
    if not rows:
        return []
    lines = [f"  {'ratio':<24}{'req/s':>9}{'p50':>9}{'p99':>9}{'cpu/req':>9}"]
    for r in rows:
        cpu = r["cpu"]
        cpu_text = "-" if not isinstance(cpu, float) else f"{cpu:.2f}x"
        lines.append(
            f"  {r['pair']!s:<24}{r['rps']:>8.3f}x{r['p50']:>8.2f}x{r['p99']:>8.2f}x{cpu_text:>9}"
        )
    return lines


def figure_line(f: Figure) -> str:
    verdict = "" if f.ok is None else ("  PASS" if f.ok else "  MISS")
    target = f"  (target {f.target} {f.unit})" if f.target else ""
    digits = {"ms": 3, "x": 2}.get(f.unit, 0)
    unit = f.unit if f.unit == "x" else f" {f.unit}"
    return f"  {f.name}: {f.value:,.{digits}f}{unit}{target}{verdict}"


def print_summary(results: list[ScenarioResult]) -> None:
    """Every figure with a target, and the floor comparison, once more at the end."""
    lines = [
        f"  {r.name + ':':<16}{figure_line(f).strip()}"
        for r in results
        for f in r.figures
        if f.ok is not None or f.summary
    ]
    if lines:
        print("\n== summary: targets and trimesh vs. the floor (same run) ==")
        print("\n".join(lines))


def print_scenario(res: ScenarioResult) -> None:
    print(f"\n== {res.name}: {res.title} ==")
    if res.runs:
        print("\n".join(runs_table(res.runs)))
        ratio_lines = ratios_table(ratios(res.runs))
        if ratio_lines:
            print("\n".join(ratio_lines))
    for f in res.figures:
        print(figure_line(f))
    for note in res.notes:
        print(f"  note: {note}")
    if res.text:
        print(res.text)


def scenario_json(res: ScenarioResult) -> dict[str, object]:
    return {
        "title": res.title,
        "runs": {name: m.as_dict() for name, m in res.runs.items()},
        "ratios": [
            {k: round(v, 4) if isinstance(v, float) else v for k, v in r.items()}
            for r in ratios(res.runs)
        ],
        "figures": [
            {
                "name": f.name,
                "value": round(f.value, 4),
                "unit": f.unit,
                "target": f.target,
                "ok": f.ok,
            }
            for f in res.figures
        ],
        "notes": res.notes,
        **res.extra,
    }


def write_json(path: Path, meta: dict[str, object], results: list[ScenarioResult]) -> None:
    doc = {"meta": meta, "scenarios": {r.name: scenario_json(r) for r in results}}
    path.write_text(json.dumps(doc, indent=2) + "\n")
