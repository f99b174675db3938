"""Optional ``torch.compile`` of the encoder, as a callback (no task change needed)."""

from __future__ import annotations

from lightning.pytorch import Callback, LightningModule, Trainer

from cbsa_dense.errors import ConfigError


def find_encoder(pl_module: LightningModule):
    """The task's encoder: ``task.model.encoder`` or ``task.encoder``; ``None`` if there is none."""
    model = getattr(pl_module, "model", None)
    return getattr(model, "encoder", None) or getattr(pl_module, "encoder", None)


class CompileEncoder(Callback):
    """Compile the encoder in place (``nn.Module.compile``: parameter names and checkpoints unchanged).

    Args:
        mode: ``torch.compile`` mode (``None``, ``"reduce-overhead"``, ``"max-autotune"``).
        dynamic: compile for dynamic shapes (sliding-window and multi-scale evaluation change sizes).
        fullgraph: fail on graph breaks instead of falling back.

    Example (``trainer.callbacks`` of a config)::

        - class_path: cbsa_dense.callbacks.CompileEncoder
          init_args: {dynamic: true}
    """

    def __init__(self, mode: str | None = None, dynamic: bool | None = None, fullgraph: bool = False) -> None:
        self.kwargs = {"mode": mode, "dynamic": dynamic, "fullgraph": fullgraph}
        self.compiled = False

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if self.compiled:
            return
        encoder = find_encoder(pl_module)
        if encoder is None:
            raise ConfigError(f"CompileEncoder: {type(pl_module).__name__} has no 'model.encoder' or 'encoder'")
        encoder.compile(**self.kwargs)
        self.compiled = True
