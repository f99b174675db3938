"""Benchmark records as a markdown table, a log-log PNG plot and a JSON file in a directory."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path


def markdown_table(records: Sequence[dict], columns: Sequence[str] | None = None) -> str:
    """A GitHub markdown table of ``records`` (columns: those given, else the first record's keys)."""
    if not records:
        return ""
    columns = list(columns or records[0].keys())
    lines = ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
    for record in records:
        lines.append("| " + " | ".join(_cell(record.get(c)) for c in columns) + " |")
    return "\n".join(lines) + "\n"


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)


def speedups(records: Sequence[dict], series: str, x: str, baseline: str, value: str = "fwd_bwd_ms") -> list[dict]:
    """``time(baseline) / time(other)`` per x value and dtype (e.g. softmax / cbsa per token count)."""
    table: dict[tuple, dict[str, float]] = {}
    for r in records:
        table.setdefault((r[x], r.get("dtype")), {})[r[series]] = r[value]
    out = []
    for (xv, dtype), row in table.items():
        if baseline not in row:
            continue
        for name, ms in row.items():
            if name != baseline and ms:
                out.append({x: xv, "dtype": dtype, series: name, "baseline": baseline,
                            "speedup": round(row[baseline] / ms, 2)})
    return out


def plot_scaling(records: Sequence[dict], path: str | Path, x: str, series: str,
                 values: Sequence[str] = ("fwd_bwd_ms", "peak_mem_mb"), title: str = "") -> Path:
    """Log-log plot of ``values`` against ``x``, one line per (``series``, dtype); saved as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(values), figsize=(5.5 * len(values), 4.2), squeeze=False)
    lines: dict[tuple, list[dict]] = {}
    for r in records:
        lines.setdefault((r[series], r.get("dtype")), []).append(r)
    for ax, value in zip(axes[0], values):
        for (name, dtype), rows in lines.items():
            rows = sorted((r for r in rows if r.get(value) is not None), key=lambda r: r[x])
            if rows:
                label = name if dtype in (None, "float32") else f"{name} ({dtype})"
                ax.plot([r[x] for r in rows], [r[value] for r in rows], marker="o", label=label)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel(x)
        ax.set_ylabel(value)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(records: Sequence[dict], out_dir: str | Path, name: str, x: str, series: str,
                 baseline: str | None = None, machine: dict | None = None) -> dict[str, Path]:
    """Write ``{name}.json``, ``{name}.md`` (table, speed-ups vs ``baseline``, machine) and ``{name}.png``.

    Returns:
        The written paths by kind (``json``, ``md``, ``png``).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / f"{name}.json", "md": out_dir / f"{name}.md", "png": out_dir / f"{name}.png"}
    paths["json"].write_text(json.dumps({"machine": machine, "records": list(records)}, indent=1) + "\n")
    text = [f"# benchmark {name}\n"]
    if machine:
        text.append("Machine: " + ", ".join(f"{k}={v}" for k, v in machine.items()) + "\n")
    text.append(markdown_table(records))
    if baseline:
        ratios = speedups(records, series, x, baseline)
        if ratios:
            text.append(f"\nSpeed-up (forward+backward time of {baseline} / time of the other):\n")
            text.append(markdown_table(ratios))
    paths["md"].write_text("\n".join(text))
    plot_scaling(records, paths["png"], x, series, title=f"{name} ({(machine or {}).get('device', '')})")
    return paths
