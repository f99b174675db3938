from pathlib import Path

import pytest
import yaml
from jsonargparse import ArgumentParser
from lightning.pytorch import Trainer

from cbsa_dense.layers import Block
from cbsa_dense.models.encoders.cbt import CBTBlock
from cbsa_dense.scale import TransformerFSDPStrategy, transformer_block_types

PRESETS = sorted((Path(__file__).resolve().parents[2] / "configs" / "trainer").glob("*.yaml"))


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: p.name)
def test_trainer_presets_parse_against_trainer_signature(preset):
    config = yaml.safe_load(preset.read_text())
    assert set(config) == {"trainer"}
    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(Trainer, "trainer", fail_untyped=False)
    parser.parse_object(config)                                  # unknown keys / wrong types raise


def test_fsdp_strategy_wraps_transformer_blocks():
    strategy = TransformerFSDPStrategy(activation_checkpointing=True)
    assert {Block, CBTBlock} <= strategy.kwargs["auto_wrap_policy"]._module_classes
    assert strategy._activation_checkpointing_kwargs
    with pytest.raises(ValueError, match="nope.Missing"):
        transformer_block_types(["nope.Missing"])
