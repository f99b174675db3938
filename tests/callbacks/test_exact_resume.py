import albumentations as A
import numpy as np
import pytest
import torch
from lightning.pytorch import Callback, LightningModule, Trainer, seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import Dataset

from cbsa_dense.callbacks import ExactResume
from cbsa_dense.data.loaders import ResumableSampler, train_loader


class _Images(Dataset):
    def __init__(self):
        rng = np.random.default_rng(0)
        self.images = rng.integers(0, 255, size=(20, 8, 8, 3), dtype=np.uint8)
        self.transform = A.Compose([A.HorizontalFlip(p=0.5), A.RandomBrightnessContrast(p=1.0)])

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return torch.from_numpy(self.transform(image=self.images[i])["image"]).float().flatten() / 255


class _Model(LightningModule):
    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(192, 16), torch.nn.Dropout(0.3), torch.nn.Linear(16, 1))

    def training_step(self, batch, batch_idx):
        return self.net(batch).square().mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)

    def train_dataloader(self):
        return train_loader(_Images(), batch_size=4, seed=7)


class _Crash(Callback):
    def on_train_batch_end(self, trainer, *args):
        if trainer.global_step == 7:
            raise RuntimeError("simulated kill")


def _trainer(root, *callbacks):
    return Trainer(max_epochs=3, default_root_dir=root, logger=False, enable_progress_bar=False,
                   enable_model_summary=False, deterministic=True,
                   callbacks=[ExactResume(), ModelCheckpoint(dirpath=root, every_n_train_steps=1, save_last=True),
                              *callbacks])


def _params(model):
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def test_sampler_order_depends_only_on_seed_and_epoch():
    a, b = ResumableSampler(range(10), seed=3), ResumableSampler(range(10), seed=3)
    a.set_epoch(2)
    b.set_epoch(2)
    b.start = 4
    assert list(b) == list(a)[4:] and list(b) == list(a)                 # offset applies to one pass only
    a.set_epoch(3)
    assert list(a) != list(b)


def test_ranks_share_one_epoch_order_and_the_dataset_hears_the_epoch():
    class _Data(list):
        epoch = None

        def set_epoch(self, epoch):
            self.epoch = epoch

    data = _Data(range(10))
    ranks = [ResumableSampler(data, seed=1, num_replicas=2, rank=r) for r in (0, 1)]
    for sampler in ranks:
        sampler.set_epoch(4)
    assert data.epoch == 4
    shards = [list(s) for s in ranks]
    assert sorted(shards[0] + shards[1]) == list(range(10)) and len(shards[0]) == 5


def test_killed_run_resumes_to_identical_weights(tmp_path):
    seed_everything(0)
    reference = _Model()
    _trainer(tmp_path / "ref").fit(reference)

    seed_everything(0)
    crashed = _Model()
    trainer = _trainer(tmp_path / "run", _Crash())
    with pytest.raises(RuntimeError, match="simulated kill"):
        trainer.fit(crashed)
    assert trainer.global_step == 7                                        # mid-epoch 1 (5 batches/epoch)

    seed_everything(123)                                                   # a restart has fresh RNG state
    resumed = _Model()
    _trainer(tmp_path / "run").fit(resumed, ckpt_path=str(tmp_path / "run" / "last.ckpt"))
    torch.testing.assert_close(_params(resumed), _params(reference), rtol=0, atol=0)
