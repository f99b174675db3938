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

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from cbsa_dense.errors import ConfigError


def build_model_from_config(config: dict, num_classes: int | None = None) -> nn.Module:
    """Instantiate the ``model`` section (a ``class_path`` / ``init_args`` tree) of a training config.

    The task's ``num_classes`` is set by the data, as ``cbsa-dense fit`` does: ``num_classes`` when given,
    else the ``data`` section's datamodule is built (nothing is read but its class list) and asked.
    """
    from jsonargparse import ArgumentParser
    from lightning.pytorch import LightningDataModule, LightningModule

    from cbsa_dense.cli.lightning_cli import register_short_names

    register_short_names()
    if "model" not in config:
        raise ConfigError("the config has no 'model' section")
    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(LightningModule, "model")
    parser.add_subclass_arguments(LightningDataModule, "data", required=False)
    from jsonargparse import ArgumentError

    from cbsa_dense.config_errors import condense_parse_error

    model = json.loads(json.dumps(config["model"]))
    init_args = model.setdefault("init_args", {})
    if num_classes is not None:
        init_args["num_classes"] = int(num_classes)
    elif "num_classes" not in init_args and config.get("data"):
        try:
            data = parser.instantiate_classes(parser.parse_object({"data": config["data"]}, defaults=False)).data
        except Exception as error:       # noqa: BLE001 - reported with the way out
            raise ConfigError(f"the class count comes from the data, and its datamodule could not be built "
                              f"({str(error).splitlines()[0]}); pass --num-classes N") from error
        init_args["num_classes"] = getattr(data, "num_classes", None)
        if not init_args["num_classes"]:
            raise ConfigError(f"the datamodule {type(data).__name__} declares no classes yet; pass --num-classes N")
    try:
        cfg = parser.parse_object({"model": model})
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
    parser.add_argument("--config", required=True,
                        help="training config with a model section: a YAML file or a shipped config name "
                             "(`cbsa-dense configs` lists them); _base_ files are merged in")
    parser.add_argument("--image-size", nargs=2, type=int, metavar=("H", "W"),
                        help="input size (default: the data's crop_size, else 512 512)")
    parser.add_argument("--num-classes", type=int, default=None,
                        help="class count of the head (default: the config's data, as `fit` builds it)")
    args = parser.parse_args(argv)
    from cbsa_dense.cli.config_blame import config_error_context
    from cbsa_dense.cli.config_files import load_config

    config = load_config(args.config)
    size = tuple(args.image_size) if args.image_size else _default_size(config)
    if len(size) != 2 or min(size) < 1:
        raise ConfigError(f"--image-size {size[0]} {size[1]}: give two positive integers (height, width)")
    with torch.device("meta"), config_error_context([], [args.config]):
        model = build_model_from_config(config, args.num_classes)
    result = {"config": str(args.config), **count(model, size)}
    print(json.dumps(result, indent=1))
    return 0
