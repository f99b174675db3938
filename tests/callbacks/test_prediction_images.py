from PIL import Image


def test_validation_predictions_are_drawn(seg_run):
    pictures = sorted((seg_run / "runs").rglob("val_predictions/*.png"))
    assert [p.name for p in pictures] == ["epoch000_0.png", "epoch000_1.png"]
    image = Image.open(pictures[0])
    assert image.mode == "RGB" and min(image.size) >= 32
