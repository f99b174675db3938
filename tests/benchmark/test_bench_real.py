"""``cbsa-dense benchmark real`` at toy size: arms x leave-one-frame-out folds x seeds, each a real ``fit`` in its
own process, the report's numbers read from the runs, and a resume that runs only what has no result."""

from __future__ import annotations

import json

import pytest

from cbsa_dense.benchmark.real import arm_args, benchmark_real, build_material, frame_folds
from cbsa_dense.cli import main
from cbsa_dense.errors import ConfigError
from tests.conftest import ROOT
from tests.tasks.test_finetune_tiny import TWIN, timm_weights
from tests.test_bad_images import make_dataset


def test_leave_one_frame_out_holds_out_each_frame_once(tmp_path):
    root = make_dataset(tmp_path / "frames", n=2)
    folds = frame_folds(root, tmp_path / "cache", None)
    assert list(folds) == ["frame_train0", "frame_train1", "frame_val0", "frame_val1"]
    for name, fold in folds.items():
        held_out = [p.name for p in (fold / "images" / "val").iterdir()]
        trained = sorted(p.name for p in (fold / "images" / "train").iterdir())
        assert held_out == [name.removeprefix("frame_") + ".png"] and held_out[0] not in trained
        assert len(trained) == 3 and sorted(p.name for p in (fold / "masks" / "train").iterdir()) == trained
        assert (fold / "classes.txt").read_text() == "a\nb\nc\n"


def test_arms_and_tools_are_checked_in_one_line(tmp_path):
    with pytest.raises(ConfigError, match="arm 'sofmax' is unknown: give random, softmax, cbsa or NAME=CONFIG.yaml"):
        arm_args("sofmax", tmp_path / "w.safetensors")
    with pytest.raises(ConfigError, match="arm 'softmax' starts from pretrained weights: give --weights"):
        arm_args("softmax", None)
    with pytest.raises(ConfigError, match="arm 'mine=nope.yaml': config file nope.yaml does not exist"):
        arm_args("mine=nope.yaml", tmp_path / "w.safetensors")
    assert arm_args("random", None) == ["--model.init_args.encoder.init_args.pretrained", "null",
                                        "--model.init_args.freeze", "null"]
    with pytest.raises(ConfigError, match=r"the tool .*labelme_real_seg.py that builds real_seg is not here"):
        build_material(tmp_path / "tools" / "labelme_real_seg.py", tmp_path / "real_seg")


def test_arms_over_folds_and_seeds_report_and_resume(tmp_path, capsys):
    root = make_dataset(tmp_path / "frames", n=1, size=(30, 44))          # 2 frames: 2 folds
    weights = tmp_path / "dinov2_tiny.safetensors"
    timm_weights(weights)
    out = tmp_path / "out"
    run = dict(task="seg", arms=["random", "cbsa"], seeds=[0], out=out, cache=tmp_path / "cache", data_root=root,
               weights=weights, jobs=2, threads=1, steps=2, val_every=2, extra=TWIN[3:])
    report = benchmark_real(**run)
    results = json.loads((out / "seg" / "results.json").read_text())
    assert [(r["arm"], r["fold"], r["seed"]) for r in results] == [
        ("random", "frame_train0", 0), ("random", "frame_val0", 0), ("cbsa", "frame_train0", 0), ("cbsa", "frame_val0", 0)]
    for result in results:
        metrics = result["metrics"]
        assert metrics["step"] == 1 and 0 <= metrics["val_miou"] <= 1 and result["wall_s"] > 0
        assert {"val_iou_a", "val_iou_b", "val_iou_c"} <= set(metrics)
    text = report.read_text()
    random_miou = [r["metrics"]["val_miou"] for r in results if r["arm"] == "random"]
    mean = 100 * sum(random_miou) / 2
    assert f"| random | 2 | {mean:.1f} ± " in text                          # the runs' own numbers
    assert "| arm | a | a zero in | b | b zero in | c | c zero in |" in text
    assert "| arm | frame_train0 | frame_val0 |" in text
    assert "runs, 0 done before, 4 to run" in capsys.readouterr().out

    # resume: a finished run is read back; only the run without result.json runs again
    logs = {p: p.stat().st_mtime_ns for p in out.rglob("fit.log")}
    (out / "seg" / "cbsa" / "frame_val0" / "seed0" / "result.json").unlink()
    benchmark_real(**run)
    assert "4 runs, 3 done before, 1 to run" in capsys.readouterr().out
    changed = sorted(str(p.relative_to(out)) for p, t in logs.items() if p.stat().st_mtime_ns != t)
    assert changed == ["seg/cbsa/frame_val0/seed0/fit.log"]


def test_the_cli_entry_reports_a_bad_arm_in_one_line(tmp_path, capsys):
    root = make_dataset(tmp_path / "frames", n=1)
    assert main(["benchmark", "real", "seg", "--arms", "random", "random", "--data-root", str(root),
                 "--cache", str(tmp_path / "cache"), "--out", str(tmp_path / "out")]) == 2
    assert "arm names repeat in ['random', 'random']" in capsys.readouterr().err


def test_a_run_without_validation_numbers_is_one_line(tmp_path):
    from cbsa_dense.benchmark.real import last_validation
    from cbsa_dense.errors import DataError

    with pytest.raises(DataError, match="metrics.csv was not written"):
        last_validation(tmp_path / "metrics.csv", "val_miou")
    (tmp_path / "metrics.csv").write_text("epoch,step,train_loss\n0,9,0.5\n")
    with pytest.raises(DataError, match="holds no val_miou: the run validated nowhere"):
        last_validation(tmp_path / "metrics.csv", "val_miou")
    (tmp_path / "metrics.csv").write_text("epoch,step,train_loss,val_miou\n0,9,0.5,\n0,9,,0.25\n1,19,,0.5\n")
    assert last_validation(tmp_path / "metrics.csv", "val_miou") == {"epoch": 1.0, "step": 19.0, "val_miou": 0.5}


@pytest.mark.parametrize("arm", sorted(p.name for p in (ROOT / "benchmarks" / "real").glob("*.yaml")))
def test_every_shipped_arm_config_parses_on_its_base(arm):
    """Each benchmarks/real/*.yaml parses on top of its task's base config, as ``fit`` would compose them (a
    typo or a class switch that leaks the other class's init_args fails here, not after the data is built)."""
    from cbsa_dense.cli.commands.info import parse_config
    from cbsa_dense.cli.config_files import load_config, merge_configs

    base = "finetune_det_cpu.yaml" if arm.startswith("det_") else "finetune_cpu.yaml"
    cfg = parse_config(merge_configs(load_config(base), load_config(ROOT / "benchmarks" / "real" / arm)))
    assert cfg.model.class_path.endswith("DetectionTask" if arm.startswith("det_") else "SegmentationTask")
