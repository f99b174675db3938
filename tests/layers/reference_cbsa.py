"""A deliberately literal re-statement of the CBSA spec (per head, explicit pooling and softmaxes),
used only to check the optimized layer."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def reference_cbsa(layer, x: torch.Tensor, grid: tuple[int, int], num_prefix: int) -> torch.Tensor:
    """Recompute ``layer(x, grid, num_prefix)`` head by head from its weights."""
    b, n, _ = x.shape
    h, p = layer.num_heads, layer.head_dim
    gh, gw = grid
    proj = x @ layer.qkv.weight.T + (layer.qkv.bias if layer.qkv.bias is not None else 0)
    if layer.variant == "shared":
        q = k = v = proj
    else:
        q, k, v = proj.split(h * p, dim=-1)
    start = 0 if layer.legacy_shifted_grid else num_prefix
    patches = q[:, start:start + gh * gw]                                   # (B, HW, D)
    img = patches.transpose(1, 2).reshape(b, h * p, gh, gw)
    reps0_all = F.adaptive_avg_pool2d(img, layer.grid).reshape(b, h * p, -1).transpose(1, 2)  # (B, m, D)
    outs = []
    s = p ** -0.5
    for head in range(h):
        sl = slice(head * p, (head + 1) * p)
        r0, kk, vv, qq = reps0_all[..., sl], k[..., sl], v[..., sl], q[..., sl]
        a = torch.softmax(r0 @ kk.transpose(1, 2) * s, dim=-1)             # (B, m, N)
        if layer.broadcast == "query":
            outs.append(torch.softmax(qq @ r0.transpose(1, 2) * s, dim=-1) @ (a @ vv))
            continue
        r = r0 + layer.step_rep[head, 0, 0] * (a @ vv)
        c = torch.softmax(r @ r.transpose(1, 2) * s, dim=-1) @ r
        outs.append(layer.step_x[head, 0, 0] * (a.transpose(1, 2) @ c))
    merged = torch.cat(outs, dim=-1)
    if layer.proj is None:
        return merged @ layer.qkv.weight
    return merged @ layer.proj.weight.T + layer.proj.bias
