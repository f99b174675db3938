"""Two-process DDP (gloo, CPU) detection ``test`` and ``predict``: finish, write ONE complete results json
(every rank's images, the DistributedSampler's padded repeats counted once) equal to a single process's, and
the same COCO mAP."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
NUM_VAL = 5  # odd: the 2-rank DistributedSampler pads rank 1's share with a repeat of the first image


def _cli(*args, cwd):
    cmd = [sys.executable, "-m", "cbsa_dense.cli", *args]
    result = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout + result.stderr


def _metric(log_dir: Path, key: str) -> float:
    rows = list(csv.DictReader(open(next(log_dir.rglob("metrics.csv")))))
    return float(next(r[key] for r in reversed(rows) if r.get(key)))


def _results(results_dir: Path, name: str, output: str) -> list[dict]:
    assert sorted(p.name for p in results_dir.iterdir()) == [name]
    assert output.count(f"detections to {results_dir / name}") == 1, "results written more than once"
    assert "share of the images only" not in output
    return json.loads((results_dir / name).read_text())


def _assert_same(got: list[dict], want: list[dict]) -> None:
    assert len(got) == len(want)
    for a, b in zip(got, want):
        assert (a["image_id"], a["category_id"]) == (b["image_id"], b["category_id"]), (a, b)
        assert a["score"] == pytest.approx(b["score"], abs=1e-5), (a, b)
        assert a["bbox"] == pytest.approx(b["bbox"], abs=1e-5), (a, b)


@pytest.mark.slow
def test_ddp_detection_test_and_predict_match_single_process(tmp_path):
    common = ["--config", str(ROOT / "configs" / "demo_det.yaml"),
              "--data.init_args.root", str(tmp_path / "data"), "--data.init_args.num_train", "8",
              "--data.init_args.num_val", str(NUM_VAL), "--data.init_args.batch_size", "4",
              "--data.init_args.eval_batch_size", "2",
              # every image gets detections (100 each), so the json shows which images each run covered
              "--model.init_args.head.init_args.score_thresh", "0.0"]
    _cli("fit", *common, "--trainer.max_steps", "12", "--trainer.max_epochs", "12",
         "--trainer.check_val_every_n_epoch", "12", "--trainer.num_sanity_val_steps", "0",
         "--model.init_args.lr_scheduler.init_args.warmup_iters", "1",
         "--trainer.logger.init_args.save_dir", str(tmp_path / "fit"),
         "--trainer.default_root_dir", str(tmp_path / "fit"), cwd=tmp_path)
    ckpt = next((tmp_path / "fit").rglob("last.ckpt"))
    val_ids = sorted(i["id"] for i in json.loads(
        (tmp_path / "data" / "annotations" / "instances_val.json").read_text())["images"])
    assert len(val_ids) == NUM_VAL

    runs = {"ddp": ["--trainer.devices", "2", "--trainer.strategy", "ddp"], "single": ["--trainer.devices", "1"]}
    results, maps, predictions = {}, {}, {}
    for name, extra in runs.items():
        out = _cli("test", *common, *extra, "--ckpt_path", str(ckpt),
                   "--model.init_args.results_dir", str(tmp_path / f"test_{name}"),
                   "--trainer.logger.init_args.save_dir", str(tmp_path / f"log_{name}"),
                   "--trainer.default_root_dir", str(tmp_path / f"log_{name}"), cwd=tmp_path)
        results[name] = _results(tmp_path / f"test_{name}", "test_results.json", out)
        maps[name] = _metric(tmp_path / f"log_{name}", "test_map")
        out = _cli("predict", *common, *extra, "--ckpt_path", str(ckpt),
                   "--model.init_args.results_dir", str(tmp_path / f"predict_{name}"),
                   "--trainer.logger.init_args.save_dir", str(tmp_path / f"plog_{name}"),
                   "--trainer.default_root_dir", str(tmp_path / f"plog_{name}"), cwd=tmp_path)
        predictions[name] = _results(tmp_path / f"predict_{name}", "predictions.json", out)

    for entries in (*results.values(), *predictions.values()):
        assert sorted({e["image_id"] for e in entries}) == val_ids   # every rank's images are in
        assert len(entries) == 100 * NUM_VAL                         # ... each once (detections_per_img 100)
    _assert_same(results["ddp"], results["single"])
    _assert_same(predictions["ddp"], predictions["single"])
    _assert_same(predictions["single"], results["single"])
    assert maps["single"] > 0.0, "the model must detect something for the mAP comparison to mean anything"
    assert maps["ddp"] == pytest.approx(maps["single"], abs=1e-6), maps
