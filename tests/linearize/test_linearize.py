"""Linearization: diagnosis against the softmax teacher, calibration, attention transfer, their CLI forms."""

from __future__ import annotations

import json
from pathlib import Path

# Lightning's log handler binds to the stderr of its first import: import it at collection, not under one
# test's captured stream (closed after that test, so later log lines would fail to print).
import lightning.pytorch  # noqa: F401
import numpy as np
import pytest
import torch
from torch import nn

from cbsa_dense.cli import main
from cbsa_dense.errors import ConfigError
from cbsa_dense.layers import CBSAAttention, SoftmaxAttention
from cbsa_dense.linearize import (
    build_teacher,
    calibrate_step_sizes,
    cbsa_blocks,
    diagnose,
    transfer_attention,
)
from cbsa_dense.models.encoders import ViTEncoder
from tests.conftest import cli_user_error


def tiny_vit(attn: nn.Module | type = SoftmaxAttention, depth: int = 2, **kw) -> ViTEncoder:
    return ViTEncoder(img_size=32, patch_size=8, embed_dim=32, depth=depth, num_heads=2, init_values=0.5,
                      attn_layer=attn, **kw)


def cbsa(**kw):
    from functools import partial

    return partial(CBSAAttention, grid=(2, 2), variant="qkv", **kw)


def pretrained_cbsa(seed: int = 0, **kw) -> ViTEncoder:
    """A tiny CBSA encoder holding the weights of a softmax ViT (the "pretrained" model)."""
    torch.manual_seed(seed)
    softmax = tiny_vit()
    student = tiny_vit(cbsa(**kw))
    missing = student.load_state_dict(softmax.state_dict(), strict=False).missing_keys
    assert all(".step_" in k or ".local." in k for k in missing)
    return student


def images(n: int, seed: int, size: int = 32) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(2, 3, size, size, generator=g) for _ in range(n)]


def test_teacher_holds_the_students_softmax_weights():
    student = pretrained_cbsa()
    teacher = build_teacher(student)
    for i in cbsa_blocks(student):
        assert isinstance(teacher.blocks[i].attn, SoftmaxAttention)
        assert torch.equal(teacher.blocks[i].attn.qkv.weight, student.blocks[i].attn.qkv.weight)
        assert torch.equal(teacher.blocks[i].attn.proj.bias, student.blocks[i].attn.proj.bias)
        assert not any(p.requires_grad for p in teacher.parameters())
    # A copy: training the student's query rows leaves the teacher as it was.
    with torch.no_grad():
        student.blocks[0].attn.qkv.weight.add_(1.0)
    assert not torch.equal(teacher.blocks[0].attn.qkv.weight, student.blocks[0].attn.qkv.weight)


def test_diagnosis_of_the_tied_softmax_case_is_exact():
    """grid=None gives every token its own representative: CBSA is softmax attention with q = k, which
    a tied softmax teacher (its query rows = its key rows) reproduces; step_x scales the output."""
    torch.manual_seed(0)
    student = tiny_vit(lambda d, h: CBSAAttention(d, h, grid=None, variant="qkv", step_init=1.0))
    teacher = tiny_vit()
    teacher.load_state_dict(student.state_dict(), strict=False)
    with torch.no_grad():
        for block in teacher.blocks:
            block.attn.qkv.weight[:32] = block.attn.qkv.weight[32:64]          # q rows := k rows
            block.attn.qkv.bias[:32] = block.attn.qkv.bias[32:64]
    batches = images(2, seed=1)
    report = diagnose(student, teacher, [0, 1], batches)
    for stats in report.blocks:
        assert stats.rel_error < 1e-10 and abs(stats.cosine - 1) < 1e-5 and abs(stats.norm_ratio - 1) < 1e-5
    assert report.final_cosine > 0.9999
    with torch.no_grad():                                  # half the output: relative squared error 0.25
        student.blocks[1].attn.step_x.fill_(0.5)
    halved = diagnose(student, teacher, [0, 1], batches).blocks
    assert halved[0].rel_error < 1e-10
    assert halved[1].rel_error == pytest.approx(0.25, abs=1e-5)
    assert halved[1].norm_ratio == pytest.approx(0.5, abs=1e-5)


@pytest.mark.parametrize("train", [("step_sizes",), ("step_sizes", "local"), ("qk",)])
def test_transfer_lowers_every_blocks_error(train):
    student = pretrained_cbsa(local_kernel=3)
    teacher = build_teacher(student)
    blocks = cbsa_blocks(student)
    held = images(2, seed=1)
    before = diagnose(student, teacher, blocks, held)
    value_rows = [student.blocks[i].attn.qkv.weight[64:].clone() for i in blocks]
    frozen = {k: v.clone() for k, v in student.state_dict().items()
              if ".step_" not in k and ".local." not in k and ".qkv." not in k}

    def batches():
        g = torch.Generator().manual_seed(2)
        while True:
            yield torch.randn(2, 3, 32, 32, generator=g)

    report = transfer_attention(student, teacher, blocks, batches(), held, steps=25, train=train, lr=5e-2,
                                qk_lr=5e-3, eval_every=5, progress=False)
    after = diagnose(student, teacher, blocks, held)
    assert report.holdout_after < report.holdout_before
    for b, a in zip(before.blocks, after.blocks):
        assert a.rel_error < b.rel_error, (train, b, a)
    state = student.state_dict()
    assert all(torch.equal(state[k], v) for k, v in frozen.items())       # only the chosen parameters moved
    for i, rows in zip(blocks, value_rows):
        assert torch.equal(student.blocks[i].attn.qkv.weight[64:], rows)  # value rows never train
    assert all(not p.requires_grad for p in teacher.parameters())
    assert all(p.requires_grad for p in student.parameters())             # flags restored


def test_transfer_trains_a_frozen_encoder_and_leaves_it_frozen():
    """``freeze: ["model.encoder.*"]`` with the callback: the q/k rows are matched, then frozen again."""
    student = pretrained_cbsa(local_kernel=3)
    teacher = build_teacher(student)
    student.requires_grad_(False)
    qkv = student.blocks[0].attn.qkv.weight.clone()
    report = transfer_attention(student, teacher, cbsa_blocks(student), iter(images(25, seed=3)), images(2, seed=1),
                                steps=25, train=("qk",), qk_lr=5e-3, eval_every=5, progress=False)
    assert report.holdout_after < report.holdout_before
    assert not torch.equal(student.blocks[0].attn.qkv.weight, qkv)
    assert not any(p.requires_grad for p in student.parameters())


def test_transfer_is_deterministic():
    def run() -> torch.Tensor:
        student = pretrained_cbsa()
        teacher = build_teacher(student)
        transfer_attention(student, teacher, [0, 1], iter(images(20, seed=3)), images(1, seed=4), steps=20,
                           progress=False)
        return torch.cat([student.blocks[i].attn.step_x.flatten() for i in (0, 1)])

    assert torch.equal(run(), run())


def test_calibration_fits_the_step_sizes_in_closed_form():
    student = pretrained_cbsa()
    teacher = build_teacher(student)
    held = images(2, seed=1)
    before = diagnose(student, teacher, [0, 1], held)
    result = calibrate_step_sizes(student, teacher, [0, 1], held)
    after = diagnose(student, teacher, [0, 1], held)
    for b, a in zip(before.blocks, after.blocks):
        assert a.rel_error < b.rel_error
        assert result[a.block]["rel_error"] == pytest.approx(a.rel_error, rel=1e-4)   # the fit is what we see
    # The least-squares optimum: moving any head's step_x makes it worse.
    attn = student.blocks[0].attn
    with torch.no_grad():
        attn.step_x[0] += 0.05
    assert diagnose(student, teacher, [0, 1], held).blocks[0].rel_error > after.blocks[0].rel_error


def test_local_term_starts_at_zero_and_is_opt_in():
    torch.manual_seed(0)
    plain = CBSAAttention(32, 2, grid=(2, 2), variant="qkv")
    local = CBSAAttention(32, 2, grid=(2, 2), variant="qkv", local_kernel=3)
    local.load_state_dict(plain.state_dict(), strict=False)
    assert plain.local is None and "local" not in "".join(plain.state_dict())
    x = torch.randn(2, 1 + 16, 32)
    assert torch.allclose(local(x, (4, 4), 1), plain(x, (4, 4), 1))
    with torch.no_grad():
        local.local.weight.normal_()
    moved = local(x, (4, 4), 1) - plain(x, (4, 4), 1)
    assert moved[:, 1:].abs().amax() > 0.01 and moved[:, 0].abs().amax() < 1e-6   # patches only, not the CLS
    with pytest.raises(ConfigError, match="local_kernel"):
        CBSAAttention(32, 2, local_kernel=2)


def test_encoders_without_softmax_compatible_weights_are_refused():
    with pytest.raises(ConfigError, match="block 0's CBSA layer has no softmax-compatible weights"):
        cbsa_blocks(tiny_vit(CBSAAttention))                      # shared variant: one projection for q = k = v
    with pytest.raises(ConfigError, match="no CBSA block"):
        cbsa_blocks(tiny_vit())


def _finetune_args(root: Path, tmp_path: Path, *extra: str) -> list[str]:
    enc = "--model.init_args.encoder.init_args."
    return ["--config", "finetune_cpu.yaml", "--data.init_args.root", str(root),
            "--data.init_args.crop_size", "[56, 56]", "--data.init_args.scale", "[112, 56]",
            "--model.init_args.evaluation.scale", "[112, 56]", f"{enc}img_size", "56",
            f"{enc}patch_size", "14", f"{enc}embed_dim", "32", f"{enc}depth", "2", f"{enc}num_heads", "2",
            f"{enc}init_values", "1.0", f"{enc}attn_layer.init_args.grid", "[2, 2]",
            "--trainer.enable_progress_bar", "false",
            "--trainer.logger.init_args.save_dir", str(tmp_path / "runs"),
            "--trainer.default_root_dir", str(tmp_path), *extra]


@pytest.fixture
def tiny_data(tmp_path):
    """Noise images in the seg-folder layout (every patch differs) and a timm-named softmax ViT whose attention is
    local, as a pretrained ViT's early blocks are: its query rows are its key rows, both scaled up 5x, so each token
    attends mostly to itself. CBSA's few pooled representatives miss that; its local term can learn it (with the
    default init the softmax attention is near uniform, CBSA already matches it and the transfer has nothing to do)."""
    from PIL import Image

    from tests.test_bad_images import make_dataset

    root = make_dataset(tmp_path / "my_data", size=(30, 44))
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for i in range(2):
            noise = rng.integers(0, 256, (30, 44, 3), dtype=np.uint8)
            Image.fromarray(noise).save(root / "images" / split / f"{split}{i}.png")
    softmax = ViTEncoder(arch="vit_small_patch14_dinov2", img_size=28, embed_dim=32, depth=2, num_heads=2,
                         init_values=1.0)
    with torch.no_grad():
        for block in softmax.blocks:
            qkv = block.attn.qkv
            qkv.weight[:32], qkv.bias[:32] = qkv.weight[32:64], qkv.bias[32:64]      # q = k: self-similarity
            qkv.weight[:64] *= 5.0
    weights = tmp_path / "softmax_vit.pth"
    torch.save(softmax.state_dict(), weights)                     # a plain timm-named softmax ViT state dict
    return root, weights


def test_linearize_command_writes_weights_that_pretrained_accepts(tiny_data, tmp_path, capsys):
    root, weights = tiny_data
    out = tmp_path / "enc_cbsa.safetensors"
    enc = "--model.init_args.encoder.init_args."
    assert main(["linearize", *_finetune_args(root, tmp_path, f"{enc}pretrained", str(weights)),
                 "--out", str(out), "--steps", "20", "--report", str(tmp_path / "r.json")]) == 0
    text = capsys.readouterr().out
    assert "before, crop" in text and "after, 2x crop" in text and "final-feature cosine" in text
    report = json.loads((tmp_path / "r.json").read_text())
    transfer = report["transfer"]
    assert transfer["steps"] == 20
    assert len(report["after"]["2x crop"]["blocks"]) == 2            # both blocks diagnosed at 2x the crop
    # The transfer improves, by a margin (measured: held-out loss 0.134 -> 0.078, -42%; asserted: at least -21%).
    # (The kept state is the best held-out one, the start included: "not worse" would hold by construction.)
    assert transfer["best_step"] == 20 and transfer["holdout_after"] < 0.79 * transfer["holdout_before"], transfer
    # ... also where the early stop did not look: every block's error at twice the crop size
    # (measured: 0.138 -> 0.091 and 0.194 -> 0.124, -34% and -36%; asserted: at least -17% each).
    for b, a in zip(report["before"]["2x crop"]["blocks"], report["after"]["2x crop"]["blocks"]):
        assert a["rel_error"] < 0.83 * b["rel_error"], (b, a)
    from cbsa_dense.models.checkpoint import read_state_dict

    state = read_state_dict(out)
    softmax = torch.load(weights, map_location="cpu")
    for i in range(2):                  # the file holds the trained parameters: moved from their start ...
        assert state[f"blocks.{i}.attn.local.weight"].abs().amax() > 1e-3           # zero-initialized
        qkv, start = state[f"blocks.{i}.attn.qkv.weight"], softmax[f"blocks.{i}.attn.qkv.weight"]
        assert not torch.equal(qkv[:64], start[:64])                                  # query and key rows
        assert torch.equal(qkv[64:], start[64:])                                      # ... and only those
    # The file is an encoder weights file: a config takes it as `pretrained` (step sizes included).
    from functools import partial

    encoder = ViTEncoder(arch="vit_small_patch14_dinov2", img_size=56, embed_dim=32, depth=2, num_heads=2,
                         init_values=1.0,
                         attn_layer=partial(CBSAAttention, grid=(2, 2), variant="qkv", broadcast="query", local_kernel=3),
                         pretrained=str(out))
    assert torch.equal(encoder.blocks[1].attn.local.weight, state["blocks.1.attn.local.weight"])
    assert encoder.linearized                   # marked: a config's AttentionTransfer skips itself
    softmax_start = ViTEncoder(arch="vit_small_patch14_dinov2", img_size=56, embed_dim=32, depth=2, num_heads=2,
                               init_values=1.0, attn_layer=partial(CBSAAttention, grid=(2, 2), variant="qkv"),
                               pretrained=str(weights))
    assert not softmax_start.linearized
    # Errors are one line: the shared variant cannot take softmax weights; no --out.
    line = cli_user_error(["linearize", *_finetune_args(root, tmp_path), "--diagnose-only",
                           f"{enc}attn_layer.init_args.variant", "shared"], capsys)
    assert "no softmax-compatible weights" in line
    assert "--out" in cli_user_error(["linearize", *_finetune_args(root, tmp_path)], capsys)
    assert "no pretrained weights" in cli_user_error(["linearize", *_finetune_args(root, tmp_path), "--diagnose-only"],
                                                     capsys)


def test_fit_runs_the_transfer_once_and_not_on_resume(tiny_data, tmp_path):
    root, weights = tiny_data
    enc = "--model.init_args.encoder.init_args."
    transfer = json.dumps([{"class_path": "AttentionTransfer",
                            "init_args": {"steps": 4, "eval_every": 2, "double_size_check": False}},
                           {"class_path": "TaskCheckpoint", "init_args": {"save_weights_only": False}}])
    args = _finetune_args(root, tmp_path, f"{enc}pretrained", str(weights), "--trainer.callbacks", transfer,
                          "--trainer.val_check_interval", "2")
    assert main(["fit", *args, "--trainer.max_steps", "2"]) == 0
    run = tmp_path / "runs" / "finetune_cpu" / "version_0"
    report = json.loads((run / "attention_transfer.json").read_text())
    assert report["transfer"]["steps"] == 4
    assert set(report["before"]) == set(report["after"]) == {"crop"}      # no 2x diagnosis when turned off
    ckpt = run / "checkpoints" / "last.ckpt"
    stored = torch.load(ckpt, map_location="cpu", weights_only=False)
    assert any(v == {"done": True} for k, v in stored["callbacks"].items() if "AttentionTransfer" in k)
    (run / "attention_transfer.json").unlink()
    assert main(["fit", *args, "--trainer.max_steps", "4", "--ckpt_path", str(ckpt)]) == 0
    assert not list((tmp_path / "runs").rglob("attention_transfer.json"))     # the resumed fit did not run it
    steps = sorted(torch.load(p, map_location="cpu", weights_only=False)["global_step"]
                   for p in (tmp_path / "runs").rglob("last.ckpt"))
    assert steps[-1] == 4                                                      # ... and it did train


#: Each skip's own reason: the distinctive part of its printed line.
SKIP_REASONS = {
    "softmax": "the encoder has no CBSA layer",
    "random init": "the encoder starts from random init",
    "resume": "the run resumes from a checkpoint",
    "transfer done": "it has already run",          # its state, loaded from a checkpoint, says it ran
    "linearized": "pretrained file was written by cbsa-dense linearize",
}


@pytest.mark.parametrize("case", [*SKIP_REASONS, "shared"])
def test_transfer_callback_skips_only_what_has_nothing_to_match(case, caplog):
    """No CBSA layer, no pretrained weights, a resumed fit, a transfer that already ran, a ``cbsa-dense
    linearize`` file: skipped with a printed line that says which; the shared variant (no softmax-compatible
    weights) is an error. Every skipped encoder would otherwise be transferred (CBSA qkv layers, pretrained)."""
    from types import SimpleNamespace

    from cbsa_dense.callbacks import AttentionTransfer

    encoder = tiny_vit() if case == "softmax" else tiny_vit(CBSAAttention if case == "shared" else cbsa())
    if case != "random init":
        encoder.pretrained_from = "softmax_vit.pth"
    encoder.linearized = case == "linearized"
    task = SimpleNamespace(model=SimpleNamespace(encoder=encoder), weights=None)
    trainer = SimpleNamespace(ckpt_path="last.ckpt" if case == "resume" else None, datamodule=None)
    callback = AttentionTransfer(steps=2)
    if case == "transfer done":
        callback.load_state_dict({"done": True})
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    if case == "shared":
        with pytest.raises(ConfigError, match="no softmax-compatible weights"):
            callback.on_train_start(trainer, task)
        return
    with caplog.at_level("INFO"):
        callback.on_train_start(trainer, task)
    skips = [r.getMessage() for r in caplog.records if r.getMessage().startswith("attention transfer: skipped")]
    assert callback.done and len(skips) == 1, caplog.text
    assert SKIP_REASONS[case] in skips[0], skips[0]
    assert all(torch.equal(v, encoder.state_dict()[k]) for k, v in before.items())


def test_transfer_callback_with_nothing_to_skip_runs():
    """The encoder of the skip cases, pretrained and fresh: not skipped, it asks for the training data."""
    from types import SimpleNamespace

    from cbsa_dense.callbacks import AttentionTransfer

    encoder = tiny_vit(cbsa())
    encoder.pretrained_from = "softmax_vit.pth"
    task = SimpleNamespace(model=SimpleNamespace(encoder=encoder), weights=None)
    with pytest.raises(ConfigError, match="needs a datamodule"):
        AttentionTransfer(steps=2).on_train_start(SimpleNamespace(ckpt_path=None, datamodule=None), task)


def test_transfer_callback_refuses_sharded_strategies():
    from types import SimpleNamespace

    from lightning.pytorch.strategies import FSDPStrategy

    from cbsa_dense.callbacks import AttentionTransfer

    encoder = pretrained_cbsa()
    encoder.pretrained_from = "softmax_vit.pth"
    task = SimpleNamespace(model=SimpleNamespace(encoder=encoder), weights=None)
    trainer = SimpleNamespace(ckpt_path=None, datamodule=object(), strategy=FSDPStrategy())
    with pytest.raises(ConfigError, match="cbsa-dense linearize"):
        AttentionTransfer(steps=2).on_train_start(trainer, task)


def test_diagnose_only_prints_a_legend_shows_progress_and_no_warning(tiny_data, tmp_path, capsys, monkeypatch):
    """As typed in a terminal (sys.argv holds the command, stderr is a tty): each table has its legend, the
    diagnosis shows a progress bar, and Lightning's "args parameter" warning (2.5 KB: the whole config) is gone."""
    import sys
    import warnings

    root, weights = tiny_data
    argv = ["linearize", *_finetune_args(root, tmp_path, "--model.init_args.encoder.init_args.pretrained",
                                         str(weights)), "--diagnose-only"]
    monkeypatch.setattr(sys, "argv", ["cbsa-dense", *argv])
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    capsys.readouterr()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")                    # over pyproject's filters: see every warning
        assert main(argv) == 0
    out, err = capsys.readouterr()
    user_warnings = [f"{w.category.__name__}: {str(w.message)[:200]}" for w in caught
                     if issubclass(w.category, UserWarning)]
    assert not user_warnings, user_warnings
    assert "args parameter" not in err and "seed_everything" not in err
    from cbsa_dense.linearize.diagnose import LEGEND

    legend = "\n".join(LEGEND)
    assert out.count(legend) == 2 == out.count("final-feature cosine to the softmax teacher")     # one per table
    for table in out.split("\n\n")[:2]:
        assert table.endswith(legend), table                                     # right under its table
    assert "||y - t||^2 / ||t||^2" in legend and "0 = identical, 1.0 = as far off as predicting zero" in legend
    assert "lower is better" in legend and "norm ratio: ||y|| / ||t||" in legend and "cosine: of y and t" in legend
    assert "diagnosis before at the crop" in err and "diagnosis before at 2x the crop" in err     # progress bars
    assert "after" not in out


def test_the_diagnosis_table_has_its_legend_unless_asked_not_to():
    from cbsa_dense.linearize.diagnose import LEGEND, BlockStats, Diagnosis

    report = Diagnosis(size=(56, 56), images=2, blocks=[BlockStats(0, 0.25, 0.5, 0.9)], final_cosine=0.8)
    lines = report.table("before, crop").splitlines()
    assert lines[-len(LEGEND):] == LEGEND and "    0      0.250       0.500   0.900" in lines
    assert not set(LEGEND) & set(report.table(legend=False).splitlines())
