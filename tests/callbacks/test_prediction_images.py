from PIL import Image


def test_validation_predictions_are_drawn(seg_run):
    pictures = sorted((seg_run / "runs").rglob("val_predictions/*.png"))
    assert [p.name for p in pictures] == ["epoch000_0.png", "epoch000_1.png"]
    image = Image.open(pictures[0])
    assert image.mode == "RGB" and min(image.size) >= 32


def test_pictures_and_metrics_reach_tensorboard(seg_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(next((seg_run / "runs").rglob("events.out.tfevents.*")).parent)).Reload()
    assert {"val_predictions/0", "val_predictions/1"} <= set(events.Tags()["images"])
    assert any(tag.startswith("explain/") for tag in events.Tags()["images"])
    assert "val_miou" in events.Tags()["scalars"]
