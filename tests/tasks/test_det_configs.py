"""Every shipped detection config parses, and a tiny twin of each runs through the real CLI."""

from __future__ import annotations

from pathlib import Path

import pytest

from cbsa_dense.cli import main
from cbsa_dense.data.demo_det import generate_demo_coco

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
TINY_ENCODER = ["--model.init_args.encoder.init_args.img_size", "64", "--model.init_args.encoder.init_args.embed_dim",
                "32", "--model.init_args.encoder.init_args.depth", "1", "--model.init_args.encoder.init_args.num_heads",
                "2", "--model.init_args.encoder.init_args.drop_path_rate", "0.0"]


@pytest.fixture(scope="module")
def coco_root(tmp_path_factory):
    return generate_demo_coco(tmp_path_factory.mktemp("coco"), num_train=3, num_val=2, size_range=(40, 48))


MASK_RCNN = ["--model.init_args.head", "cbsa_dense.models.heads.det_mask_rcnn.MaskRCNNHead",
             "--data.init_args.with_masks", "true"]


@pytest.mark.parametrize("name, extra", [("det_coco.yaml", []), ("det_coco.yaml", MASK_RCNN), ("det_custom.yaml", []),
                                         ("demo_det.yaml", [])])
def test_config_parses(name, extra, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(CONFIGS / name), *extra, "--print_config"])
    assert exit_info.value.code in (0, None)
    printed = capsys.readouterr().out
    assert "cbsa_dense.tasks.DetectionTask" in printed and "SimpleFeaturePyramid" in printed
    if extra:
        assert "MaskRCNNHead" in printed and "num_convs" not in printed


def _run_dirs(tmp_path):
    return ["--trainer.default_root_dir", str(tmp_path), "--trainer.logger.init_args.save_dir", str(tmp_path),
            "--trainer.fast_dev_run", "1", "--trainer.precision", "32-true", "--trainer.accelerator", "cpu",
            "--trainer.devices", "1", "--model.init_args.results_dir", str(tmp_path)]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["det_coco.yaml", "det_custom.yaml"])
def test_tiny_twin_of_coco_and_custom_configs_fits(name, tmp_path, coco_root):
    data = ["--data.init_args.root", str(coco_root), "--data.init_args.train_json", "annotations/instances_train.json",
            "--data.init_args.train_images", "train", "--data.init_args.val_json", "annotations/instances_val.json",
            "--data.init_args.val_images", "val", "--data.init_args.image_size", "64",
            "--data.init_args.batch_size", "2", "--data.init_args.num_workers", "0",
            "--model.init_args.neck.init_args.out_channels", "32",
            "--model.init_args.head.init_args.num_convs", "1"]
    assert main(["fit", "--config", str(CONFIGS / name), *TINY_ENCODER, *data, *_run_dirs(tmp_path)]) == 0


@pytest.mark.slow
def test_tiny_twin_of_demo_config_fits(tmp_path):
    data = ["--data.init_args.root", str(tmp_path / "demo"), "--data.init_args.num_train", "3",
            "--data.init_args.num_val", "2", "--data.init_args.size_range", "[40, 48]",
            "--data.init_args.image_size", "64", "--data.init_args.batch_size", "2",
            "--data.init_args.num_workers", "0"]
    assert main(["fit", "--config", str(CONFIGS / "demo_det.yaml"), *TINY_ENCODER, *data, *_run_dirs(tmp_path)]) == 0
    assert (tmp_path / "demo" / "annotations" / "instances_train.json").is_file()


@pytest.mark.slow
def test_det_coco_model_runs_global_attention_at_1024(tmp_path):
    """The shipped COCO model (CBSA ViT-S, FCOS) predicts on a 1024x1024 input without windowing."""
    import json

    import torch

    from cbsa_dense.cli import CBSADenseCLI

    # the class count comes from the data's categories: a json with COCO's 80 (ids 1..90 with gaps)
    ids = [i for i in range(1, 91) if i not in (12, 26, 29, 30, 45, 66, 68, 69, 71, 83)]
    (tmp_path / "ann.json").write_text(json.dumps({"images": [], "annotations": [],
                                                  "categories": [{"id": i, "name": str(i)} for i in ids]}))
    data = [f"--data.init_args.{key}" for key in ("root", "train_json", "val_json")]
    cli = CBSADenseCLI(args=["--config", str(CONFIGS / "det_coco.yaml"), data[0], str(tmp_path), data[1], "ann.json",
                             data[2], "ann.json", "--trainer.logger", "false",
                             "--trainer.precision", "32-true", "--trainer.accelerator", "cpu",
                             "--trainer.default_root_dir", str(tmp_path)], run=False)
    detector = cli.model.model.eval()
    assert detector.encoder.patch_size == 16 and len(detector.encoder.blocks) == 12 and detector.num_classes == 80
    with torch.no_grad():
        tokens, grid = detector.encoder.forward_tokens(torch.randn(1, 3, 1024, 1024))
        detections = detector(torch.randn(1, 3, 1024, 1024), [(1024, 1024)])
    assert grid == (64, 64) and tokens[-1].shape[1] == 1 + 64 * 64  # CLS + every patch in one sequence
    assert detections[0]["boxes"].shape[1] == 4


PATCH14 = ["--model.init_args.encoder.init_args.arch", "vit_small_patch14_dinov2", *TINY_ENCODER,
           "--model.init_args.encoder.init_args.img_size", "56", "--model.init_args.neck.init_args.out_channels", "32",
           "--model.init_args.head.init_args.num_convs", "1", "--trainer.logger", "false"]


def _coco_data(root) -> list[str]:
    return ["--data.init_args.root", str(root), "--data.init_args.train_json", "annotations/instances_train.json",
            "--data.init_args.train_images", "train", "--data.init_args.val_json", "annotations/instances_val.json",
            "--data.init_args.val_images", "val"]


def test_patch14_arch_gets_a_pyramid_at_strides_7_to_56_out_of_the_box(tmp_path, coco_root):
    """det_custom.yaml with a DINOv2 arch name: the neck's levels follow the patch size and FCOS trains."""
    import torch

    from cbsa_dense.cli import CBSADenseCLI
    from cbsa_dense.cli.config_files import compose_config_args

    cli = CBSADenseCLI(args=compose_config_args(["--config", str(CONFIGS / "det_custom.yaml"), *PATCH14,
                                                 *_coco_data(coco_root), "--trainer.default_root_dir",
                                                 str(tmp_path)]), run=False)
    detector = cli.model.model
    assert detector.encoder.patch_size == 14 and detector.neck.strides == [7, 14, 28, 56]
    targets = [{"boxes": torch.tensor([[4.0, 6.0, 40.0, 50.0]]), "labels": torch.tensor([1])}]
    losses = detector(torch.randn(1, 3, 64, 64), [(64, 64)], targets)
    assert all(torch.isfinite(v) for v in losses.values())


def test_strides_that_do_not_fit_the_patch_size_are_one_line_errors(capsys, tmp_path, coco_root):
    code = main(["fit", "--config", str(CONFIGS / "det_custom.yaml"), *PATCH14, *_coco_data(coco_root),
                 "--trainer.default_root_dir",
                 str(tmp_path), "--model.init_args.neck.init_args.strides", "[8, 16, 32, 64]"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "strides=[8, 16, 32, 64]" in err and "encoder stride 14" in err and "scales" in err
