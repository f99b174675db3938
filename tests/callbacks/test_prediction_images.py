from PIL import Image


def test_validation_predictions_are_drawn(seg_run):
    """The demo's 96 x 128 validation images: ground truth beside prediction, enlarged 4x (panels 512 px
    long), the gap between the panels and the legend strip below them."""
    import numpy as np

    from cbsa_dense.interpret.det_overlay import PANEL_GAP, TITLE_BACKGROUND

    pictures = sorted((seg_run / "runs").rglob("val_predictions/*.png"))
    assert [p.name for p in pictures] == ["epoch000_0.png", "epoch000_1.png"]
    image = Image.open(pictures[0])
    assert image.mode == "RGB"
    picture = np.asarray(image)
    assert picture.shape[1] == 2 * 128 * 4 + PANEL_GAP, "two panels of the 128 px wide photo, 4x"
    assert picture.shape[0] > 96 * 4, "titles above and a legend below the 384 px tall panels"
    gap = picture[:, 512:512 + PANEL_GAP]
    assert (gap == TITLE_BACKGROUND).all()


def test_pictures_and_metrics_reach_tensorboard(seg_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(next((seg_run / "runs").rglob("events.out.tfevents.*")).parent)).Reload()
    assert {"val_predictions/0", "val_predictions/1"} <= set(events.Tags()["images"])
    assert any(tag.startswith("explain/") for tag in events.Tags()["images"])
    assert "val_miou" in events.Tags()["scalars"]
