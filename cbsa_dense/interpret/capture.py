"""Record the extraction matrix A of CBSA layers during a normal forward pass.

A forward hook on each chosen :class:`~cbsa_dense.layers.CBSAAttention` recomputes the layer through
its public ``attend`` method and keeps A (B, heads, m, N). Nothing changes (output or cost) when no
capture is active; while one is, each captured layer runs twice.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from cbsa_dense.errors import ConfigError
from cbsa_dense.layers.cbsa_attention import CBSAAttention


@dataclass
class CapturedExtraction:
    """One layer's extraction for one forward pass.

    Attributes:
        name: the layer's module name (e.g. ``model.encoder.blocks.3.attn``).
        extraction: A (B, heads, m, N), softmax over the N tokens.
        grid: the patch grid (H, W) of the call.
        num_prefix_tokens: tokens before the patches (CLS, registers).
        rep_grid: the representative grid (gh, gw).
    """

    name: str
    extraction: torch.Tensor
    grid: tuple[int, int]
    num_prefix_tokens: int
    rep_grid: tuple[int, int]

    def patch_maps(self) -> torch.Tensor:
        """A restricted to the patch tokens as maps: (B, heads, m, H, W)."""
        h, w = self.grid
        p = self.num_prefix_tokens
        a = self.extraction[..., p:p + h * w]
        return a.reshape(*a.shape[:-1], h, w)


def cbsa_layers(model: nn.Module) -> list[tuple[str, CBSAAttention]]:
    """All pooled-representative CBSA layers of ``model`` with their names, in forward order."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, CBSAAttention) and m.grid is not None]


def token_affinity(extraction: torch.Tensor, tokens: torch.Tensor | Sequence[int]) -> torch.Tensor:
    """Implied token-to-token affinity ``(A^T A)[tokens, :]`` per head, without forming N x N.

    Args:
        extraction: A (B, heads, m, N).
        tokens: indices of the query tokens (k of them).

    Returns:
        (B, heads, k, N): how strongly each chosen token and every token share representatives.
    """
    index = torch.as_tensor(tokens, device=extraction.device, dtype=torch.long)
    return extraction[..., index].transpose(-2, -1) @ extraction


@contextmanager
def capture_extractions(model: nn.Module, layers: Sequence[int] | None = None) -> Iterator[list[CapturedExtraction]]:
    """Context manager collecting :class:`CapturedExtraction` records of CBSA layers.

    Args:
        model: any module containing CBSA layers.
        layers: indices into :func:`cbsa_layers` order (negative from the end); ``None`` = all.

    Yields:
        A list filled during forward passes inside the context.

    Raises:
        ValueError: the model has no CBSA layer with pooled representatives, or an index is out of range.
    """
    found = cbsa_layers(model)
    if not found:
        raise ConfigError(f"{type(model).__name__} has no CBSA attention layer to explain")
    if layers is not None:
        try:
            found = [found[i] for i in layers]
        except IndexError as err:
            raise ConfigError(f"layer indices {list(layers)} out of range: the model has {len(cbsa_layers(model))} "
                             f"CBSA layers") from err
    records: list[CapturedExtraction] = []
    handles = []
    for name, layer in found:
        def hook(module, args, kwargs, output, name=name):
            x, grid = args[0], tuple(args[1] if len(args) > 1 else kwargs["grid"])
            prefix = args[2] if len(args) > 2 else kwargs.get("num_prefix_tokens", 0)
            with torch.no_grad():
                _, extraction = module.attend(x, grid, prefix)
            records.append(CapturedExtraction(name, extraction.detach(), grid, int(prefix), tuple(module.grid)))

        handles.append(layer.register_forward_hook(hook, with_kwargs=True))
    try:
        yield records
    finally:
        for handle in handles:
            handle.remove()
