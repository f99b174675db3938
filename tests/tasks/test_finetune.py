"""Fine-tuning from a checkpoint: weights-only init at fit start, frozen parameters stay put."""

from pathlib import Path

import torch

from cbsa_dense.cli import main

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "demo_seg.yaml"


def test_weights_and_freeze_through_the_cli(seg_run, seg_ckpt, tmp_path):
    source = torch.load(seg_ckpt, map_location="cpu", weights_only=False)["state_dict"]
    main(["fit", "--config", str(CONFIG), "--data.init_args.root", str(seg_run / "data"),
          "--data.init_args.num_train", "4", "--data.init_args.num_val", "2", "--data.init_args.batch_size", "2",
          "--model.init_args.weights", str(seg_ckpt),
          "--model.init_args.freeze", '["model.encoder.patch_embed.*", "model.encoder.blocks.0.*"]',
          "--trainer.max_steps", "2", "--trainer.enable_progress_bar", "false",
          "--trainer.logger.init_args.save_dir", str(tmp_path),
          "--trainer.callbacks+", "lightning.pytorch.callbacks.ModelCheckpoint",
          "--trainer.callbacks.dirpath", str(tmp_path / "ckpt"), "--trainer.callbacks.save_last", "true"])
    tuned = torch.load(tmp_path / "ckpt" / "last.ckpt", map_location="cpu", weights_only=False)["state_dict"]
    frozen = "model.encoder.blocks.0.attn.qkv.weight"
    torch.testing.assert_close(tuned[frozen], source[frozen], rtol=0, atol=0)     # loaded, then frozen
    trained = "model.encoder.blocks.1.attn.qkv.weight"
    assert not torch.equal(tuned[trained], source[trained])                     # loaded, then trained
    assert (tuned[trained] - source[trained]).abs().max() < 0.1                 # ... starting from the file


def test_a_freeze_pattern_that_matches_nothing_names_the_prefixes(capsys):
    """``freeze: ["encoder.*"]`` (the names lack ``model.``) is one line that shows where the parameters are."""
    from tests.conftest import cli_user_error

    message = cli_user_error(["fit", "--config", str(CONFIG), "--model.init_args.freeze", '["encoder.*"]',
                              "--trainer.max_steps", "1"], capsys)
    assert "freeze=['encoder.*']" in message
    assert "model.encoder.*" in message and "model.head.*" in message
