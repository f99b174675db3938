import pytest
import torch

from cbsa_dense.models.checkpoint import load_matching
from cbsa_dense.models.encoders import CBT_SIZES, CBTEncoder, convert_cbt_checkpoint

PAPER_PARAMS_M = {"tiny": 1.8, "small": 6.7, "base": 25.7, "large": 83.1}


@pytest.mark.parametrize("size", list(CBT_SIZES))
def test_parameter_counts_match_paper_within_one_percent(size):
    with torch.device("meta"):
        model = CBTEncoder.from_size(size, num_classes=1000)
    params = sum(p.numel() for p in model.parameters()) / 1e6
    assert abs(params - PAPER_PARAMS_M[size]) / PAPER_PARAMS_M[size] < 0.01, params


def _released_state_dict(model: CBTEncoder) -> dict:
    """Rename our keys to the released classification layout (inverse of the documented mapping)."""
    out = {}
    for key, value in model.state_dict().items():
        parts = key.split(".")
        if key.startswith("blocks."):
            i, rest = parts[1], ".".join(parts[2:])
            rest = (rest.replace("norm1.", "0.norm.").replace("attn.qkv.", "0.fn.proj.")
                    .replace("attn.proj.", "0.fn.to_out.").replace("attn.step", "0.fn.step")
                    .replace("norm2.", "1.norm.").replace("ista.weight", "1.fn.weight"))
            key = f"transformer.layers.{i}.{rest}"
        else:
            top = {"patch_embed": "to_patch_embedding", "pos_embed": "pos_embedding", "norm": "mlp_head.0",
                   "head": "mlp_head.1"}
            key = ".".join([top.get(parts[0], parts[0]), *parts[1:]])
        out[f"module.{key}"] = value.clone()
    return out


def test_released_checkpoint_imports_exactly():
    source = CBTEncoder(embed_dim=64, depth=2, num_heads=2, head_dim=32, num_classes=10,
                        legacy_shifted_grid=True).eval()
    released = _released_state_dict(source)
    assert "module.transformer.layers.1.1.fn.weight" in released and "module.mlp_head.1.weight" in released
    target = CBTEncoder(embed_dim=64, depth=2, num_heads=2, head_dim=32, num_classes=10,
                        legacy_shifted_grid=True).eval()
    report = load_matching(target, convert_cbt_checkpoint(released))
    assert not report.missing and not report.unexpected and not report.mismatched
    x = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(target.classify(x), source.classify(x))


def test_feature_maps_any_size_and_legacy_switch_changes_output():
    model = CBTEncoder(embed_dim=64, depth=2, num_heads=2, head_dim=32, out_indices=(0, 1)).eval()
    legacy = CBTEncoder(embed_dim=64, depth=2, num_heads=2, head_dim=32, out_indices=(0, 1),
                        legacy_shifted_grid=True).eval()
    legacy.load_state_dict(model.state_dict())
    x = torch.randn(1, 3, 100, 150)
    outs = model(x)
    assert [o.shape for o in outs] == [(1, 64, 7, 10)] * 2 and model.out_strides == [16, 16]
    assert not torch.allclose(outs[-1], legacy(x)[-1])


def test_unknown_size():
    with pytest.raises(ValueError, match="huge"):
        CBTEncoder.from_size("huge")
