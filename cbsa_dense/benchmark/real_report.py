"""The markdown report of ``cbsa-dense benchmark real``: per arm the headline metric's mean and spread over every
(fold, seed) run, per class, per fold, AR (detection) and wall time, with the command that made it."""

from __future__ import annotations

import statistics
from collections import defaultdict

#: Logged COCO numbers that share the per-class prefix ``val_map_`` (not classes).
_NOT_CLASSES = {"50", "75", "s", "m", "l"}


def _mean(values: list[float]) -> str:
    """The mean in the metric's units x 100 (``-`` for no value)."""
    return f"{100 * statistics.fmean(values):.1f}" if values else "-"


def _spread(values: list[float]) -> str:
    """``mean ± sample std`` (``mean`` alone for one value), in the metric's units x 100."""
    if len(values) < 2:
        return _mean(values)
    return f"{_mean(values)} ± {100 * statistics.stdev(values):.1f}"


def class_keys(results: list[dict], prefix: str) -> list[str]:
    """The per-class metric keys the runs logged, in first-seen order."""
    keys: dict[str, None] = {}
    for result in results:
        for key in result["metrics"]:
            if key.startswith(prefix) and key[len(prefix):] not in _NOT_CLASSES:
                keys.setdefault(key, None)
    return list(keys)


def render(task: str, results: list[dict], metric: str, prefix: str, command: str) -> str:
    """The report (markdown) of a benchmark's results (each: arm, fold, seed, wall_s, metrics)."""
    by_arm: dict[str, list[dict]] = defaultdict(list)
    for result in results:
        by_arm[result["arm"]].append(result)
    classes = class_keys(results, prefix)
    folds = list(dict.fromkeys(r["fold"] for r in results))
    recall = sorted({k for r in results for k in r["metrics"] if k.startswith("val_mar_")})
    seeds = sorted({r["seed"] for r in results})
    lines = [f"# Real-photo benchmark: {task}", "",
             f"Made by `{command}`.", "",
             f"{metric} at each run's last validation, x 100: mean ± sample standard deviation over "
             f"{len(folds)} fold(s) x {len(seeds)} seed(s) ({', '.join(map(str, seeds))}).", "",
             f"| arm | runs | {metric} | min | max |{''.join(f' {k} |' for k in recall)} wall time per run (s) |",
             "| --- | --- | --- | --- | --- |" + " --- |" * len(recall) + " --- |"]
    for arm, runs in by_arm.items():
        values = [r["metrics"].get(metric, float("nan")) for r in runs]
        extra = "".join(f" {_spread([r['metrics'][k] for r in runs if k in r['metrics']])} |" for k in recall)
        lines.append(f"| {arm} | {len(runs)} | {_spread(values)} | {100 * min(values):.1f} | {100 * max(values):.1f} |"
                     f"{extra} {statistics.fmean(r['wall_s'] for r in runs):.0f} |")
    if classes:
        names = [k[len(prefix):] for k in classes]
        lines += ["", f"Per class ({prefix}<class>, x 100; \"zero in\": runs where the class scored 0):", "",
                  "| arm |" + "".join(f" {n} | {n} zero in |" for n in names),
                  "| --- |" + " --- | --- |" * len(names)]
        for arm, runs in by_arm.items():
            cells = []
            for key in classes:
                values = [r["metrics"][key] for r in runs if key in r["metrics"]]
                cells.append(f" {_spread(values)} | {sum(v == 0 for v in values)} of {len(values)} |")
            lines.append(f"| {arm} |" + "".join(cells))
    if len(folds) > 1:
        lines += ["", f"Per fold ({metric} x 100, mean over seeds):", "",
                  "| arm |" + "".join(f" {f} |" for f in folds), "| --- |" + " --- |" * len(folds)]
        for arm, runs in by_arm.items():
            cells = [_mean([r["metrics"][metric] for r in runs if r["fold"] == f and metric in r["metrics"]])
                     for f in folds]
            lines.append(f"| {arm} |" + "".join(f" {c} |" for c in cells))
    return "\n".join(lines) + "\n"
