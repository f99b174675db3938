"""Reading weight files and loading them with a report. Pure functions, no Lightning.

Foreign files load with ``torch.load(weights_only=True)`` (a pickle could run code) or safetensors.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

log = logging.getLogger(__name__)

_WRAPPER_KEYS = ("state_dict", "model", "module", "model_state_dict")


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict from ``.safetensors``, ``.pth``/``.pt``/``.bin``/``.ckpt``/``.pth.tar``.

    Unwraps ``{"state_dict": ...}``, ``{"model": ...}`` (Segmenter, DeiT) and Lightning checkpoints,
    and strips a ``module.`` (DDP) prefix.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file holds no tensors (names the file).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        obj = load_file(str(path), device="cpu")
    else:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # unpickling errors come in many types
            raise ValueError(f"cannot read {path} as a weights-only torch checkpoint: {err}") from err
    while isinstance(obj, dict):
        inner = next((obj[k] for k in _WRAPPER_KEYS if isinstance(obj.get(k), dict)), None)
        if inner is None:
            break
        obj = inner
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)} if isinstance(obj, dict) else {}
    if not tensors:
        raise ValueError(f"{path} contains no tensors (top-level keys: {list(obj)[:10] if isinstance(obj, dict) else type(obj).__name__})")
    if all(k.startswith("module.") for k in tensors):
        tensors = {k[len("module."):]: v for k, v in tensors.items()}
    return tensors


@dataclass
class LoadReport:
    """What :func:`load_matching` did: keys absent from the file, keys the model lacks, shape conflicts."""

    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple, tuple]] = field(default_factory=list)

    def summary(self) -> str:
        lines = [f"missing keys ({len(self.missing)}): {self.missing[:20]}",
                 f"unexpected keys ({len(self.unexpected)}): {self.unexpected[:20]}",
                 f"shape-mismatched keys ({len(self.mismatched)}, left at init): "
                 + ", ".join(f"{k} file{tuple(a)} vs model{tuple(b)}" for k, a, b in self.mismatched[:20])]
        return "\n".join(lines)


def load_matching(module: nn.Module, state_dict: dict[str, torch.Tensor], source: str = "state dict") -> LoadReport:
    """Load the tensors whose names and shapes match; report the rest (logged at INFO/WARNING)."""
    own = module.state_dict()
    report = LoadReport()
    usable = {}
    for key, value in state_dict.items():
        if key not in own:
            report.unexpected.append(key)
        elif tuple(own[key].shape) != tuple(value.shape):
            report.mismatched.append((key, tuple(value.shape), tuple(own[key].shape)))
        else:
            usable[key] = value
    report.missing = [k for k in own if k not in usable and k not in {m[0] for m in report.mismatched}]
    module.load_state_dict(usable, strict=False)
    level = logging.WARNING if report.mismatched or report.missing else logging.INFO
    log.log(level, "loaded %d/%d tensors from %s into %s\n%s", len(usable), len(own), source,
            type(module).__name__, report.summary())
    return report
