import pytest
import torch
from lightning.pytorch import LightningModule

from cbsa_dense.callbacks import CompileEncoder
from cbsa_dense.models.encoders import ViTEncoder


class _Task(LightningModule):
    def __init__(self):
        super().__init__()
        self.model = torch.nn.Module()
        self.model.encoder = ViTEncoder(img_size=32, embed_dim=32, depth=1, num_heads=2)


def test_compile_keeps_state_dict_names():
    task = _Task()
    keys = list(task.state_dict())
    CompileEncoder().setup(None, task, "fit")
    assert list(task.state_dict()) == keys                         # checkpoints stay loadable


def test_compile_without_encoder_is_an_error():
    with pytest.raises(ValueError, match="encoder"):
        CompileEncoder().setup(None, LightningModule(), "fit")
