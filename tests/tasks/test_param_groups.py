import pytest
import torch
from torch import nn

from cbsa_dense.models.encoders import ViTEncoder
from cbsa_dense.tasks.param_groups import apply_lr_scale, layer_id, param_groups
from cbsa_dense.tasks.schedulers import WarmupCosineLR, WarmupPolyLR, WarmupStepLR


class _Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = ViTEncoder(img_size=32, embed_dim=32, depth=3, num_heads=2)
        self.head = nn.Linear(32, 4)


def test_layer_ids():
    assert layer_id("encoder.pos_embed", 3) == 0
    assert layer_id("encoder.blocks.2.attn.qkv.weight", 3) == 3
    assert layer_id("model.encoder.blocks.0.norm1.weight", 3) == 1
    assert layer_id("head.weight", 3) == 4


def test_groups_exclude_norms_biases_tokens_from_decay_and_scale_lr_by_depth():
    model = _Model()
    groups = param_groups(model, weight_decay=0.05, layer_decay=0.5, num_layers=3)
    by_name = {n: g for g in groups for n in g["names"]}
    assert by_name["encoder.pos_embed"]["weight_decay"] == 0.0
    assert by_name["encoder.blocks.0.norm1.weight"]["weight_decay"] == 0.0
    assert by_name["encoder.blocks.0.attn.qkv.weight"]["weight_decay"] == 0.05
    assert by_name["head.weight"]["lr_scale"] == 1.0
    assert by_name["encoder.blocks.2.attn.qkv.weight"]["lr_scale"] == 0.5
    assert by_name["encoder.patch_embed.proj.weight"]["lr_scale"] == 0.5 ** 4
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    for g in groups:
        g.pop("names")
    opt = torch.optim.SGD(groups, lr=1.0)
    apply_lr_scale(opt)
    apply_lr_scale(opt)                                          # idempotent
    assert sorted({g["lr"] for g in opt.param_groups}) == [0.5 ** k for k in range(4, -1, -1)]


def test_frozen_parameters_are_left_out():
    model = _Model()
    model.encoder.requires_grad_(False)
    groups = param_groups(model)
    assert {n for g in groups for n in g["names"]} == {"head.weight", "head.bias"}


def test_cbsa_step_sizes_can_get_their_own_lr_scale():
    from functools import partial

    from cbsa_dense.layers import CBSAAttention

    model = _Model()
    model.encoder = ViTEncoder(img_size=32, embed_dim=32, depth=2, num_heads=2,
                               attn_layer=partial(CBSAAttention, grid=(1, 1), variant="qkv"))
    default = {n: g["lr_scale"] for g in param_groups(model, layer_decay=0.5, num_layers=2) for n in g["names"]}
    assert default["encoder.blocks.1.attn.step_x"] == default["encoder.blocks.1.attn.qkv.weight"] == 0.5
    groups = param_groups(model, layer_decay=0.5, num_layers=2, step_size_lr_scale=100.0)
    scaled = {n: g["lr_scale"] for g in groups for n in g["names"]}
    assert scaled["encoder.blocks.1.attn.step_x"] == scaled["encoder.blocks.1.attn.step_rep"] == 50.0
    assert scaled["encoder.blocks.0.attn.step_x"] == 25.0 and scaled["encoder.blocks.1.attn.qkv.weight"] == 0.5
    assert all(g["weight_decay"] == 0.0 for g in groups if "encoder.blocks.0.attn.step_x" in g["names"])


def test_bad_layer_decay():
    with pytest.raises(ValueError, match="layer_decay"):
        param_groups(_Model(), layer_decay=0.5)


def _run_schedule(opt, sched, steps):
    """The lr of each of ``steps`` iterations (``opt`` then holds the lr after the last one)."""
    sched.resolve_total(steps)
    lrs = []
    for _ in range(steps):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return lrs


def _lrs(sched_cls, steps, **kwargs):
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    return _run_schedule(opt, sched_cls(opt, **kwargs), steps)


def test_poly_schedule_matches_mmseg_formula():
    lrs = _lrs(WarmupPolyLR, 10, power=0.9)
    assert lrs == pytest.approx([(1 - i / 10) ** 0.9 for i in range(10)])


def test_warmup_cosine_and_step():
    lrs = _lrs(WarmupCosineLR, 20, warmup_iters=5, warmup_ratio=0.0)
    assert lrs[0] == 0.0 and lrs[5] == pytest.approx(0.5 * (1 + torch.cos(torch.tensor(torch.pi * 5 / 20)).item()))
    lrs = _lrs(WarmupStepLR, 100, milestones=(0.5, 0.9), warmup_iters=0)
    assert lrs[49] == 1.0 and lrs[50] == pytest.approx(0.1) and lrs[95] == pytest.approx(0.01)


def _poly_min_lr(base, min_lr, it, total, power=0.9):
    """MMCV PolyLrUpdaterHook / MMEngine PolyLR (closed form): (base - min) * (1 - it / total) ** power + min."""
    return (base - min_lr) * (1 - it / total) ** power + min_lr


def test_poly_schedule_decays_to_an_absolute_min_lr():
    base, min_lr, total = 1e-3, 1e-5, 20
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=base)
    sched = WarmupPolyLR(opt, power=0.9, min_lr=min_lr)
    lrs = _run_schedule(opt, sched, total)
    for it in (0, 1, 7, 13, 19):
        assert lrs[it] == pytest.approx(_poly_min_lr(base, min_lr, it, total), rel=1e-12)
    assert lrs[0] == pytest.approx(base)
    assert opt.param_groups[0]["lr"] == pytest.approx(min_lr, rel=1e-12)   # after the last step
    assert min(lrs) > min_lr
    for _ in range(3):                                                      # past the end: stays at min_lr
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(min_lr, rel=1e-12)


def test_poly_min_lr_is_absolute_in_every_param_group_and_warmup_multiplies_it():
    params = [nn.Parameter(torch.zeros(1)) for _ in range(3)]
    opt = torch.optim.SGD([{"params": [params[0]], "lr": 1e-3}, {"params": [params[1]], "lr": 1e-4},
                           {"params": [params[2]], "lr": 0.0}], lr=1e-3)
    sched = WarmupPolyLR(opt, power=1.0, min_lr=1e-5, warmup_iters=4, warmup_ratio=0.1, total_iters=10)
    for it in range(11):
        warm = 0.1 + 0.9 * it / 4 if it < 4 else 1.0
        assert opt.param_groups[0]["lr"] == pytest.approx(warm * _poly_min_lr(1e-3, 1e-5, it, 10, 1.0))
        assert opt.param_groups[1]["lr"] == pytest.approx(warm * _poly_min_lr(1e-4, 1e-5, it, 10, 1.0))
        assert opt.param_groups[2]["lr"] == 0.0                             # a zero-lr group stays frozen
        opt.step()
        sched.step()


def test_poly_min_lr_default_and_resume_state():
    assert _lrs(WarmupPolyLR, 10, power=0.9, min_lr=0.0) == _lrs(WarmupPolyLR, 10, power=0.9)
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1e-3)
    sched = WarmupPolyLR(opt, min_lr=1e-5, total_iters=10)
    for _ in range(4):
        opt.step()
        sched.step()
    state = sched.state_dict()
    opt2 = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1e-3)
    opt2.load_state_dict(opt.state_dict())
    resumed = WarmupPolyLR(opt2, min_lr=1e-5)
    resumed.load_state_dict(state)
    opt2.step()
    resumed.step()
    assert opt2.param_groups[0]["lr"] == pytest.approx(_poly_min_lr(1e-3, 1e-5, 5, 10))


@pytest.mark.parametrize("kwargs, match", [({"min_lr": -1e-5}, "min_lr=-1e-05"),
                                           ({"min_lr": float("nan")}, "min_lr=nan"),
                                           ({"min_lr": 1e-5, "min_lr_ratio": 0.01}, "both min_lr")])
def test_poly_min_lr_bad_values(kwargs, match):
    from cbsa_dense.errors import ConfigError

    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1e-3)
    with pytest.raises(ConfigError, match=match):
        WarmupPolyLR(opt, **kwargs)


def test_head_lr_scale_multiplies_everything_outside_the_encoder():
    from torch import nn

    from cbsa_dense.tasks.param_groups import param_groups

    model = nn.Module()
    model.encoder = nn.Module()
    model.encoder.blocks = nn.ModuleList([nn.Linear(2, 2), nn.Linear(2, 2)])
    model.head = nn.Linear(2, 2)
    groups = param_groups(model, layer_decay=0.5, num_layers=2, head_lr_scale=10.0)
    scale = {name: g["lr_scale"] for g in groups for name in g["names"]}
    assert scale["head.weight"] == scale["head.bias"] == 10.0
    assert scale["encoder.blocks.1.weight"] == 0.5 and scale["encoder.blocks.0.weight"] == 0.25
