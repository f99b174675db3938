"""SegmentationTask pieces that need no Trainer: loss with ignored pixels, default and injected optimizers."""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F

from cbsa_dense.layers import CBSAAttention
from cbsa_dense.models.encoders import ViTEncoder
from cbsa_dense.models.heads.cbt_decoder import CBTDecoder
from cbsa_dense.tasks.segmentation import SegmentationTask


def tiny_task(**kwargs) -> SegmentationTask:
    attn = partial(CBSAAttention, grid=(2, 2))
    encoder = ViTEncoder(img_size=16, patch_size=8, embed_dim=16, depth=2, num_heads=2, attn_layer=attn)
    return SegmentationTask(encoder, partial(CBTDecoder, n_layers=1, num_heads=2, attn_layer=attn), 3, **kwargs)


def test_loss_ignores_255_pixels():
    task = tiny_task()
    images = torch.randn(2, 3, 16, 24)
    masks = torch.full((2, 16, 24), 255)
    masks[0, 3, 4] = 2
    task.log = lambda *a, **k: None
    loss = task.training_step({"image": images, "mask": masks}, 0)
    logits = task.model(images)
    torch.testing.assert_close(loss, F.cross_entropy(logits[0, :, 3, 4][None], torch.tensor([2])))


def test_default_optimizer_is_the_papers_sgd_with_poly_decay():
    out = tiny_task().configure_optimizers()
    optimizer, scheduler = out["optimizer"], out["lr_scheduler"]["scheduler"]
    assert isinstance(optimizer, torch.optim.SGD)
    assert {g["lr"] for g in optimizer.param_groups} == {1e-3}
    assert all(g["momentum"] == 0.9 and g["nesterov"] and g["weight_decay"] == 0.0 for g in optimizer.param_groups)
    assert out["lr_scheduler"]["interval"] == "step" and scheduler.power == 0.9


def test_adamw_with_layer_decay_and_no_decay_groups():
    task = tiny_task(optimizer=lambda params: torch.optim.AdamW(params, lr=1e-3, weight_decay=0.05), layer_decay=0.5)
    optimizer = task.configure_optimizers()["optimizer"]
    names = dict(task.named_parameters())
    by_param = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    assert by_param[id(names["model.head.cls_emb"])]["lr"] == 1e-3                       # head: no decay of lr
    assert by_param[id(names["model.encoder.blocks.1.attn.qkv.weight"])]["lr"] == 5e-4
    assert by_param[id(names["model.encoder.blocks.0.attn.qkv.weight"])]["lr"] == 2.5e-4
    assert by_param[id(names["model.encoder.pos_embed"])]["weight_decay"] == 0.0
    assert by_param[id(names["model.head.layers.0.attn.step_x"])]["weight_decay"] == 0.0
    assert by_param[id(names["model.encoder.blocks.0.mlp.fc1.weight"])]["weight_decay"] == 0.05


def test_class_weight_weighs_the_loss_per_class_and_is_checked():
    """``class_weight: [0, 1, 0]`` makes the loss the mean over class-1 pixels only; a list of the wrong length is
    one line naming it and the class count."""
    import pytest

    from cbsa_dense.errors import ConfigError

    images, masks = torch.randn(2, 3, 16, 24), torch.randint(0, 3, (2, 16, 24))
    weighted, plain = tiny_task(class_weight=[0, 1, 0]), tiny_task()
    plain.load_state_dict(weighted.state_dict())
    weighted.log = plain.log = lambda *a, **k: None
    logits = F.interpolate(plain.model(images), size=masks.shape[-2:], mode="bilinear", align_corners=False)
    ones = masks == 1
    expected = F.cross_entropy(logits.permute(0, 2, 3, 1)[ones], masks[ones])
    loss = weighted.training_step({"image": images, "mask": masks}, 0)
    assert torch.allclose(loss, expected, atol=1e-6)
    assert not torch.allclose(plain.training_step({"image": images, "mask": masks}, 0), expected, atol=1e-4)
    assert "class_weight" not in weighted.state_dict()                    # a setting, not a tensor to load
    with pytest.raises(ConfigError, match=r"model class_weight=\[1, 5\] is invalid: give 3 non-negative numbers"):
        tiny_task(class_weight=[1, 5])
