"""Checks the ``cbsa-dense`` entry point runs before any work: parse errors, output locations, and the
evaluation protocol carried by a checkpoint. (Config files are checked as they are resolved and composed:
:mod:`cbsa_dense.config_files`.)"""

from __future__ import annotations

import importlib
import re
import sys
import tempfile
from pathlib import Path

from lightning.pytorch.utilities.rank_zero import rank_zero_only

from cbsa_dense.errors import OutputError


def apply_eval_protocol(config, stored: dict, ckpt_path: str, stored_model: dict | None = None) -> dict[str, str]:
    """Fill the evaluation protocol of a parsed ``validate``/``test``/``predict`` config from a checkpoint.

    Segmentation: ``model.init_args.inference`` is taken from ``stored["inference"]`` when the config leaves
    it ``None``; the datamodule's ``eval_scale`` from ``stored["eval_scale"]`` when the config keeps the
    datamodule class's default. Detection: ``model.init_args.max_detection_thresholds`` from the stored
    ones when the config leaves it ``None``, the datamodule's ``image_size`` (longest-side resize, padded
    square) from the stored one when the config keeps the class default; the head's detection limit
    (``detections_per_img``) is part of the task config (``stored_model``: the checkpoint's) and is
    reported. Prints one line with the protocol and the source of each part.

    Returns:
        ``{part: source}`` for the parts that apply (``inference``, ``eval_scale``,
        ``max_detection_thresholds``, ``image_size``).
    """
    from jsonargparse import Namespace

    from cbsa_dense.tasks.sliding_window import SlidingWindowInference

    model_args = getattr(config.get("model"), "init_args", None)
    sources: dict[str, str] = {}
    parts = []
    if model_args is not None and "inference" in model_args:
        source = "config/command line"
        if model_args.get("inference") is None:
            source = "default: whole image; the checkpoint records no protocol"
            if stored.get("inference"):
                inference = stored["inference"]
                model_args["inference"] = Namespace(class_path=inference["class_path"],
                                                    init_args=Namespace(**inference["init_args"]))
                source = "checkpoint"
        spec = model_args.get("inference")
        described = (SlidingWindowInference(**dict(vars(spec.init_args))) if spec is not None
                     else SlidingWindowInference()).describe()
        sources["inference"] = source
        parts.append(f"inference {described} (from the {source})")
    data = config.get("data")
    data_args = getattr(data, "init_args", None)
    if data_args is not None and "eval_scale" in data_args:
        source = "config/command line"
        if "eval_scale" in stored and _is_class_default(data.class_path, "eval_scale", data_args["eval_scale"]):
            data_args["eval_scale"] = tuple(stored["eval_scale"]) if stored["eval_scale"] is not None else None
            source = "checkpoint"
        value = data_args["eval_scale"]
        sources["eval_scale"] = source
        parts.append(f"eval_scale {list(value) if value is not None else None} (from the {source})")
    detection = model_args is not None and "max_detection_thresholds" in model_args
    if detection:
        source = "config/command line"
        if model_args.get("max_detection_thresholds") is None:
            source = "default; the checkpoint records none"
            if stored.get("max_detection_thresholds"):
                model_args["max_detection_thresholds"] = list(stored["max_detection_thresholds"])
                source = "checkpoint"
        value = model_args.get("max_detection_thresholds") or [1, 10, 100]
        sources["max_detection_thresholds"] = source
        parts.append(f"max_detection_thresholds {list(value)} (from the {source})")
        head_args = getattr(model_args.get("head"), "init_args", None)
        stored_head = ((stored_model or {}).get("init_args", {}).get("head") or {}).get("init_args") or {}
        for key in ("detections_per_img", "box_detections_per_img"):
            if head_args is not None and key in head_args:
                source = "checkpoint" if stored_head.get(key) == head_args[key] else "config/command line"
                parts.append(f"{key} {head_args[key]} (from the {source})")
    if data_args is not None and "image_size" in data_args and detection:
        source = "config/command line"
        if stored.get("image_size") is not None and _is_class_default(data.class_path, "image_size",
                                                                      data_args["image_size"]):
            data_args["image_size"] = stored["image_size"]
            source = "checkpoint"
        sources["image_size"] = source
        parts.append(f"image_size {data_args['image_size']}, longest side resized, zero-padded square (from the "
                     f"{source})")
    if parts and rank_zero_only.rank == 0:
        print(f"evaluation protocol of {ckpt_path}: " + "; ".join(parts), file=sys.stderr)
    return sources


def _is_class_default(class_path: str, name: str, value) -> bool:
    import inspect

    module, _, cls_name = class_path.rpartition(".")
    try:
        parameter = inspect.signature(getattr(importlib.import_module(module), cls_name)).parameters[name]
    except (ImportError, AttributeError, KeyError, ValueError):
        return False
    return _as_list(parameter.default) == _as_list(value)


def _as_list(value):
    return list(value) if isinstance(value, (tuple, list)) else value


def drop_weight_files(config) -> list[str]:
    """Set every file-reading model argument (an encoder's ``pretrained``, the task's ``weights``) of a parsed
    config to ``None``: with ``--ckpt_path`` the weights come from the checkpoint, so those files (often left
    behind on the training machine) are not read. Returns the keys it cleared."""
    from cbsa_dense.models.checkpoint import FILE_ARGS

    model = config.get("model")
    init_args = getattr(model, "init_args", None)
    if init_args is None:
        return []
    cleared = [key for key, value in init_args.items()
               if key.rpartition(".")[2] in FILE_ARGS and isinstance(value, str)]
    for key in cleared:
        init_args[key] = None
    return cleared


def check_writable(directory: str | Path, what: str) -> None:
    """Create ``directory`` if needed and make sure a file can be written there (OutputError if not)."""
    path = Path(directory)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".cbsa-dense-write-test-"):
            pass
    except OSError as error:
        raise OutputError(f"cannot write {what} {path}: {error.strerror or error}; choose a writable location") \
            from error


_UNION_NOISE = ("Does not validate against any of the Union subtypes", "Subtypes:", "Errors:", "Given value type:")


def condense_parse_error(message: str) -> str:
    """One line from jsonargparse's nested report: the full key of the offending setting (``data.init_args.mean``),
    the class it belongs to, and the innermost cause, instead of the dump of every Union subtype tried."""
    keys: list[str] = []
    causes: list[str] = []
    expected: list[str] = []
    given = owner = None
    for raw in message.splitlines():
        line = raw.strip().removeprefix("- ").strip()
        if not line or line.startswith(_UNION_NOISE):
            continue
        key = re.match(r'Parser key "([^"]+)":\s*(.*)$', line)
        cls = re.match(r"Problem with given class_path '([^']+)':\s*(.*)$", line)
        if (key or cls) and (causes or expected):
            break                                      # the next alternative of a Union: the first one is the story
        if key:
            keys += ["init_args", key.group(1)] if owner and keys and keys[-1] != "init_args" else [key.group(1)]
        elif cls:
            owner = cls.group(1)
        if key or cls:
            causes += [(key or cls).group(2)] if (key or cls).group(2) else []
        elif re.match(r"Expected a <class '([^']+)'>$", line):
            expected.append(re.match(r"Expected a <class '([^']+)'>$", line).group(1))
        elif line.startswith("Given value:"):
            given = given or line.split(":", 1)[1].strip()
        else:
            causes.append(line)
    if not causes and expected:
        kinds = " or ".join(dict.fromkeys("null" if e == "NoneType" else e for e in expected))
        causes = [f"expected {kinds}, got {given!r}" if given is not None else f"expected {kinds}"]
    text = re.sub(r"<class '(?:builtins\.)?([^']+)'>", r"\1", "; ".join(c.rstrip(".") for c in causes))
    text = text or " ".join(message.split())
    where = ".".join(keys)
    if where:
        text = f"--{where}" + (f" ({owner})" if owner else "") + f": {text}"
    return f"{text}; see --help for the accepted options"

