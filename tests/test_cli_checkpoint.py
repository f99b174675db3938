"""Evaluating a checkpoint needs the data config only: the task is rebuilt from the checkpoint."""

import json

import pytest

from cbsa_dense.cli import main
from cbsa_dense.cli.stored_run import prepare_args
from tests.conftest import ROOT


def test_the_stored_task_config_is_replayed_once_as_defaults(seg_ckpt):
    """The checkpoint is read once; its task config becomes the first --model (the configs and the command line
    that follow override it) and --ckpt_path goes to the CLI with the read checkpoint, not as an argument."""
    args, stored = prepare_args(["test", "--config", "demo_seg.yaml", "--ckpt_path", str(seg_ckpt), "--data", "X"])
    model = json.loads(args[2])
    assert args[:2] == ["test", "--model"] and args[3:] == ["--config", "demo_seg.yaml", "--data", "X"]
    assert stored.path == str(seg_ckpt) and "state_dict" in stored.checkpoint
    assert model["class_path"].endswith(".SegmentationTask")
    assert model["init_args"]["head"]["class_path"].endswith(".CBTDecoder")
    assert model["init_args"]["evaluation"]["window"] == [96, 96]     # evaluation: a stored argument
    assert model["init_args"]["evaluation"]["scale"] is None
    assert "num_classes" not in model["init_args"]          # set by the data (linked), not replayed
    assert prepare_args(["fit", "--ckpt_path", "last"]) == (["fit", "--ckpt_path", "last"], None)   # Lightning's


def test_precedence_command_line_over_config_over_checkpoint(seg_run, seg_ckpt, tmp_path, capsys):
    """A config that sets only the evaluation (no encoder, no head) builds on the checkpoint's task config, and
    the command line overrides both."""
    config = tmp_path / "eval.yaml"
    config.write_text("model:\n  class_path: SegmentationTask\n  init_args:\n"
                      "    evaluation: {flip: true, window: [64, 64], stride: [32, 32]}\n")
    capsys.readouterr()
    assert main(["test", "--ckpt_path", str(seg_ckpt), "--config", str(config), "--data", "DemoSegDataModule",
                 "--data.root", str(seg_run / "data"), "--data.num_train", "4", "--data.num_val", "2",
                 "--model.init_args.evaluation.window", "[96, 96]", "--trainer.logger", "false",
                 "--trainer.enable_progress_bar", "false", "--trainer.default_root_dir", str(tmp_path)]) == 0
    err = capsys.readouterr().err
    # window: command line; stride, flip: config; scale (the original size): checkpoint
    assert (f"evaluation protocol (stored in {seg_ckpt} unless set by a config or the command line): original "
            "size; sliding window 96x96, stride 32x32, scales [1.0], with flip" in err), err


def test_a_checkpoint_of_the_first_release_is_replayed_in_the_one_assembly_layout(tmp_path):
    """0.1 stored a segmentation task as ``model: Segmentor(encoder, head(in_channels, num_classes))``."""
    import torch

    old = {"_class_path": "cbsa_dense.tasks.segmentation.SegmentationTask",
           "model": {"class_path": "cbsa_dense.models.segmentor.Segmentor", "init_args": {
               "encoder": {"class_path": "cbsa_dense.models.encoders.ViTEncoder", "init_args": {"depth": 1}},
               "head": {"class_path": "cbsa_dense.models.heads.cbt_decoder.CBTDecoder",
                        "init_args": {"in_channels": 384, "num_classes": 150, "n_layers": 3}}}},
           "weight_decay": None}
    torch.save({"state_dict": {}, "hyper_parameters": old}, tmp_path / "old.ckpt")
    args, _ = prepare_args(["test", "--ckpt_path", str(tmp_path / "old.ckpt"), "--data", "X"])
    init = json.loads(args[2])["init_args"]
    assert init["encoder"]["init_args"] == {"depth": 1} and "model" not in init and "num_classes" not in init
    assert init["head"] == {"class_path": "cbsa_dense.models.heads.cbt_decoder.CBTDecoder",
                            "init_args": {"n_layers": 3}}
    from cbsa_dense.tasks.checkpoint_format import stored_num_classes

    assert stored_num_classes({"hyper_parameters": old}) == 150


def test_test_with_only_the_data_config(seg_run, seg_ckpt, tmp_path, monkeypatch):
    """... and the command reads the checkpoint file once (the replay, the checks and Lightning's restore)."""
    import torch

    reads = []
    load = torch.load

    def counting_load(f, *args, **kwargs):
        reads.append(str(f))
        return load(f, *args, **kwargs)

    monkeypatch.setattr(torch, "load", counting_load)
    main(["test", "--ckpt_path", str(seg_ckpt), "--data", "cbsa_dense.data.demo_seg.DemoSegDataModule",
          "--data.root", str(seg_run / "data"), "--data.num_train", "4", "--data.num_val", "2",
          "--trainer.logger", "false", "--trainer.enable_progress_bar", "false",
          "--trainer.default_root_dir", str(tmp_path)])
    assert reads.count(str(seg_ckpt)) == 1, reads
    report = json.loads((tmp_path / "test_per_class_iou.json").read_text())
    assert 0.0 <= report["mIoU"] <= 1.0 and len(report["per_class"]) == 6


def _best_val_miou(ckpt) -> float:
    import torch

    states = torch.load(ckpt, map_location="cpu", weights_only=False)["callbacks"]
    return float(next(v["best_model_score"] for v in states.values() if v.get("monitor") == "val_miou"))


def test_evaluation_protocol_travels_with_the_checkpoint(seg_run, seg_ckpt, tmp_path, capsys):
    """The demo validates with a 96x96 sliding window (stride 64) on 96x128 images; ``test --ckpt_path``
    with only the data config must use that protocol, reproduce the validation mIoU and say so."""
    data = ["--data.root", str(seg_run / "data"), "--data.num_train", "4", "--data.num_val", "2"]
    common = ["--trainer.logger", "false", "--trainer.enable_progress_bar", "false"]
    main(["test", "--ckpt_path", str(seg_ckpt), "--data", "cbsa_dense.data.demo_seg.DemoSegDataModule", *data,
          *common, "--trainer.default_root_dir", str(tmp_path / "bare")])
    stored = (f"evaluation protocol (stored in {seg_ckpt} unless set by a config or the command line): ")
    err = capsys.readouterr().err
    assert stored + "original size; sliding window 96x96, stride 64x64, scales [1.0], no flip" in err, err
    bare = json.loads((tmp_path / "bare" / "test_per_class_iou.json").read_text())["mIoU"]
    assert bare == pytest.approx(_best_val_miou(seg_ckpt), abs=1e-6)

    main(["test", "--config", str(ROOT / "configs" / "demo_seg.yaml"), "--ckpt_path", str(seg_ckpt),   # training config
          *[a.replace("--data.", "--data.init_args.") for a in data], *common,
          "--trainer.default_root_dir", str(tmp_path / "config")])
    assert stored + "original size; sliding window 96x96, stride 64x64, scales [1.0], no flip" in (
        capsys.readouterr().err)
    configured = json.loads((tmp_path / "config" / "test_per_class_iou.json").read_text())["mIoU"]
    assert configured == pytest.approx(bare, abs=1e-6)

    main(["test", "--ckpt_path", str(seg_ckpt), "--data", "cbsa_dense.data.demo_seg.DemoSegDataModule", *data,  # override
          *common, "--model.init_args.evaluation.flip", "true",
          "--trainer.default_root_dir", str(tmp_path / "flip")])
    # the command line sets flip; the window (and the original size) it leaves unset stay the checkpoint's
    assert stored + "original size; sliding window 96x96, stride 64x64, scales [1.0], with flip" in (
        capsys.readouterr().err)


def test_other_class_count_in_the_data_is_named(seg_run, seg_ckpt, tmp_path, capsys):
    from tests.conftest import cli_user_error

    images, masks = seg_run / "data" / "images" / "validation", seg_run / "data" / "annotations" / "validation"
    line = cli_user_error(["test", "--ckpt_path", str(seg_ckpt), "--data", "cbsa_dense.data.seg_folder.SegFolderDataModule",
              "--data.train_images", str(images), "--data.train_masks", str(masks),
              "--data.val_images", str(images), "--data.val_masks", str(masks), "--data.validate_labels", "false",
              "--data.class_names", "[a, b, c]", "--trainer.logger", "false",
              "--trainer.default_root_dir", str(tmp_path)], capsys)
    assert f"checkpoint {seg_ckpt} was trained for 6 classes but the model is built for 3" in line, line


def test_load_task_reads_a_first_release_checkpoint(seg_ckpt, tmp_path):
    """The same weights under 0.1's hyper-parameter layout (model: Segmentor(encoder, head(in_channels,
    num_classes))) load into an equal task."""
    import torch

    from cbsa_dense.tasks.loading import load_task

    checkpoint = torch.load(seg_ckpt, map_location="cpu", weights_only=False)
    new = checkpoint["hyper_parameters"]
    head = {"class_path": "cbsa_dense.models.heads.cbt_decoder.CBTDecoder",
            "init_args": {**new["head"]["init_args"], "in_channels": 128, "num_classes": new["num_classes"]}}
    checkpoint["hyper_parameters"] = {
        "_class_path": "cbsa_dense.tasks.segmentation.SegmentationTask",
        "model": {"class_path": "cbsa_dense.models.segmentor.Segmentor",
                  "init_args": {"encoder": new["encoder"], "head": head}},
        **{k: v for k, v in new.items() if k not in ("_class_path", "encoder", "head", "num_classes")}}
    torch.save(checkpoint, tmp_path / "old.ckpt")
    old, current = load_task(tmp_path / "old.ckpt"), load_task(seg_ckpt)
    images = torch.randn(1, 3, 64, 80)
    with torch.no_grad():
        torch.testing.assert_close(old(images), current(images), rtol=0, atol=0)
    assert old.num_classes == 6 and old.data_info["class_names"] == current.data_info["class_names"]


def test_ckpt_path_null_means_no_checkpoint():
    for value in ("null", "~", "Null"):
        assert prepare_args(["fit", "--ckpt_path", value]) == (["fit", "--ckpt_path", value], None)
    assert prepare_args(["fit", "--ckpt_path=null"]) == (["fit", "--ckpt_path=null"], None)


def test_resuming_from_a_weights_only_checkpoint_is_one_line(seg_ckpt, tmp_path, capsys):
    import torch

    from tests.conftest import cli_user_error

    checkpoint = torch.load(seg_ckpt, map_location="cpu", weights_only=False)
    assert "optimizer_states" in checkpoint
    for key in ("optimizer_states", "lr_schedulers", "loops", "callbacks"):
        checkpoint.pop(key, None)
    torch.save(checkpoint, tmp_path / "weights_only.ckpt")
    line = cli_user_error(["fit", "--config", "demo_seg.yaml", "--ckpt_path", str(tmp_path / "weights_only.ckpt")],
                          capsys)
    assert "weights_only.ckpt holds weights only" in line and "--model.init_args.weights" in line, line
