"""A tiny LightningModule + DataModule (importable by class_path) for the train-benchmark tests."""

from __future__ import annotations

import torch
from lightning.pytorch import LightningDataModule, LightningModule
from torch.utils.data import DataLoader, TensorDataset


class TinyTask(LightningModule):
    def __init__(self, width: int = 8, lr: float = 0.01) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = torch.nn.Conv2d(3, width, 3, padding=1)

    def training_step(self, batch, batch_idx):
        return self.net(batch["image"]).square().mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)


class TinyData(LightningDataModule):
    def __init__(self, num_images: int = 24, batch_size: int = 2, size: int = 16) -> None:
        super().__init__()
        self.save_hyperparameters()

    def setup(self, stage: str) -> None:
        self.images = torch.randn(self.hparams.num_images, 3, self.hparams.size, self.hparams.size)

    def train_dataloader(self):
        dataset = TensorDataset(self.images)
        return DataLoader(dataset, batch_size=self.hparams.batch_size,
                          collate_fn=lambda items: {"image": torch.stack([i[0] for i in items])})
