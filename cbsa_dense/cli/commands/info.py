"""``cbsa-dense info --config CFG [--model.* / --data.* overrides]``: parameters and GFLOPs of a config's model.

Prints a table: the parameters of each part, and GFLOPs at the training input (the data's ``crop_size``;
detection: its ``image_size``) and at the evaluation size of the task's ``evaluation`` protocol (segmentation:
an image filling its ``scale`` box, through its sliding windows, scales and flips; detection: its
``image_size``, a tile in ``tiled`` mode); ``--json`` prints one JSON object instead. GFLOPs = 2 x
multiply-accumulates of matrix products and convolutions (torch's ``FlopCounterMode``; norms, softmax and
pooling are not counted, as in the paper). The head is counted as the paper counts its decoder: the layers
(the head's submodules), without the final product computed in the head's own ``forward`` (the patch-class
mask product); ``head_gflops_total`` includes it.

Only the model is built, on the ``meta`` device (no memory; a detection task, whose metrics cannot be built there,
is built on the CPU and moved there), without weight files (``pretrained`` and ``weights`` are ignored). The class
count is ``--num-classes``, else the data's when it can tell it without its images (class names in the config, a
``classes.txt``, the categories of the annotation jsons, ADE20K's 150), else assumed (150 for segmentation, 80 for
detection) and said so.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import inspect
import json

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from cbsa_dense.errors import ConfigError

#: The class count assumed when neither ``--num-classes`` nor the data tells it: ADE20K's, COCO's.
ASSUMED_CLASSES = {"segmentation": 150, "detection": 80}


def _parser():
    from jsonargparse import ArgumentParser
    from lightning.pytorch import LightningDataModule, LightningModule

    from cbsa_dense.cli.lightning_cli import register_short_names

    register_short_names()
    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(LightningModule, "model")
    parser.add_subclass_arguments(LightningDataModule, "data", required=False)
    return parser


def parse_config(config: dict, overrides: list[str] | None = None):
    """The ``model`` and ``data`` sections of a composed config, with ``--model.*`` / ``--data.*`` command-line
    overrides on top, parsed as ``fit`` parses them (class names resolved, defaults filled). Nothing is built."""
    from jsonargparse import ArgumentError

    from cbsa_dense.config_errors import condense_parse_error

    if not isinstance(config.get("model"), dict):
        raise ConfigError("the config has no 'model' section")
    args = ["--model", json.dumps(config["model"])]
    if config.get("data"):
        args += ["--data", json.dumps(config["data"])]
    try:
        return _parser().parse_args(args + list(overrides or []))
    except ArgumentError as error:
        raise ConfigError(condense_parse_error(str(error))) from error


def _kind(task_class) -> str:
    evaluation = getattr(task_class, "evaluation_type", None)
    return "detection" if evaluation is not None and evaluation.__name__.startswith("Det") else "segmentation"


def _class_at(spec) -> type:
    module, _, name = str(getattr(spec, "class_path", "")).rpartition(".")
    return getattr(importlib.import_module(module), name)


def data_num_classes(cfg) -> tuple[int | None, str]:
    """The data's class count, without reading its files where the config tells it (class names listed), else by
    building the datamodule (which reads only its class list, or its json's categories); ``(None, why)`` when the
    data cannot tell it here."""
    data = cfg.get("data")
    if data is None:
        return None, "the config has no data section"
    names = data.init_args.get("class_names") if data.get("init_args") is not None else None
    if isinstance(names, list) and names:
        return len(names), "the data's class_names"
    from jsonargparse import ArgumentParser
    from lightning.pytorch import LightningDataModule

    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(LightningDataModule, "data")
    data = data.clone()
    evaluation = cfg.model.init_args.get("evaluation")
    if evaluation is not None and "evaluation" in data.init_args:
        data.init_args["evaluation"] = evaluation              # the CLI links the task's protocol into the data
    try:
        module = parser.instantiate_classes(parser.parse_object({"data": data.as_dict()})).data
        count = getattr(module, "num_classes", None)
    except Exception as error:       # noqa: BLE001 - a data folder that is not here: the count is assumed
        cause = error
        while cause.__cause__ is not None:
            cause = cause.__cause__
        return None, f"its data cannot be read here: {' '.join(str(cause).split())[:200]}"
    name = str(data.class_path).rpartition(".")[2]
    return (int(count), f"the data ({name})") if count else (None, f"the data ({name}) declares no classes")


def build_model(cfg, num_classes: int) -> nn.Module:
    """The task of a parsed config (:func:`parse_config`) with ``num_classes``, without weight files. Under
    ``torch.device("meta")`` it allocates nothing (a task that cannot be built there is built on the CPU, then
    moved to ``meta``)."""
    from jsonargparse import Namespace

    model = cfg.model.clone()
    init = model.init_args
    init["num_classes"] = int(num_classes)
    if init.get("weights") is not None:
        init["weights"] = None
    encoder_args = getattr(init.get("encoder"), "init_args", None)
    if encoder_args is not None and encoder_args.get("pretrained") is not None:
        encoder_args["pretrained"] = None
    parser = _parser()
    try:
        return parser.instantiate_classes(Namespace(model=model, data=None)).model
    except Exception:      # noqa: BLE001 - a part that cannot be built on meta (detection metrics): on the CPU
        if torch.get_default_device().type != "meta":
            raise
        with torch.device("cpu"):
            return parser.instantiate_classes(Namespace(model=model, data=None)).model.to("meta")


def _params(module: nn.Module | None) -> int:
    return 0 if module is None else sum(p.numel() for p in module.parameters())


def attention_macs(module: nn.Module, num_tokens: int, grid: tuple[int, int]) -> int | None:
    """Multiply-accumulates of one call of a known attention layer, by the spec's formulas (section 3).

    Beyond the spec: CBSA's query broadcast (the released adaptation code's) counts ``4*m*N*D`` for its
    token-representative products, the opt-in local term ``k*k*H*W*D`` (plus ``N*D*d`` on the transpose
    path, where it is projected separately). ``None`` for other modules (their executed operations are counted instead).
    """
    from cbsa_dense.layers import CBSAAttention, LinearAttention, SoftmaxAttention

    n = num_tokens
    d = module.qkv.in_features if hasattr(module, "qkv") else 0
    heads = getattr(module, "num_heads", 0)
    p = getattr(module, "head_dim", 0)
    inner = heads * p
    if isinstance(module, CBSAAttention):
        if module.grid is None:
            return 2 * n * d * inner + 2 * n * n * inner
        m = module.grid[0] * module.grid[1]
        proj = 2 if module.variant == "shared" else 4
        local = module.local_kernel ** 2 * grid[0] * grid[1] * inner      # opt-in depthwise term on the patches
        if module.broadcast == "query":     # extraction (logits, A v) + per-token softmax over m, and its product
            return proj * n * d * inner + 4 * m * n * inner + local
        if local:
            local += n * inner * d            # the transpose path projects the local term separately
        return proj * n * d * inner + 3 * m * n * inner + 2 * m * m * inner + local
    if isinstance(module, SoftmaxAttention):
        return 4 * n * d * inner + 2 * n * n * inner
    if isinstance(module, LinearAttention):
        return 4 * n * d * inner + 2 * n * inner * p
    return None


def count(model: nn.Module, image_size: tuple[int, int]) -> dict:
    """Parameter counts and GFLOPs of ``model`` (a segmentation model or a task wrapping one in ``model``).

    Attention layers are counted by the spec's formulas (what the paper reports), every other module by
    its executed matrix products and convolutions.
    """
    net = getattr(model, "model", model)
    prefix = type(net).__name__
    paths = {module: f"{prefix}.{name}" if name else prefix for name, module in net.named_modules()}
    calls: dict[str, int] = {}

    def record(module, args):
        macs = attention_macs(module, args[0].shape[1], tuple(args[1]) if len(args) > 1 else (1, 1))
        if macs is not None:
            calls[paths[module]] = calls.get(paths[module], 0) + args[0].shape[0] * macs

    from cbsa_dense.layers import CBSAAttention, LinearAttention, SoftmaxAttention

    known = (CBSAAttention, LinearAttention, SoftmaxAttention)
    hooks = [m.register_forward_pre_hook(record) for m in net.modules() if isinstance(m, known)]
    counter = FlopCounterMode(display=False)
    net.eval()
    device = next(net.parameters()).device
    # a detector also takes the images' valid sizes
    sizes = ([tuple(image_size)],) if "image_sizes" in inspect.signature(net.forward).parameters else ()
    stopped = False
    try:
        with counter, torch.no_grad():
            try:
                net(torch.zeros(1, 3, *image_size, device=device), *sizes)
            except (NotImplementedError, RuntimeError):
                if device.type != "meta":
                    raise
                stopped = True          # a step whose shapes depend on the values (detection post-processing)
    finally:
        for hook in hooks:
            hook.remove()
    measured = {k: int(sum(v.values())) for k, v in counter.get_flop_counts().items()}
    measured[prefix] = measured.get("Global", 0)

    def flops(path: str) -> int:
        """Executed FLOPs under ``path``, with attention layers replaced by their formula."""
        inside = [a for a in calls if a == path or a.startswith(path + ".")]
        return measured.get(path, 0) - sum(measured.get(a, 0) for a in inside) + sum(2 * calls[a] for a in inside)

    out = {"image_size": list(image_size), "params": _params(net), "gflops": flops(prefix) / 1e9}
    for name in ("encoder", "neck", "head"):
        module = getattr(net, name, None)
        if module is None:
            continue
        out[f"{name}_params"] = _params(module)
        out[f"{name}_gflops"] = flops(paths[module]) / 1e9
    head = getattr(net, "head", None)
    if head is not None:
        root = paths[head]
        keys = [k for k in set(measured) | set(calls) if k.startswith(root + ".")]
        top = [k for k in keys if not any(k.startswith(o + ".") for o in keys if o != k)]
        out["head_gflops_total"] = out["head_gflops"]
        out["head_gflops"] = sum(flops(k) for k in top) / 1e9
    if stopped:
        out["counted_until_postprocessing"] = True
    return out


def _seg_eval_passes(evaluation, size: tuple[int, int] | None) -> list[tuple[tuple[int, int], int]]:
    """``(input size, count)`` of the forward passes of one image of ``size`` (after the protocol's resize)
    through the protocol's scales, flips and sliding windows."""
    inference = evaluation.inference()
    passes: dict[tuple[int, int], int] = {}
    for scale in inference.scales:
        h, w = (int(size[0] * scale), int(size[1] * scale)) if scale != 1.0 else size
        views = 2 if inference.flip else 1
        if inference.window is None or (h <= inference.window[0] and w <= inference.window[1]):
            unit, n = (h, w), 1
        else:
            (wh, ww), (sh, sw) = inference.window, inference.stride
            rows = max(h - wh + sh - 1, 0) // sh + 1
            cols = max(w - ww + sw - 1, 0) // sw + 1
            unit, n = (min(wh, h), min(ww, w)), rows * cols
        passes[unit] = passes.get(unit, 0) + n * views
    return list(passes.items())


def evaluation_size(task, cfg) -> dict:
    """The evaluation protocol of ``task`` and the forward passes it makes per image: ``{"protocol", "image_size",
    "passes": [((h, w), count)], "note"}``; ``passes`` is empty when the size is the photo's own."""
    evaluation = getattr(task, "evaluation", None)
    data_args = getattr(cfg.get("data"), "init_args", None)
    if evaluation is None:
        return {"protocol": None, "image_size": None, "passes": [], "note": "the task has no evaluation protocol"}
    if hasattr(evaluation, "inference"):                         # segmentation
        if evaluation.scale is None:
            return {"protocol": evaluation.describe(), "image_size": None, "passes": [],
                    "note": "evaluated at each photo's own size: not counted"}
        long, short = evaluation.scale
        size = (short, long)
        return {"protocol": evaluation.describe(), "image_size": list(size),
                "passes": _seg_eval_passes(evaluation, size),
                "note": f"an image filling the (long, short) box, {size[0]}x{size[1]}"}
    side = evaluation.image_size or (data_args.get("image_size") if data_args is not None else None)
    protocol = f"{evaluation.mode}, image_size {side}" if side else evaluation.mode
    if evaluation.mode in ("native", "windowed") or not side:
        return {"protocol": protocol, "image_size": None, "passes": [],
                "note": "evaluated at each photo's own size: not counted"}
    note = f"one {side}x{side} tile (the photo's size sets the tile count)" if evaluation.mode == "tiled" else \
        f"the image resized to {side}x{side}"
    return {"protocol": protocol, "image_size": [side, side], "passes": [((side, side), 1)], "note": note}


def train_size(cfg, kind: str) -> tuple[tuple[int, int], str]:
    """The training input: the data's ``crop_size`` (detection: its square ``image_size``)."""
    data_args = getattr(cfg.get("data"), "init_args", None)
    if kind == "detection":
        side = data_args.get("image_size") if data_args is not None else None
        return ((int(side), int(side)), "the data's image_size") if side else ((1024, 1024), "assumed")
    crop = data_args.get("crop_size") if data_args is not None else None
    return ((int(crop[0]), int(crop[1])), "the data's crop_size") if crop else ((512, 512), "assumed")


_PARTS = ("encoder", "neck", "head")


def _sum_passes(model: nn.Module, passes, cache: dict) -> dict | None:
    if not passes:
        return None
    total: dict[str, float] = {}
    for size, n in passes:
        if size not in cache:
            cache[size] = count(model, size)
        for key, value in cache[size].items():
            if "gflops" in key:
                total[key] = total.get(key, 0.0) + n * value
    return total


def _table(result: dict) -> str:
    train, ev = result["image_size"], result["evaluation"]
    eval_head = f"{ev['image_size'][0]}x{ev['image_size'][1]}" if ev.get("gflops") is not None else "-"
    rows = [("part", "parameters", f"GFLOPs train {train[0]}x{train[1]}", f"GFLOPs eval {eval_head}")]

    def fmt(value) -> str:
        return "-" if value is None else f"{value:.2f}"

    decoder = result["kind"] == "segmentation" and "head_gflops_total" in result
    for part in _PARTS:
        if f"{part}_params" in result:
            key = "head_gflops_total" if part == "head" and decoder else f"{part}_gflops"
            rows.append((part, f"{result[f'{part}_params']:,}", fmt(result.get(key)), fmt(ev.get(key))))
            if part == "head" and decoder:
                rows.append(("  decoder layers", "", fmt(result["head_gflops"]), fmt(ev.get("head_gflops"))))
    rows.append(("total", f"{result['params']:,}", fmt(result["gflops"]), fmt(ev.get("gflops"))))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = [f"{result['config']}: {result['task']}, {result['num_classes']} classes ({result['num_classes_from']})",
             f"training input: {train[0]}x{train[1]} ({result['image_size_from']})",
             f"evaluation: {ev['protocol'] or '-'}",
             f"  counted for {ev['note']}" + (": " + ", ".join(f"{n} pass{'es' if n > 1 else ''} of {h}x{w}"
                                                              for (h, w), n in ev["passes"]) if ev["passes"] else ""),
             ""]
    for i, row in enumerate(rows):
        lines.append("  ".join([row[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(row[1:], widths[1:])]))
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    lines += ["", "GFLOPs: 2 x multiply-accumulates of matrix products and convolutions (norms, softmax, pooling "
                  "not counted, as in the paper); eval: per image, all passes."]
    if decoder:
        lines.append("decoder layers: the head without its final class-mask product (the paper's decoder GFLOPs).")
    if result.get("counted_until_postprocessing"):
        lines.append("head: its layers up to post-processing (box decoding, NMS and a two-stage head's ROI stage "
                     "depend on the image's content: not counted).")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="cbsa-dense info", description=__doc__.splitlines()[0].replace("``", ""),
        usage="cbsa-dense info --config CONFIG [--image-size H W] [--num-classes N] [--json] "
              "[--model.* VALUE ...] [--data.* VALUE ...]",
        epilog="--model.* and --data.* options override the config as in `cbsa-dense fit` (e.g. "
               "--model.init_args.encoder.init_args.arch vit_base_patch16_224, --data.init_args.crop_size [640,640]).")
    parser.add_argument("--config", required=True, action="append",
                        help="training config with a model section: a YAML file or a shipped config name; "
                             "_base_ files merged in; given again, each on top of the ones before (as in fit)")
    parser.add_argument("--image-size", nargs=2, type=int, metavar=("H", "W"),
                        help="training input size (default: the data's crop_size; detection: its image_size)")
    parser.add_argument("--num-classes", type=int, default=None,
                        help="class count of the head (default: the data's when it can tell without its files, "
                             "else 150 for segmentation, 80 for detection)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    args, rest = parser.parse_known_args(argv)
    unknown = [a for a in rest if a.startswith("-") and not a.startswith(("--model", "--data"))]
    if unknown:
        raise ConfigError(f"unrecognized arguments: {' '.join(unknown)}; info takes --config, --image-size, "
                          "--num-classes, --json and --model.* / --data.* overrides")
    from cbsa_dense.cli.config_blame import config_error_context
    from cbsa_dense.cli.config_files import load_config, merge_configs

    config = functools.reduce(merge_configs, map(load_config, args.config), {})    # later files on top
    if args.image_size and min(args.image_size) < 1:
        raise ConfigError(f"--image-size {args.image_size[0]} {args.image_size[1]}: give two positive integers "
                          "(height, width)")
    if args.num_classes is not None and args.num_classes < 1:
        raise ConfigError(f"--num-classes {args.num_classes}: give a class count >= 1")
    with config_error_context([], args.config):
        cfg = parse_config(config, rest)
        task_class = _class_at(cfg.model)
        kind = _kind(task_class)
        if args.num_classes is not None:
            num_classes, source = args.num_classes, "--num-classes"
        else:
            num_classes, source = data_num_classes(cfg)
            if num_classes is None:
                num_classes = ASSUMED_CLASSES[kind]
                source = f"assumed: {source}; --num-classes N sets it"
        with torch.device("meta"):
            model = build_model(cfg, num_classes)
    size, size_from = (tuple(args.image_size), "--image-size") if args.image_size else train_size(cfg, kind)
    cache: dict = {}
    cache[size] = count(model, size)
    evaluation = evaluation_size(model, cfg)
    evaluation.update(_sum_passes(model, evaluation["passes"], cache) or {"gflops": None})
    evaluation["passes"] = [[list(s), n] for s, n in evaluation["passes"]]
    parts = [type(getattr(getattr(model, "model", model), p, None)).__name__ for p in _PARTS
             if getattr(getattr(model, "model", model), p, None) is not None]
    result = {"config": " + ".join(map(str, args.config)), "task": f"{task_class.__name__} ({' + '.join(parts)})", "kind": kind,
              "num_classes": int(num_classes), "num_classes_from": source, "image_size_from": size_from,
              **cache[size], "evaluation": evaluation}
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        result["evaluation"]["passes"] = [((s[0], s[1]), n) for s, n in evaluation["passes"]]
        print(_table(result))
    return 0
