"""Reading checkpoint and weight files, and loading them with a report. No Lightning imports.

Every file goes through :func:`read_checkpoint`: ``torch.load(weights_only=True)`` (a pickle could run
code) or safetensors, with one-line :class:`~cbsa_dense.errors.CheckpointError` messages for a missing
file, a directory, an empty, truncated or foreign file, and a file holding Python objects.
"""

from __future__ import annotations

import fnmatch
import importlib
import logging
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from cbsa_dense.errors import CheckpointError

log = logging.getLogger(__name__)

_WRAPPER_KEYS = ("state_dict", "model", "module", "model_state_dict")

#: ``--ckpt_path`` values that Lightning resolves itself (not file paths).
LIGHTNING_CKPT_ALIASES = ("best", "last", "hpc", "registry")


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """The checkpoint or weights file does not exist (also a ``FileNotFoundError``)."""


def _first_line(err: BaseException, limit: int = 160) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    for line in lines:                                    # the informative line of torch's long messages
        if line.startswith(("Unsupported global", "Unsupported operand", "Trying to load unsupported")):
            return line[:limit]
    text = lines[0] if lines else type(err).__name__
    return (text if len(text) <= limit else text[:limit] + "...")


def read_checkpoint(path: str | Path, *, what: str = "checkpoint", mmap: bool = False) -> dict:
    """Read a checkpoint or weights file as a dict, safely (``weights_only=True``) and on the CPU.

    ``.safetensors`` files give their tensor dict; everything else goes through ``torch.load`` (Lightning
    ``.ckpt``, ``.pth``, ``.pth.tar``, ``.bin``). ``mmap=True`` maps tensor storage instead of reading it
    (cheap checks of large files).

    Raises:
        CheckpointError: the path is a directory; the file is empty, truncated, not a PyTorch/safetensors
            file, holds Python objects that a weights-only load refuses, or does not hold a dict
            (one line naming the file). A missing file raises :class:`CheckpointNotFoundError` (a
            ``CheckpointError`` and a ``FileNotFoundError``).
    """
    path = Path(path)
    if path.is_dir():
        inside = sorted(path.rglob("*.ckpt"))[:1] or sorted(path.rglob("*.pth"))[:1]
        example = f" (e.g. {inside[0]})" if inside else ""
        raise CheckpointError(f"{path} is a directory, not a {what} file: give the file itself{example}")
    if not path.exists():
        raise CheckpointNotFoundError(f"{what} file {path} does not exist: check the path")
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(f"{what} file {path} is empty (0 bytes): it was not written completely; "
                              f"use another copy")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except Exception as err:  # SafetensorError, OSError
            raise CheckpointError(f"cannot read {what} file {path} ({size} bytes) as safetensors, it is "
                                  f"truncated or not a safetensors file ({_first_line(err)}): use another "
                                  f"copy") from err
    with open(path, "rb") as handle:
        magic = handle.read(4)
    is_zip = zipfile.is_zipfile(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap and is_zip)
    except Exception as err:  # unpickling errors come in many types
        detail = _first_line(err)
        if "Weights only load failed" in str(err):
            raise CheckpointError(f"cannot read {path} as a weights-only torch checkpoint: it holds Python "
                                  f"objects that a safe load refuses ({detail}); re-save it with tensors and "
                                  f"plain containers only (e.g. torch.save(model.state_dict(), ...))") from err
        if magic.startswith(b"PK") and not is_zip or isinstance(err, EOFError):
            raise CheckpointError(f"{what} file {path} is truncated ({size} bytes, the end of the archive is "
                                  f"missing): it was not written or copied completely; use another copy") from err
        if magic.startswith(b"PK") or magic[:1] == b"\x80":
            raise CheckpointError(f"{what} file {path} is corrupt, torch.load fails ({detail}): use another "
                                  f"copy") from err
        raise CheckpointError(f"{path} is not a PyTorch checkpoint (it starts with {magic!r}, torch.load "
                              f"fails: {detail}): give a file written by torch.save, Lightning or "
                              f"safetensors") from err
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a checkpoint (expected a dict: a "
                              f"state dict or a checkpoint with 'state_dict' / 'model')")
    return obj


def state_dict_of(obj: dict, path: str | Path = "the checkpoint") -> dict[str, torch.Tensor]:
    """The tensors of a read checkpoint: unwraps ``{"state_dict": ...}``, ``{"model": ...}`` (Segmenter,
    DeiT), Lightning checkpoints, and strips a ``module.`` (DDP) prefix.

    Raises:
        CheckpointError: no tensors found (names the file and its top-level keys).
    """
    while isinstance(obj, dict):
        inner = next((obj[k] for k in _WRAPPER_KEYS if isinstance(obj.get(k), dict)), None)
        if inner is None:
            break
        obj = inner
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)} if isinstance(obj, dict) else {}
    if not tensors:
        top = list(obj)[:10] if isinstance(obj, dict) else type(obj).__name__
        raise CheckpointError(f"{path} contains no tensors (top-level keys: {top}): give a weights file or a "
                              f"checkpoint with a 'state_dict'")
    if all(k.startswith("module.") for k in tensors):
        tensors = {k[len("module."):]: v for k, v in tensors.items()}
    return tensors


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict from ``.safetensors``, ``.pth``/``.pt``/``.bin``/``.ckpt``/``.pth.tar``
    (:func:`read_checkpoint`, then :func:`state_dict_of`).

    Raises:
        CheckpointError: see :func:`read_checkpoint`; or the file holds no tensors.
    """
    return state_dict_of(read_checkpoint(path, what="weights"), path)


# ------------------------------------------------------------------------------------- task checkpoints
def _class_name(class_path: str) -> str:
    return class_path.rpartition(".")[2]


def _class_path_of(task: object) -> str:
    """``module.Class`` of a task given as an instance, a class, or a class path."""
    if isinstance(task, str):
        return task
    cls = task if isinstance(task, type) else type(task)
    return f"{cls.__module__}.{cls.__qualname__}"


def _import_class(class_path: str) -> type | None:
    module, _, name = class_path.rpartition(".")
    try:
        found = getattr(importlib.import_module(module), name)
    except Exception:  # not importable: only the names can be compared
        return None
    return found if isinstance(found, type) else None


def _same_task(stored: str, own: str) -> bool:
    if stored == own:
        return True
    stored_cls, own_cls = _import_class(stored), _import_class(own)
    if stored_cls is None or own_cls is None:
        return False
    return issubclass(own_cls, stored_cls) or issubclass(stored_cls, own_cls)


def check_task_class(checkpoint: dict, path: str | Path, task: object, hint: str = "") -> None:
    """Check that a Lightning checkpoint was written by the task class it is loaded into.

    ``task`` is the task (instance, class or class path). Uses ``hyper_parameters._class_path``
    (written by LightningCLI); checkpoints without it pass.

    Raises:
        CheckpointError: ``the checkpoint <path> holds a <Class> (hyper_parameters _class_path ...), the
            config builds <Class>`` + ``hint``.
    """
    hparams = checkpoint.get("hyper_parameters")
    class_path = hparams.get("_class_path") if isinstance(hparams, dict) else None
    own = _class_path_of(task)
    if not isinstance(class_path, str) or _same_task(class_path, own):
        return
    raise CheckpointError(f"the checkpoint {path} holds a {_class_name(class_path)} (hyper_parameters "
                          f"_class_path {class_path}), the config builds {_class_name(own)}"
                          + (f": {hint}" if hint else ""))


#: Arguments the CLI links from the datamodule into the task (``data.num_classes``): they are not part of
#: a task config, so the task config stored in a checkpoint is replayed without them.
LINKED_TASK_ARGS = ("num_classes",)


def task_hparams(checkpoint: dict) -> dict:
    """The task config stored in a checkpoint (its ``hyper_parameters``), in this release's layout, without
    the files its training run read (:func:`self_contained`; older checkpoints still name them).

    Checkpoints of 0.1 stored a segmentation task as ``model: {Segmentor: {encoder, head: {in_channels,
    num_classes, ...}}}``; this returns the one-assembly-path layout (``encoder``, ``head`` without the
    widths, ``num_classes``) so that they load unchanged (their state-dict keys are the same).
    """
    hparams = dict(checkpoint.get("hyper_parameters") or {})
    old = hparams.get("model")
    if isinstance(old, dict) and "Segmentor" in str(old.get("class_path", "")):
        init = dict(old.get("init_args") or {})
        hparams.pop("model")
        head = dict(init.get("head") or {})
        head_args = dict(head.get("init_args") or {})
        num_classes = head_args.pop("num_classes", None)
        head_args.pop("in_channels", None)
        hparams["encoder"] = init.get("encoder")
        hparams["head"] = {**head, "init_args": head_args}
        if num_classes is not None:
            hparams["num_classes"] = num_classes
    return self_contained(hparams)[0]


#: Arguments that name files read while a task is built: encoder ``pretrained`` weights, task ``weights``.
#: Once training has run, their tensors are in the checkpoint's state dict: the paths are history.
FILE_ARGS = ("pretrained", "weights")


def self_contained(hparams: dict, encoder_args: dict | None = None) -> tuple[dict, dict]:
    """A task config that rebuilds the model from the checkpoint alone, and what it left out.

    Every string :data:`FILE_ARGS` value (at any depth) becomes ``None``; ``encoder_args`` (the built
    encoder's ``stored_args()``: its resolved architecture instead of a timm ``arch`` name) replace the
    encoder's ``init_args``. The input is not modified (containers are copied, other values shared).

    Returns:
        ``(config, provenance)``: provenance maps the dotted key of each replaced value to the value
        (``{"encoder.init_args.pretrained": "/w/enc.pth", "encoder.init_args.arch": "vit_small_..."}``).
    """
    provenance: dict = {}

    def copy(node, where: str):
        if isinstance(node, dict):
            out = {}
            for key, value in node.items():
                if key in FILE_ARGS and isinstance(value, str):
                    provenance[where + key] = value
                    value = None
                out[key] = copy(value, f"{where}{key}.")
            return out
        if isinstance(node, list):
            return [copy(value, where) for value in node]
        return node

    config = copy(hparams, "")
    encoder = config.get("encoder")
    if encoder_args and isinstance(encoder, dict) and isinstance(encoder.get("init_args"), dict):
        init = encoder["init_args"]
        for key, value in encoder_args.items():
            if key in init and init[key] != value and init[key] is not None and key not in FILE_ARGS:
                provenance[f"encoder.init_args.{key}"] = init[key]
            init[key] = value
    return config, provenance


def stored_eval_args(checkpoint: dict) -> dict:
    """Task arguments of the evaluation protocol kept beside the hyper-parameters by earlier versions
    (``checkpoint["eval_protocol"]``): ``inference`` (segmentation) and ``max_detection_thresholds``
    (detection), those present. Checkpoints written now store them as hyper-parameters."""
    protocol = checkpoint.get("eval_protocol") or {}
    return {key: protocol[key] for key in ("inference", "max_detection_thresholds") if protocol.get(key) is not None}


def stored_data_eval(checkpoint: dict) -> dict:
    """The data's evaluation settings a checkpoint records: ``eval_scale`` (segmentation; ``None`` = original
    size) and ``image_size``, ``eval_mode``, ``tile_overlap`` (detection), those present, from ``data_info`` (earlier versions:
    ``eval_protocol``)."""
    info = checkpoint.get("data_info") or {}
    protocol = checkpoint.get("eval_protocol") or {}
    found = {}
    for key in ("eval_scale", "image_size", "eval_mode", "tile_overlap", "native_scale"):
        for source in (info, protocol):
            if key in source:
                found[key] = source[key]
                break
    return found


def task_config(checkpoint: dict) -> dict | None:
    """The task config a checkpoint stores, ``{"class_path": ..., "init_args": {...}}``, to be replayed by the
    CLI: this release's layout (:func:`task_hparams`), without Lightning's bookkeeping keys and without the
    arguments the CLI links from the data (:data:`LINKED_TASK_ARGS`), with the evaluation settings that
    earlier versions kept beside the hyper-parameters (:func:`stored_eval_args`). ``None`` when the checkpoint records no
    task class (not written by a LightningCLI-built task)."""
    hparams = task_hparams(checkpoint)
    class_path = hparams.get("_class_path")
    if not class_path:
        return None
    init_args = {k: v for k, v in hparams.items() if not k.startswith("_") and k not in LINKED_TASK_ARGS}
    init_args.update({k: v for k, v in stored_eval_args(checkpoint).items() if init_args.get(k) is None})
    return {"class_path": class_path, "init_args": init_args}


def stored_num_classes(checkpoint: dict) -> int | None:
    """The class count a checkpoint was trained for (its task's ``num_classes``), if recorded."""
    value = task_hparams(checkpoint).get("num_classes")
    if value is None:
        value = (checkpoint.get("data_info") or {}).get("num_classes")
    return int(value) if value is not None else None


def check_num_classes(checkpoint: dict, path: str | Path, num_classes: int, hint: str = "") -> None:
    """CheckpointError when a checkpoint was trained for another class count than the model being built."""
    stored = stored_num_classes(checkpoint)
    if stored is not None and stored != int(num_classes):
        raise CheckpointError(f"checkpoint {path} was trained for {stored} classes but the model is built for "
                              f"{num_classes} (num_classes comes from the data: its class names / categories)"
                              + (f"; {hint}" if hint else ""))


def check_weights_path(path: str | Path | None, task: object, strict: bool = True) -> None:
    """Early check of a task's ``weights`` file (before data setup): readable, and, for a checkpoint of this
    project under ``strict``, written by ``task``'s class. The full check happens when it is loaded.

    Raises:
        CheckpointError: see :func:`read_checkpoint` and :func:`check_task_class`.
    """
    if not path:
        return
    checkpoint = read_checkpoint(path, what="weights", mmap=True)
    if strict and isinstance(checkpoint.get("state_dict"), dict):
        own = _class_name(_class_path_of(task))
        check_task_class(checkpoint, path, task,
                         hint=f"give a {own} checkpoint, or set --model.init_args.weights_strict false to load "
                              f"only the tensors that fit (e.g. the encoder)")


# ------------------------------------------------------------------------------------------ loading
@dataclass
class LoadReport:
    """What :func:`load_matching` did: keys absent from the file, keys the model lacks, shape conflicts."""

    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple, tuple]] = field(default_factory=list)
    loaded: int = 0

    def summary(self, limit: int = 20) -> str:
        """Three lines (missing, unexpected, shape-mismatched keys), each listing at most ``limit`` keys and
        saying so when it lists fewer than there are."""
        def count(items: list, note: str = "") -> str:
            shown = f", first {limit} shown" if len(items) > limit else ""
            return f"({len(items)}{note}{shown})"

        lines = [f"missing keys {count(self.missing)}: {self.missing[:limit]}",
                 f"unexpected keys {count(self.unexpected)}: {self.unexpected[:limit]}",
                 f"shape-mismatched keys {count(self.mismatched, ', left at init')}: "
                 + ", ".join(f"{k} file{tuple(a)} vs model{tuple(b)}" for k, a, b in self.mismatched[:limit])]
        return "\n".join(lines)


def _matches(key: str, patterns: Sequence[str]) -> bool:
    return any(fnmatch.fnmatchcase(key, pattern) for pattern in patterns)


def _examples(items: list[str], limit: int = 3) -> str:
    return ", ".join(items[:limit]) + (", ..." if len(items) > limit else "")


def _layout_hint(mismatched: list[tuple[str, tuple, tuple]]) -> str:
    """A concrete fix for the common attention-layout conflicts (timm qkv vs CBSA shared)."""
    for key, file_shape, model_shape in mismatched:
        if key.endswith("attn.qkv.weight") and len(file_shape) == len(model_shape) == 2:
            if file_shape[0] == 3 * model_shape[0]:
                return ("the file's attention has separate q, k, v (timm's qkv) but the model's CBSA layers use "
                        "variant 'shared': set variant: qkv on CBSAAttention (or use SoftmaxAttention)")
            if 3 * file_shape[0] == model_shape[0]:
                return ("the file's attention has one shared projection (CBSA variant 'shared') but the model's "
                        "layers have q, k, v: set variant: shared on CBSAAttention")
    return ""


def load_matching(module: nn.Module, state_dict: dict[str, torch.Tensor], source: str = "state dict", *,
                  strict: bool = False, scope: str = "", may_reinit: Sequence[str] = (),
                  opt_out: str = "") -> LoadReport:
    """Load the tensors whose names and shapes match; report the rest.

    Args:
        module: the model to load into.
        state_dict: tensors in ``module``'s key space.
        source: what the tensors come from (the file), for messages.
        strict: within ``scope``, a tensor of the file that the model lacks (unexpected) or that has another
            shape (mismatched), and a tensor of the model absent from the file (missing), is an error unless
            its key matches ``may_reinit`` (glob patterns of documented fresh parameters, e.g. CBSA step
            sizes, a classification head). Nothing is loaded then. Without ``strict`` they are logged at
            WARNING and left at their initialization.
        scope: key prefix the strict check covers (``"encoder."`` for encoder weights in a whole model;
            ``""`` = every key).
        may_reinit: glob patterns of keys that may be missing or shape-mismatched under ``strict``.
        opt_out: the setting that turns ``strict`` off, named in the error (e.g. ``pretrained_strict: false``).

    Raises:
        CheckpointError: under ``strict``, one line naming the file, the first few keys of each kind with
            their shapes, and what to do.
    """
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
    mismatched_keys = {m[0] for m in report.mismatched}
    report.missing = [k for k in own if k not in usable and k not in mismatched_keys]
    report.loaded = len(usable)
    if strict:
        unexpected = [k for k in report.unexpected if k.startswith(scope)]
        mismatched = [m for m in report.mismatched if m[0].startswith(scope) and not _matches(m[0], may_reinit)]
        missing = [k for k in report.missing if k.startswith(scope) and not _matches(k, may_reinit)]
        if unexpected or mismatched or missing:
            def count(n: int, what: str) -> str:
                return f"{n} {what}" + ("s" if n > 1 else "")

            parts = []
            if mismatched:
                parts.append(count(len(mismatched), "shape-mismatched tensor") + " ("
                             + _examples([f"{k} file {tuple(a)} vs model {tuple(b)}" for k, a, b in mismatched])
                             + ")")
            if unexpected:
                parts.append(count(len(unexpected), "unexpected tensor") + " ("
                             + _examples([f"{k} {tuple(state_dict[k].shape)}" for k in unexpected]) + ")")
            if missing:
                parts.append(count(len(missing), "tensor") + f" missing from the file ({_examples(missing)})")
            target = type(module).__name__ + (f" {scope.rstrip('.')}" if scope else "")
            hint = _layout_hint(mismatched)
            fix = "; ".join(x for x in (hint, f"set {opt_out} to load the rest anyway (these tensors keep "
                                              f"their initialization)" if opt_out else "") if x)
            raise CheckpointError(f"{source} does not fit the {target}: {', '.join(parts)}"
                                  + (f"; {fix}" if fix else ""))
    module.load_state_dict(usable, strict=False)
    level = logging.WARNING if report.mismatched or report.missing or report.unexpected else logging.INFO
    log.log(level, "loaded %d/%d tensors from %s into %s\n%s", len(usable), len(own), source,
            type(module).__name__, report.summary())
    return report
