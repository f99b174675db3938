"""Import of a (synthetic) Segmenter-format release against a plain re-statement of the authors' forward."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
import yaml

import cbsa_dense
from cbsa_dense.errors import CheckpointError
from cbsa_dense.models.official import convert_segmenter_state_dict, read_variant

D, DEPTH, HEADS, PATCH, IMAGE = 32, 2, 2, 8, 32          # encoder
DEC_LAYERS, DEC_HEADS, DEC_HEAD_DIM, N_CLS = 2, 3, 10, 5  # decoder (the release: 3 heads x 100)


def synthetic_release(tmp_path, normalization="vit"):
    g = torch.Generator().manual_seed(0)

    def r(*shape, scale=0.2):
        return torch.randn(*shape, generator=g) * scale

    inner = DEC_HEADS * DEC_HEAD_DIM
    grid = IMAGE // PATCH
    sd = {"encoder.cls_token": r(1, 1, D), "encoder.pos_embed": r(1, 1 + grid * grid, D),
          "encoder.patch_embed.proj.weight": r(D, 3, PATCH, PATCH, scale=0.05), "encoder.patch_embed.proj.bias": r(D),
          "encoder.norm.weight": 1 + r(D), "encoder.norm.bias": r(D), "encoder.head.weight": r(1000, D),
          "encoder.head.bias": r(1000), "decoder.cls_emb": r(1, N_CLS, D), "decoder.decoder_norm.weight": 1 + r(D),
          "decoder.decoder_norm.bias": r(D), "decoder.mask_norm.weight": 1 + r(N_CLS), "decoder.mask_norm.bias": r(N_CLS)}
    for i in range(DEPTH):
        p = f"encoder.blocks.{i}."
        sd.update({p + "norm1.weight": 1 + r(D), p + "norm1.bias": r(D), p + "norm2.weight": 1 + r(D),
                   p + "norm2.bias": r(D), p + "attn.qkv.weight": r(3 * D, D), p + "attn.qkv.bias": r(3 * D),
                   p + "attn.proj.weight": r(D, D), p + "attn.proj.bias": r(D), p + "mlp.fc1.weight": r(4 * D, D),
                   p + "mlp.fc1.bias": r(4 * D), p + "mlp.fc2.weight": r(D, 4 * D), p + "mlp.fc2.bias": r(D)})
    for j in range(DEC_LAYERS):
        p = f"decoder.net.layers.{j}."
        sd.update({p + "norm.weight": 1 + r(D), p + "norm.bias": r(D), p + "fn.proj.weight": r(inner, D),
                   p + "fn.step_x": r(DEC_HEADS, 1, 1, scale=1.0), p + "fn.step_rep": r(DEC_HEADS, 1, 1, scale=1.0),
                   p + "fn.to_out.weight": r(D, inner), p + "fn.to_out.bias": r(D)})
    torch.save({"model": sd, "optimizer": {}, "epoch": 3}, tmp_path / "checkpoint.pth")
    # As the authors' train script writes it: yaml.dump of a dict holding real tuples (-> !!python/tuple tags).
    variant = {"algorithm_kwargs": {"batch_size": 8, "eval_freq": 4, "num_epochs": 64},
               "dataset_kwargs": {"crop_size": IMAGE, "dataset": "ade20k", "image_size": IMAGE,
                                  "normalization": normalization},
               "net_kwargs": {"backbone": "vit_tiny_patch16_384", "d_model": D, "n_heads": HEADS, "n_layers": DEPTH,
                              "patch_size": PATCH, "image_size": (IMAGE, IMAGE), "normalization": normalization,
                              "drop_path_rate": 0.1, "dropout": 0.0,
                              "decoder": {"name": "cbsa", "n_layers": DEC_LAYERS, "n_heads": DEC_HEADS,
                                          "dropout": 0.0, "drop_path_rate": 0.0}, "n_cls": N_CLS},
               "optimizer_kwargs": {"lr": 0.001, "momentum": 0.9, "poly_power": 0.9, "poly_step_size": 1},
               "inference_kwargs": {"im_size": IMAGE, "window_size": IMAGE, "window_stride": (IMAGE // 2,)}}
    (tmp_path / "variant.yml").write_text(yaml.dump(variant))
    return sd


def reference_segmenter(sd, im, mean, std):
    """The authors' forward, restated plainly: Segmenter ViT + the released CBSA mask decoder (square grids)."""
    im = (im - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    h0, w0 = im.shape[-2:]
    im = F.pad(im, (0, (-w0) % PATCH, 0, (-h0) % PATCH), value=0)
    hp, wp = im.shape[-2:]
    x = F.conv2d(im, sd["encoder.patch_embed.proj.weight"], sd["encoder.patch_embed.proj.bias"], stride=PATCH)
    x = x.flatten(2).transpose(1, 2)
    b = x.shape[0]
    x = torch.cat([sd["encoder.cls_token"].expand(b, -1, -1), x], 1)
    pos = sd["encoder.pos_embed"]
    if x.shape[1] != pos.shape[1]:          # Segmenter's resize_pos_embed
        old = int(math.sqrt(pos.shape[1] - 1))
        grid = pos[0, 1:].reshape(1, old, old, -1).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, size=(hp // PATCH, wp // PATCH), mode="bilinear")
        pos = torch.cat([pos[:, :1], grid.permute(0, 2, 3, 1).reshape(1, -1, D)], 1)
    x = x + pos

    def ln(t, name):
        return F.layer_norm(t, (t.shape[-1],), sd[name + ".weight"], sd[name + ".bias"], eps=1e-5)

    for i in range(DEPTH):
        p = f"encoder.blocks.{i}."
        y = ln(x, p + "norm1")
        qkv = (y @ sd[p + "attn.qkv.weight"].T + sd[p + "attn.qkv.bias"]).reshape(b, -1, 3, HEADS, D // HEADS)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        attn = ((q @ k.transpose(-2, -1)) * (D // HEADS) ** -0.5).softmax(-1)
        y = (attn @ v).transpose(1, 2).reshape(b, -1, D)
        x = x + y @ sd[p + "attn.proj.weight"].T + sd[p + "attn.proj.bias"]
        y = F.gelu(ln(x, p + "norm2") @ sd[p + "mlp.fc1.weight"].T + sd[p + "mlp.fc1.bias"])
        x = x + y @ sd[p + "mlp.fc2.weight"].T + sd[p + "mlp.fc2.bias"]
    x = ln(x, "encoder.norm")[:, 1:]

    x = torch.cat([x, sd["decoder.cls_emb"].expand(b, -1, -1)], 1)
    n = x.shape[1]
    for j in range(DEC_LAYERS):
        p = f"decoder.net.layers.{j}."
        w = ln(x, p + "norm") @ sd[p + "fn.proj.weight"].T                    # (b, n, heads * dim_head)
        gs = int(math.sqrt(n - N_CLS))
        patches = w[:, :-N_CLS].reshape(b, gs, gs, -1).permute(0, 3, 1, 2)
        reps0 = F.adaptive_avg_pool2d(patches, (10, 10)).flatten(2).transpose(1, 2)   # (b, 100, D')
        wh = w.reshape(b, n, DEC_HEADS, DEC_HEAD_DIM).transpose(1, 2)
        rh = reps0.reshape(b, 100, DEC_HEADS, DEC_HEAD_DIM).transpose(1, 2)
        s = DEC_HEAD_DIM ** -0.5
        a = (rh @ wh.transpose(-2, -1) * s).softmax(-1)                       # (b, h, m, n)
        reps = rh + sd[p + "fn.step_rep"] * (a @ wh)
        c = (reps @ reps.transpose(-2, -1) * s).softmax(-1) @ reps
        out = sd[p + "fn.step_x"] * (a.transpose(-2, -1) @ c)                 # (b, h, n, dim_head)
        out = out.transpose(1, 2).reshape(b, n, -1)
        x = x + out @ sd[p + "fn.to_out.weight"].T + sd[p + "fn.to_out.bias"]
    x = ln(x, "decoder.decoder_norm")
    patches, classes = x[:, :-N_CLS], x[:, -N_CLS:]
    patches = patches / patches.norm(dim=-1, keepdim=True)
    classes = classes / classes.norm(dim=-1, keepdim=True)
    masks = ln(patches @ classes.transpose(1, 2), "decoder.mask_norm")
    masks = masks.transpose(1, 2).reshape(b, N_CLS, hp // PATCH, wp // PATCH)
    masks = F.interpolate(masks, size=(hp, wp), mode="bilinear")
    return masks[..., :h0, :w0]


@pytest.mark.parametrize("size", [32, 40, 37])   # training size; resized position embedding; padding
def test_outputs_equal_the_authors_forward(tmp_path, size):
    sd = synthetic_release(tmp_path)
    assert "image_size: !!python/tuple" in (tmp_path / "variant.yml").read_text()    # what releases hold
    model = cbsa_dense.load_official_checkpoint(tmp_path / "checkpoint.pth")
    images = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = model(images)
        ref = reference_segmenter(sd, images, (0.5,) * 3, (0.5,) * 3)
    assert ours.shape == (2, N_CLS, size, size)
    torch.testing.assert_close(ours, ref, atol=2e-5, rtol=1e-4)


def test_any_size_imagenet_normalization_and_errors(tmp_path):
    sd = synthetic_release(tmp_path, normalization="deit")
    model = cbsa_dense.load_official_checkpoint(tmp_path / "checkpoint.pth")
    assert torch.allclose(model.mean.flatten(), torch.tensor([0.485, 0.456, 0.406]))
    assert model(torch.rand(1, 3, 29, 51)).shape == (1, N_CLS, 29, 51)       # non-square works in our model
    with pytest.raises(CheckpointError, match="unknown key 'decoder.extra'"):
        convert_segmenter_state_dict({**sd, "decoder.extra": torch.zeros(1)})
    (tmp_path / "variant.yml").unlink()
    with pytest.raises(CheckpointError, match="variant.yml not found"):
        cbsa_dense.load_official_checkpoint(tmp_path / "checkpoint.pth")
    with pytest.raises(FileNotFoundError, match="nowhere.pth does not exist"):
        cbsa_dense.load_official_checkpoint(tmp_path / "nowhere.pth")


def test_variant_yml_reads_tuples_and_refuses_other_python_tags(tmp_path):
    path = tmp_path / "variant.yml"
    path.write_text(yaml.dump({"net_kwargs": {"d_model": 8, "n_heads": 2, "patch_size": 16, "n_cls": 3,
                                              "image_size": (512, 512)}}))
    assert read_variant(path)["image_size"] == (512, 512)
    path.write_text("net_kwargs: !!python/object/apply:os.system [echo hi]\n")
    with pytest.raises(CheckpointError, match=r"cannot read .*variant\.yml at line 1: could not determine a "
                                              r"constructor for the tag 'tag:yaml.org,2002:python/object/apply:os"):
        read_variant(path)
    path.write_text(yaml.dump({"net_kwargs": {"d_model": 8, "n_cls": 3}}))
    with pytest.raises(CheckpointError, match=r"variant\.yml: net_kwargs lacks \['n_heads', 'patch_size'\]"):
        read_variant(path)


def test_task_starts_from_official_weights(tmp_path):
    from cbsa_dense.models.official import variant_parts
    from cbsa_dense.tasks.segmentation import SegmentationTask

    sd = synthetic_release(tmp_path)
    variant = read_variant(tmp_path / "variant.yml")
    task = SegmentationTask(*variant_parts(variant, sd), weights=str(tmp_path / "checkpoint.pth"))
    report = task.load_weights(task.weights)
    assert not report.missing and not report.mismatched
    loaded = task.model.state_dict()
    assert torch.equal(loaded["head.layers.1.attn.qkv.weight"], sd["decoder.net.layers.1.fn.proj.weight"])
    assert torch.equal(loaded["encoder.blocks.0.mlp.fc1.weight"], sd["encoder.blocks.0.mlp.fc1.weight"])
