"""``cbsa-dense info --config CFG [--image-size H W]``: parameters and GFLOPs of a config's model.

Prints one JSON object. GFLOPs = 2 x multiply-accumulates of matrix products and convolutions (torch's
``FlopCounterMode``; norms, softmax and pooling are not counted, as in the paper). The head is counted
as the paper counts its decoder: the layers (the head's submodules), without the final product
computed in the head's own ``forward`` (the patch-class mask product); ``head_gflops_total`` includes it.
The model is built on the ``meta`` device: no memory, no weights read.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import yaml
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from cbsa_dense.errors import ConfigError


def build_model_from_config(config: dict) -> nn.Module:
    """Instantiate the ``model`` section (a ``class_path`` / ``init_args`` tree) of a training config."""
    from jsonargparse import ArgumentParser
    from lightning.pytorch import LightningModule

    if "model" not in config:
        raise ConfigError("the config has no 'model' section")
    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(LightningModule, "model")
    from jsonargparse import ArgumentError

    from cbsa_dense.cli_checks import condense_parse_error

    try:
        cfg = parser.parse_object({"model": config["model"]})
    except ArgumentError as error:
        raise ConfigError(condense_parse_error(str(error))) from error
    return parser.instantiate_classes(cfg).model


def _default_size(config: dict) -> tuple[int, int]:
    init = (config.get("data") or {}).get("init_args") or {}
    crop = init.get("crop_size")
    if crop:
        return int(crop[0]), int(crop[1])
    return 512, 512


def _params(module: nn.Module | None) -> int:
    return 0 if module is None else sum(p.numel() for p in module.parameters())


def attention_macs(module: nn.Module, num_tokens: int, grid: tuple[int, int]) -> int | None:
    """Multiply-accumulates of one call of a known attention layer, by the spec's formulas (section 3).

    ``None`` for other modules (their executed operations are counted instead).
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
        return proj * n * d * inner + 3 * m * n * inner + 2 * m * m * inner
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
    try:
        with counter, torch.no_grad():
            net(torch.zeros(1, 3, *image_size, device=next(net.parameters()).device))
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
    return out


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="cbsa-dense info", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, type=Path, help="training config (YAML) with a model section")
    parser.add_argument("--image-size", nargs=2, type=int, metavar=("H", "W"),
                        help="input size (default: the data's crop_size, else 512 512)")
    args = parser.parse_args(argv)
    if not args.config.is_file():
        parser.error(f"config file {args.config} does not exist")
    from cbsa_dense.cli_checks import check_config_file

    check_config_file(args.config)
    config = yaml.safe_load(args.config.read_text())
    size = tuple(args.image_size) if args.image_size else _default_size(config)
    if len(size) != 2 or min(size) < 1:
        raise ConfigError(f"--image-size {size[0]} {size[1]}: give two positive integers (height, width)")
    with torch.device("meta"):
        model = build_model_from_config(config)
    result = {"config": str(args.config), **count(model, size)}
    print(json.dumps(result, indent=1))
    return 0
