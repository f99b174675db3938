import pytest
import torch
from timm.models.vision_transformer import VisionTransformer

from cbsa_dense.layers import CBSAAttention
from cbsa_dense.models.encoders import CBTEncoder, ViTEncoder
from cbsa_dense.models.heads.linear_head import LinearHead
from cbsa_dense.models.segmentor import Segmentor
from cbsa_dense.models.weights import load_model_weights, model_state_dict_from


def _segmentor(num_classes=4, encoder=None):
    encoder = encoder or ViTEncoder(img_size=32, embed_dim=32, depth=2, num_heads=2,
                                    attn_layer=lambda d, h: CBSAAttention(d, h, variant="qkv", grid=(2, 2)))
    return Segmentor(encoder, LinearHead, num_classes)


def test_own_lightning_checkpoint_with_other_class_count(tmp_path):
    source, target = _segmentor(4), _segmentor(7)
    torch.save({"state_dict": {f"model.{k}": v for k, v in source.state_dict().items()}, "epoch": 3},
               tmp_path / "run.ckpt")
    report = load_model_weights(target, tmp_path / "run.ckpt")
    assert report.mismatched and all(k.startswith("head.") for k, _, _ in report.mismatched)
    assert not report.unexpected
    torch.testing.assert_close(target.encoder.blocks[1].attn.qkv.weight, source.encoder.blocks[1].attn.qkv.weight)


def test_timm_vit_weights_go_to_the_encoder(tmp_path):
    timm_vit = VisionTransformer(img_size=32, patch_size=16, embed_dim=32, depth=2, num_heads=2, num_classes=5)
    torch.save(timm_vit.state_dict(), tmp_path / "vit.pth")
    target = _segmentor()
    report = load_model_weights(target, tmp_path / "vit.pth")
    assert not report.unexpected and not report.mismatched
    assert set(report.missing) == {"encoder.blocks.0.attn.step_x", "encoder.blocks.0.attn.step_rep",
                                   "encoder.blocks.1.attn.step_x", "encoder.blocks.1.attn.step_rep",
                                   *[k for k in target.state_dict() if k.startswith("head.")]}
    torch.testing.assert_close(target.encoder.blocks[0].attn.qkv.weight, timm_vit.blocks[0].attn.qkv.weight)


def test_released_cbt_checkpoint_goes_to_the_encoder():
    cbt = CBTEncoder(embed_dim=32, depth=1, num_heads=2, head_dim=16)
    released = {"module.transformer.layers.0.1.fn.weight": cbt.blocks[0].ista.weight.detach().clone(),
                "module.pos_embedding": cbt.pos_embed.detach().clone()}
    mapped = model_state_dict_from(released, _segmentor(encoder=cbt))
    assert set(mapped) == {"encoder.blocks.0.ista.weight", "encoder.pos_embed"}


# ------------------------------------------------------------------------------- the loading policy
# timm's own model (random init: the outside format, not this project's modules) saved as a weights file.
def _timm_vit_small(tmp_path, img_size=64):
    import timm

    torch.manual_seed(3)
    vit = timm.create_model("vit_small_patch16_224", pretrained=False, img_size=img_size).eval()
    path = tmp_path / "vit_small_patch16_224.pth"
    torch.save(vit.state_dict(), path)
    return vit, path


def _vit_small(variant=None, **kwargs):
    attn = None if variant is None else (lambda d, h: CBSAAttention(d, h, variant=variant, grid=(2, 2)))
    return ViTEncoder(img_size=64, patch_size=16, embed_dim=384, depth=12, num_heads=6, attn_layer=attn, **kwargs)


SHARED_VS_TIMM = (r"vit_small_patch16_224\.pth does not fit the ViTEncoder: 12 shape-mismatched tensors "
                  r"\(blocks\.0\.attn\.qkv\.weight file \(1152, 384\) vs model \(384, 384\), "
                  r"blocks\.1\.attn\.qkv\.weight .*\), 12 unexpected tensors \(blocks\.0\.attn\.qkv\.bias \(1152,\), .*"
                  r"set variant: qkv on CBSAAttention")


def test_timm_weights_into_shared_cbsa_are_an_error(tmp_path):
    from cbsa_dense.errors import CheckpointError

    _, path = _timm_vit_small(tmp_path)
    with pytest.raises(CheckpointError, match=SHARED_VS_TIMM + r".*set pretrained_strict: false on the encoder"):
        _vit_small("shared", pretrained=str(path))
    target = _segmentor(encoder=_vit_small("shared"))            # the task's `weights` path: same policy
    with pytest.raises(CheckpointError, match=r"does not fit the Segmentor encoder: 12 shape-mismatched tensors "
                                              r"\(encoder\.blocks\.0\.attn\.qkv\.weight file \(1152, 384\) vs model "
                                              r"\(384, 384\).*--model\.init_args\.weights_strict false"):
        load_model_weights(target, path, opt_out="--model.init_args.weights_strict false")


def test_opt_out_downgrades_to_a_warning(tmp_path, caplog):
    vit, path = _timm_vit_small(tmp_path)
    with caplog.at_level("WARNING"):
        encoder = _vit_small("shared", pretrained=str(path), pretrained_strict=False)
    assert "shape-mismatched keys (12, left at init)" in caplog.text
    torch.testing.assert_close(encoder.blocks[3].mlp.fc1.weight, vit.blocks[3].mlp.fc1.weight)   # the rest loaded


def test_timm_weights_into_qkv_cbsa_and_softmax_load_completely(tmp_path):
    vit, path = _timm_vit_small(tmp_path)
    encoder = _vit_small("qkv")
    report = encoder.load_pretrained(str(path))
    assert not report.unexpected and not report.mismatched
    assert sorted(report.missing) == sorted(f"blocks.{i}.attn.{s}" for i in range(12) for s in ("step_x", "step_rep"))
    torch.testing.assert_close(encoder.blocks[11].attn.qkv.weight, vit.blocks[11].attn.qkv.weight)
    softmax = _vit_small(None, pretrained=str(path)).eval()         # same attention: same features as timm's
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = vit.forward_features(x)[:, 1:].transpose(1, 2).reshape(1, 384, 4, 4)
        torch.testing.assert_close(softmax(x)[-1], expected, atol=1e-4, rtol=1e-4)


def test_released_cbt_into_a_segmentation_encoder(tmp_path):
    """The authors' CBT release (re-stated in test_cbt_encoder) initializes a CBT backbone with nothing left out."""
    from tests.models.test_cbt_encoder import _authors_release, _save_release

    ref = _authors_release(image_size=160)
    path = tmp_path / "cbt.pth.tar"
    _save_release(ref, path)
    same_grid = _segmentor(encoder=CBTEncoder(img_size=160, embed_dim=64, depth=2, num_heads=2, head_dim=32,
                                              legacy_shifted_grid=True)).eval()
    report = load_model_weights(same_grid, path)
    assert not report.unexpected and not report.mismatched
    assert all(k.startswith("head.") for k in report.missing)
    x = torch.rand(1, 3, 160, 160)
    with torch.no_grad():                                             # features = the authors' patch tokens
        tokens = ref.to_patch_embedding(x)
        tokens = torch.cat([ref.cls_token, tokens], 1) + ref.pos_embedding
        tokens = ref.mlp_head[0](ref.transformer(tokens))[:, 1:]
        torch.testing.assert_close(same_grid.encoder(x)[-1], tokens.transpose(1, 2).reshape(1, 64, 10, 10),
                                   atol=1e-5, rtol=1e-5)
    other_grid = _segmentor(encoder=CBTEncoder(img_size=96, embed_dim=64, depth=2, num_heads=2, head_dim=32))
    report = load_model_weights(other_grid, path)                      # position embedding resampled
    assert not report.unexpected and not report.mismatched


def test_own_checkpoint_of_another_task_class(tmp_path, caplog):
    from cbsa_dense.errors import CheckpointError
    from cbsa_dense.tasks.segmentation import SegmentationTask

    source = _segmentor(4)
    torch.save({"state_dict": {f"model.{k}": v for k, v in source.state_dict().items()},
                "hyper_parameters": {"_class_path": "cbsa_dense.tasks.detection.DetectionTask"}}, tmp_path / "det.ckpt")
    seg = _segmentor(4)
    task = SegmentationTask(seg.encoder, LinearHead, 4)
    with pytest.raises(CheckpointError, match=r"det\.ckpt holds a DetectionTask \(hyper_parameters _class_path "
                                              r"cbsa_dense\.tasks\.detection\.DetectionTask\), the config builds "
                                              r"SegmentationTask: give a SegmentationTask checkpoint, or set "
                                              r"--model.init_args.weights_strict false"):
        task.load_weights(str(tmp_path / "det.ckpt"))
    task.weights_strict = False
    report = task.load_weights(str(tmp_path / "det.ckpt"))
    assert not report.unexpected and not report.mismatched


def test_missing_pretrained_file_is_named():
    from cbsa_dense.errors import CheckpointError

    with pytest.raises(CheckpointError, match=r"weights file /nowhere/vit_small\.safetensors does not exist"):
        ViTEncoder(img_size=32, embed_dim=32, depth=1, num_heads=2, pretrained="/nowhere/vit_small.safetensors")


def test_load_report_says_when_it_lists_fewer_keys_than_there_are():
    from cbsa_dense.models.checkpoint import LoadReport

    report = LoadReport(missing=[f"blocks.{i}.attn.step_x" for i in range(24)], unexpected=["head.weight"])
    missing, unexpected = report.summary().splitlines()      # no line for the empty category (mismatched)
    assert missing.startswith("missing keys (24, first 20 shown): ") and "blocks.19." in missing
    assert "blocks.20." not in missing
    assert unexpected == "unexpected keys (1): ['head.weight']"
    # the same keys, expected fresh (load_matching's may_reinit): one line saying so, per pattern
    expected = LoadReport(missing=report.missing, unexpected=["head.weight"], fresh_patterns=("blocks.*.attn.step_x",))
    assert expected.summary().splitlines() == [
        "new parameters, initialized fresh as expected (24: 24 blocks.*.attn.step_x)",
        "unexpected keys (1): ['head.weight']"]
    assert expected.problems and not LoadReport(missing=report.missing, fresh_patterns=("blocks.*",)).problems
    assert LoadReport().summary() == ""
