import pytest
import torch
from lightning.pytorch import LightningModule, Trainer
from torch.utils.data import DataLoader, TensorDataset

from cbsa_dense.callbacks import FiniteLossCheck, NonFiniteLossError


class _NaNAtStep(LightningModule):
    def __init__(self, bad_step: int):
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)
        self.bad_step = bad_step

    def training_step(self, batch, batch_idx):
        loss = self.layer(batch[0]).square().mean()
        return loss * float("nan") if batch_idx == self.bad_step else loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_nan_loss_stops_with_step_in_message(tmp_path):
    data = DataLoader(TensorDataset(torch.randn(16, 2)), batch_size=2)
    trainer = Trainer(max_epochs=1, callbacks=[FiniteLossCheck()], default_root_dir=tmp_path, logger=False,
                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    with pytest.raises(NonFiniteLossError, match=r"loss is nan at global step \d+ \(epoch 0, batch 3\)"):
        trainer.fit(_NaNAtStep(bad_step=3), data)


def test_finite_losses_pass(tmp_path):
    data = DataLoader(TensorDataset(torch.randn(8, 2)), batch_size=2)
    trainer = Trainer(max_epochs=1, callbacks=[FiniteLossCheck()], default_root_dir=tmp_path, logger=False,
                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(_NaNAtStep(bad_step=-1), data)
    assert trainer.global_step == 4
