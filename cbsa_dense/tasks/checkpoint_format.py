"""What a checkpoint of a task holds, read without Lightning: the task config it stores (this release's layout,
older layouts mapped to it once, the evaluation protocol included), its class count, and whether it belongs to
the task being built.

The files themselves are read by :mod:`cbsa_dense.models.checkpoint` (tensors only); the CLI replays the
task config (:mod:`cbsa_dense.cli.stored_run`) and the Python loaders rebuild from it
(:mod:`cbsa_dense.tasks.loading`).
"""

from __future__ import annotations

import importlib
from pathlib import Path

from cbsa_dense.errors import CheckpointError
from cbsa_dense.models.checkpoint import read_checkpoint


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

    Its ``evaluation`` is the protocol the model was evaluated with, also for checkpoints written before that
    argument existed (:func:`_with_evaluation`).

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
    _with_evaluation(hparams, checkpoint)
    _with_box_activation(hparams)
    return self_contained(hparams)[0]


def _with_box_activation(hparams: dict) -> None:
    """An ``FCOSHead`` stored before its ``box_activation`` argument trained with torchvision's ReLU: it stays
    so (the new default, ``exp``, would read its weights differently)."""
    head = hparams.get("head")
    if not isinstance(head, dict) or _class_name(str(head.get("class_path", ""))) != "FCOSHead":
        return
    init_args = dict(head.get("init_args") or {})
    if "box_activation" not in init_args:
        hparams["head"] = {**head, "init_args": {**init_args, "box_activation": "relu"}}


def _with_evaluation(hparams: dict, checkpoint: dict) -> None:
    """Checkpoints written before the task's ``evaluation`` argument: their protocol, read from where it was
    kept then (:func:`~cbsa_dense.tasks.eval_protocol.legacy_evaluation`), becomes ``evaluation``; the old
    task arguments (``inference``, ``max_detection_thresholds``) go. Tasks without an ``evaluation_type``
    (not a cbsa_dense segmentation or detection task) are left as they are."""
    if "evaluation" in hparams:
        return
    task_class = _import_class(str(hparams.get("_class_path", "")))
    kind = getattr(task_class, "evaluation_type", None)
    if kind is None:
        return
    from cbsa_dense.tasks.eval_protocol import legacy_evaluation

    hparams["evaluation"] = legacy_evaluation(hparams, checkpoint, kind)
    hparams.pop("inference", None)
    hparams.pop("max_detection_thresholds", None)


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


def task_config(checkpoint: dict) -> dict | None:
    """The task config a checkpoint stores, ``{"class_path": ..., "init_args": {...}}``, to be replayed by the
    CLI: this release's layout (:func:`task_hparams`, the evaluation protocol included), without Lightning's
    bookkeeping keys and without the arguments the CLI links from the data (:data:`LINKED_TASK_ARGS`). ``None``
    when the checkpoint records no task class (not written by a LightningCLI-built task)."""
    hparams = task_hparams(checkpoint)
    class_path = hparams.get("_class_path")
    if not class_path:
        return None
    init_args = {k: v for k, v in hparams.items() if not k.startswith("_") and k not in LINKED_TASK_ARGS}
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
