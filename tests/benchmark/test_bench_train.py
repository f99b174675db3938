import json
from pathlib import Path

import pytest
import torch
import yaml

from cbsa_dense.benchmark.train import count_images
from cbsa_dense.cli import main as cli_main
from cbsa_dense.cli.commands.benchmark import bench_train_config

ROOT = Path(__file__).resolve().parents[2]


def _tiny_config(tmp_path: Path, num_images: int = 24) -> Path:
    config = {
        "trainer": {"accelerator": "cpu", "max_epochs": 50, "logger": False,
                    "callbacks": [{"class_path": "lightning.pytorch.callbacks.LearningRateMonitor"}]},
        "model": {"class_path": "tests.benchmark.tiny_train.TinyTask", "init_args": {"width": 4}},
        "data": {"class_path": "tests.benchmark.tiny_train.TinyData",
                 "init_args": {"num_images": num_images, "batch_size": 2}},
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_train_command_prints_one_record(tmp_path, capsys):
    config = _tiny_config(tmp_path)
    assert cli_main(["benchmark", "train", "--config", str(config), "--steps", "4", "--warmup-steps", "1",
                     "--json", "--data.init_args.batch_size", "3"]) == 0
    record = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(record) >= {"config", "steps", "batch_size", "train_steps_per_s", "train_img_per_s",
                           "data_img_per_s", "loader_bound", "precision", "device"}
    assert record["steps"] == 4 and record["batch_size"] == 3           # the override reached the data
    assert record["train_img_per_s"] > 0 and record["data_img_per_s"] > 0
    assert record["train_img_per_s"] == pytest.approx(3 * record["train_steps_per_s"], rel=1e-3)


def test_too_short_loader_is_reported(tmp_path):
    with pytest.raises(ValueError, match="batches"):
        bench_train_config(str(_tiny_config(tmp_path, num_images=4)), steps=5, warmup_steps=2)


def test_count_images_of_batch_layouts():
    images = torch.zeros(3, 3, 8, 8)
    assert count_images(images) == 3
    assert count_images({"image": images, "mask": images}) == 3
    assert count_images((images, {"labels": 1})) == 3
    assert count_images(([torch.zeros(3, 8, 8)] * 2, [{}] * 2)) == 2     # detection: lists of images
    assert count_images([{"image": torch.zeros(3, 8, 8)}] * 5) == 5
    with pytest.raises(ValueError, match="keys"):
        count_images({"pixels": images})


@pytest.mark.slow
@pytest.mark.parametrize("name", ["demo_seg.yaml", "demo_det.yaml"])
def test_train_benchmark_runs_on_shipped_demo_configs(name, tmp_path):
    config = ROOT / "configs" / name
    if not config.exists():
        pytest.skip(f"{config} is absent")
    record = bench_train_config(str(config), steps=2, warmup_steps=1,
                                overrides=["--data.init_args.root", str(tmp_path / "data"),
                                           "--data.init_args.batch_size", "2"])
    assert record["batch_size"] == 2 and record["train_img_per_s"] > 0
