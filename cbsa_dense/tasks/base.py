"""Shared LightningModule machinery: injected optimizer/scheduler, parameter groups, freezing.

Task subclasses (segmentation, detection) build their ``nn.Module`` model, then define the steps. The
optimizer and scheduler are injected as callables (LightningCLI ``class_path`` + ``init_args``); the
task only decides which parameters go into which group.

Private Lightning names used here (``_given_hyperparameters`` in :func:`under_cli`, a module's ``_trainer``):
listed with their reasons in :mod:`cbsa_dense.cli.private_api`.
"""

from __future__ import annotations

import fnmatch
from pathlib import Path

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable

from cbsa_dense.errors import ConfigError
from cbsa_dense.tasks.param_groups import apply_lr_scale, param_groups

#: Datamodule attributes saved into every checkpoint (``checkpoint["data_info"]``) so that evaluation,
#: prediction and export need no training config: class names, normalization, label conventions.
#: How the model was evaluated is not data: it is the task's ``evaluation`` (a hyper-parameter); what the
#: training data did (``train_mode``, ``native_scale``) is kept to check a protocol against it.
DATA_INFO_KEYS = ("num_classes", "class_names", "mean", "std", "reduce_zero_label", "ignore_index",
                  "palette", "category_ids", "train_mode", "native_scale")


class BaseTask(LightningModule):
    """Base of every task.

    Args:
        optimizer: callable ``params -> Optimizer``; ``None`` = :meth:`default_optimizer`.
        lr_scheduler: callable ``optimizer -> LRScheduler`` stepped every iteration; ``None`` =
            :meth:`default_scheduler`. Schedulers with ``resolve_total`` get the run length.
        weight_decay: override of the optimizer's weight decay for decayed groups (norms, biases,
            position embeddings, tokens and CBSA step sizes are never decayed).
        layer_decay: layer-wise lr decay factor over encoder blocks (e.g. 0.65), or ``None``.
        head_lr_scale: lr multiplier of everything outside the encoder (neck, head), on top of the layer
            decay (which gives them the full lr): fine-tuning pretrained weights with a fresh head often
            wants e.g. 10 (``finetune_det_cpu.yaml``). Must be > 0.
        freeze: glob patterns of parameter names to freeze (e.g. ``["model.encoder.*"]``).
        weights: weights-only initialization of ``model`` at the start of a fresh ``fit`` (not when
            resuming with ``--ckpt_path``): a checkpoint of this project, a plain state dict, the authors'
            released Segmenter or CBT checkpoints, or timm/DINOv2 ViT weights (encoder only). Weights
            meant for the encoder must fit it (only CBSA step sizes may start fresh) and a checkpoint of
            this project must come from the same task class, else a ``CheckpointError`` names the keys
            and shapes; a head for another class count keeps its fresh initialization (reported).
        weights_strict: ``False`` turns those errors into warnings and loads the tensors that fit.
    """

    def __init__(self, optimizer: OptimizerCallable | None = None,
                 lr_scheduler: LRSchedulerCallable | None = None, weight_decay: float | None = None,
                 layer_decay: float | None = None, freeze: list[str] | None = None,
                 weights: str | None = None, weights_strict: bool = True, head_lr_scale: float = 1.0) -> None:
        super().__init__()
        if isinstance(head_lr_scale, bool) or not isinstance(head_lr_scale, (int, float)) or not head_lr_scale > 0:
            raise ConfigError(f"model head_lr_scale={head_lr_scale!r} is invalid: give an lr multiplier > 0")
        self.head_lr_scale = float(head_lr_scale)
        self.weights = weights
        self.weights_strict = weights_strict
        self.optimizer_fn = optimizer
        self.lr_scheduler_fn = lr_scheduler
        self.weight_decay = weight_decay
        self.layer_decay = layer_decay
        self.freeze_patterns = list(freeze or [])

    #: the protocol type the task evaluates with (set by the tasks: SegEvaluation, DetEvaluation); the
    #: datamodules of the same kind declare it too (:func:`cbsa_dense.cli.lightning_cli.check_task_and_data`)
    evaluation_type: type | None = None
    _evaluation = None

    @property
    def evaluation(self):
        """The evaluation protocol in use: the one given (or adopted from the datamodule at setup), else the
        protocol type's defaults; ``None`` for a task without ``evaluation_type``."""
        if self._evaluation is not None or self.evaluation_type is None:
            return self._evaluation
        return self.evaluation_type()

    @evaluation.setter
    def evaluation(self, value) -> None:
        from cbsa_dense.tasks.eval_protocol import evaluation_from

        self._evaluation = evaluation_from(self.evaluation_type, value)
        self.on_evaluation_change()

    def on_evaluation_change(self) -> None:
        """Called after ``evaluation`` is set (detection rebuilds its metrics for the new detection limits)."""

    def apply_freeze(self) -> list[str]:
        """Freeze the parameters matching ``freeze``; returns their names. Call at the end of ``__init__``."""
        frozen = []
        for name, param in self.named_parameters():
            if any(fnmatch.fnmatch(name, pattern) for pattern in self.freeze_patterns):
                param.requires_grad_(False)
                frozen.append(name)
        self.frozen_names = frozen
        if self.freeze_patterns and not frozen:
            tops = sorted({".".join(name.split(".")[:2]) + ".*" for name, _ in self.named_parameters()})
            raise ConfigError(f"model freeze={self.freeze_patterns} matches no parameter of {type(self).__name__}: "
                              f"its parameters are under {', '.join(tops)} (e.g. freeze: [\"model.encoder.*\"])")
        return frozen

    def load_weights(self, path: str):
        """Weights-only initialization of ``self.model`` from ``path``; returns the load report."""
        from cbsa_dense.models.weights import load_model_weights
        from cbsa_dense.tasks.checkpoint_format import check_task_class

        opt_out = "--model.init_args.weights_strict false"

        def same_task(checkpoint: dict) -> None:
            check_task_class(checkpoint, path, self,
                             hint=f"give a {type(self).__name__} checkpoint, or set {opt_out} to load only the "
                                  f"tensors that fit (e.g. the encoder)")

        return load_model_weights(self.model, path, strict=getattr(self, "weights_strict", True),
                                  check_checkpoint=same_task, opt_out=opt_out)

    def check_frozen_start(self) -> None:
        """A fresh ``fit`` that freezes parameters must start them from weights: pretrained ones for the encoder's,
        ``weights`` for any. Frozen at their random initialization they would stay random, silently."""
        frozen = getattr(self, "frozen_names", [])
        if not frozen or self.weights:
            return
        encoder = getattr(getattr(self, "model", None), "encoder", None)
        pretrained = getattr(encoder, "pretrained_from", None)
        random = [name for name in frozen if not (pretrained and name.startswith("model.encoder."))]
        if random:
            shown = ", ".join(random[:2]) + (f" and {len(random) - 2} more" if len(random) > 2 else "")
            source = ("the encoder has no pretrained weights (model.init_args.encoder.init_args.pretrained: null) "
                      "and model.init_args.weights is not set" if not pretrained and encoder is not None
                      else "model.init_args.weights is not set")
            raise ConfigError(f"model freeze={self.freeze_patterns} would keep {shown} at their random "
                              f"initialization: {source}; give the pretrained weights file, or set "
                              f"--model.init_args.freeze null to train everything from random init")

    def on_fit_start(self) -> None:
        if self.trainer.ckpt_path is None:
            self.check_frozen_start()
            if self.weights:
                self.load_weights(self.weights)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        info = dict(getattr(self, "data_info", None) or {})
        datamodule = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        for key in DATA_INFO_KEYS:
            value = getattr(datamodule, key, None)
            if value is not None:
                info[key] = _plain(value)
        checkpoint["data_info"] = info
        hparams = checkpoint.get("hyper_parameters")
        if isinstance(hparams, dict):
            # The checkpoint rebuilds its task from itself: no pretrained/weights file (their tensors are in the
            # state dict) and an ``arch`` encoder's sizes made explicit (another timm version builds the same
            # model). The replaced values are kept as ``checkpoint["provenance"]``.
            from cbsa_dense.tasks.checkpoint_format import self_contained

            encoder = getattr(getattr(self, "model", None), "encoder", None)
            stored_args = getattr(encoder, "stored_args", None)
            config, provenance = self_contained(hparams, stored_args() if callable(stored_args) else None)
            checkpoint["hyper_parameters"] = config
            if provenance:
                checkpoint["provenance"] = provenance

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        # Before Lightning's strict state-dict load: a checkpoint of another task class (segmentation
        # weights for a detection config) fails here with one line instead of a key-by-key RuntimeError.
        from cbsa_dense.tasks.checkpoint_format import check_num_classes, check_task_class

        path = getattr(self._trainer, "ckpt_path", None) if self._trainer is not None else None
        check_task_class(checkpoint, path or "being loaded", self,
                         hint=f"give a checkpoint of a {type(self).__name__} run, or leave out --config/--model "
                              f"(test, validate and predict rebuild the task stored in the checkpoint)")
        if getattr(self, "num_classes", None) is not None:
            check_num_classes(checkpoint, path or "being loaded", self.num_classes,
                              hint="evaluate it on data with those classes, or fine-tune it with "
                                   "--model.init_args.weights (a fresh head for the new classes)")
        self.data_info = checkpoint.get("data_info", {})
        evaluation = getattr(self, "evaluation", None)
        if evaluation is not None:
            from cbsa_dense.tasks.eval_protocol import check_against_training

            check_against_training(evaluation, self.data_info, where=f"checkpoint {path or 'being loaded'}")

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path, map_location=None, hparams_file=None, strict=None, **kwargs):
        """Lightning's ``load_from_checkpoint``, for a checkpoint written by ``cbsa-dense fit``: the task is
        rebuilt from the checkpoint alone (:func:`~cbsa_dense.tasks.loading.task_from_checkpoint`: no
        pretrained or weights file is read) with the evaluation protocol it records (sliding window, detection
        limits); ``kwargs`` override stored arguments. Other checkpoints (no LightningCLI ``_class_path``),
        an ``hparams_file`` or a file object go through Lightning's own loader."""
        from cbsa_dense.models.checkpoint import read_checkpoint
        from cbsa_dense.tasks.checkpoint_format import check_task_class
        from cbsa_dense.tasks.loading import task_from_checkpoint

        if hparams_file is None and isinstance(checkpoint_path, (str, Path)) and _plain_values(kwargs):
            checkpoint = read_checkpoint(checkpoint_path, mmap=True)
            if "_class_path" in (checkpoint.get("hyper_parameters") or {}):
                check_task_class(checkpoint, checkpoint_path, cls)
                return task_from_checkpoint(checkpoint, checkpoint_path, map_location or "cpu",
                                            strict=True if strict is None else strict, overrides=kwargs)
        return super().load_from_checkpoint(checkpoint_path, map_location=map_location, hparams_file=hparams_file,
                                            strict=strict, **kwargs)

    def num_encoder_layers(self) -> int | None:
        """Encoder depth for layer-wise decay (``encoder.blocks`` length when present)."""
        encoder = getattr(self, "encoder", None) or getattr(getattr(self, "model", None), "encoder", None)
        blocks = getattr(encoder, "blocks", None)
        return len(blocks) if blocks is not None else None

    def default_optimizer(self, params) -> torch.optim.Optimizer:
        """Used when no optimizer is configured: AdamW, lr 1e-4, weight decay 0.05."""
        return torch.optim.AdamW(params, lr=1e-4, weight_decay=0.05)

    def default_scheduler(self, optimizer: torch.optim.Optimizer):
        """Used when no scheduler is configured: poly decay (power 0.9) over the run."""
        from cbsa_dense.tasks.schedulers import WarmupPolyLR

        return WarmupPolyLR(optimizer, power=0.9)

    def configure_optimizers(self):
        groups = param_groups(self, weight_decay=self.weight_decay, layer_decay=self.layer_decay,
                              num_layers=self.num_encoder_layers(), head_lr_scale=self.head_lr_scale)
        for group in groups:
            group.pop("names")
        make_optimizer = self.optimizer_fn or self.default_optimizer
        optimizer = make_optimizer(groups)
        apply_lr_scale(optimizer)
        scheduler = (self.lr_scheduler_fn or self.default_scheduler)(optimizer)
        if hasattr(scheduler, "resolve_total") and self._trainer is not None:
            scheduler.resolve_total(self.trainer.estimated_stepping_batches)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def _plain(value):
    """Tensors / arrays / tuples -> plain Python (JSON-friendly) values."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _plain_values(value) -> bool:
    """True for config-like values (what a checkpoint's hyper-parameters hold), False for built objects."""
    if isinstance(value, dict):
        return all(_plain_values(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return all(_plain_values(v) for v in value)
    return value is None or isinstance(value, (str, int, float, bool))


def adopt_evaluation(own, datamodule):
    """The protocol a task evaluates with once attached to ``datamodule``: its own (``None``: the datamodule's),
    resolved by the datamodule (detection: ``image_size`` / ``native_scale`` from the training data).

    Raises:
        ConfigError: the task and the datamodule were given different protocols (built in Python; the CLI
            links the task's into the datamodule).
    """
    data_protocol = getattr(datamodule, "evaluation", None)
    if data_protocol is None:
        return own
    if own is None:
        return data_protocol
    resolve = getattr(datamodule, "resolve_evaluation", None)
    mine = resolve(own) if callable(resolve) else own
    if mine != data_protocol:
        raise ConfigError(f"the task evaluates with {mine} but the datamodule {type(datamodule).__name__} with "
                          f"{data_protocol}: give both the same evaluation (the CLI links the task's into the data)")
    return mine


def under_cli() -> bool:
    """True while LightningCLI instantiates a module: its hyper-parameters are then the config (class paths
    and options), not the built modules, so encoders and head factories can be saved with the rest."""
    from lightning.pytorch.core.mixins.hparams_mixin import _given_hyperparameters

    return _given_hyperparameters.get() is not None


def run_dir(trainer) -> Path:
    """The run's log directory, WITHOUT a collective call.

    ``Trainer.log_dir`` broadcasts from rank 0, so calling it from code that only rank 0 runs (picture
    callbacks, rank-zero reports) deadlocks under DDP. Only rank 0 writes into the directory.
    """
    logger = trainer.logger
    directory = getattr(logger, "log_dir", None) or getattr(logger, "save_dir", None) if logger else None
    return Path(directory or trainer.default_root_dir)
