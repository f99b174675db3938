import json

from PIL import Image

from cbsa_dense.cli import main


def test_callback_wrote_validation_pictures(seg_run):
    pictures = sorted((seg_run / "runs").rglob("explain/epoch000/*.png"))
    assert [p.name for p in pictures] == ["val0_layer-1_head0.png", "val0_layer0_head0.png",
                                          "val1_layer-1_head0.png", "val1_layer0_head0.png"]


def test_explain_command_writes_pictures_and_zero_shot_score(seg_run, seg_ckpt, tmp_path, capsys):
    images = seg_run / "data" / "images" / "validation"
    code = main(["explain", "--ckpt_path", str(seg_ckpt), "--images", str(images), "--output",
                 str(tmp_path / "out"), "--layers", "0", "-1", "--heads", "0", "1", "--pixel", "5", "7",
                 "--zero-shot-masks", str(seg_run / "data" / "annotations" / "validation")])
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert len(result["written"]) == 2 * 2 * 2                          # images x layers x heads
    for path in result["written"]:
        assert Image.open(path).size[0] > 200
    assert result["cbsa_layers"][0] == "encoder.blocks.0.attn"
    assert 0.0 <= result["zero_shot"]["mIoU"] <= 1.0
    assert result["zero_shot"]["layer"] == result["cbsa_layers"][-1]


def test_zero_shot_uses_the_requested_layer(seg_run, seg_ckpt, tmp_path, capsys):
    """Records arrive in forward order; the command must still pick the layer asked for."""
    data = seg_run / "data"
    main(["explain", "--ckpt_path", str(seg_ckpt), "--images", str(data / "images" / "validation"), "--output",
          str(tmp_path), "--layers", "-1", "--zero-shot-layer", "0",
          "--zero-shot-masks", str(data / "annotations" / "validation")])
    result = json.loads(capsys.readouterr().out)
    assert result["zero_shot"]["layer"] == "encoder.blocks.0.attn"


def test_explain_rejects_bad_head_and_missing_images(seg_run, seg_ckpt, tmp_path, capsys):
    image = next((seg_run / "data" / "images" / "validation").iterdir())
    assert main(["explain", "--ckpt_path", str(seg_ckpt), "--images", str(image), "--output",
                 str(tmp_path), "--heads", "9"]) == 2
    assert "--heads 9 is out of range" in capsys.readouterr().err
    assert main(["explain", "--ckpt_path", str(seg_ckpt), "--images", str(tmp_path / "nowhere"),
                 "--output", str(tmp_path)]) == 2
    assert "nowhere does not exist" in capsys.readouterr().err


def test_explain_a_detection_checkpoint(det_ckpt, tmp_path, capsys):
    images = next(det_ckpt.parents[4].rglob("val"))              # the demo's generated validation images
    assert main(["explain", "--ckpt_path", str(det_ckpt), "--images", str(images), "--max-images", "1",
                 "--output", str(tmp_path), "--heads", "1"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["cbsa_layers"] == [f"encoder.blocks.{i}.attn" for i in range(4)]
    assert len(result["written"]) == 1 and Image.open(result["written"][0]).size[0] > 200
