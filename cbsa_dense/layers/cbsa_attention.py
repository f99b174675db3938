"""Contract-and-Broadcast Self-Attention (CBSA), general form (spec: docs of the method, section 2)."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from cbsa_dense.layers.tokens import check_layout, resolve_head_dim


class CBSAAttention(nn.Module):
    """CBSA: contract a few pooled representatives, broadcast the result back to every token.

    Per head, with tokens w (projected), representatives ``R0 = AdaptiveAvgPool2d(grid)`` of the patch
    tokens' queries, ``s = head_dim ** -0.5``:

    1. extraction ``A = softmax_N(R0 K^T s)`` (B, h, m, N) over ALL tokens (prefix and suffix too);
       ``R = R0 + step_rep * A V``;
    2. contraction ``C = softmax_m(R R^T s) R`` (B, h, m, p), a small m x m self-attention;
    3. broadcast ``out = step_x * A^T C`` (B, h, N, p) (``broadcast="transpose"``, the paper's), or the
       released adaptation code's ``out = softmax_m(Q R0^T s) (A V)`` (``broadcast="query"``, no
       contraction and no step sizes);
    4. heads merged, output projection ``proj`` (untied, with bias) or ``qkv.weight^T`` (tied).

    Cost per layer (MACs): ``2*N*d*D + 3*m*N*D + 2*m^2*D`` (shared), linear in N for fixed m.

    Call contract: ``forward(x, grid, num_prefix_tokens=0)`` with ``x`` (B, N, dim) laid out as
    ``[prefix] + [H*W patch tokens, row-major] + [suffix]``, ``grid=(H, W)``; returns (B, N, dim). Only
    patch tokens are pooled into representatives; every token is a key/value and gets the broadcast.

    Args:
        dim: token width d.
        num_heads: heads h.
        head_dim: width per head p (default ``dim // num_heads``); inner width D = h * p may differ from d.
        grid: representative grid (gh, gw), m = gh * gw; patch grids smaller than it work (adaptive-pool
            bins overlap). ``None`` makes every token its own representative (m = N, no extraction): tied
            softmax self-attention, quadratic, for analysis.
        variant: ``"shared"``: one projection ``qkv`` d -> D (q = k = v, the paper's and released
            layer); ``"qkv"``: timm's ``qkv`` d -> 3D, for adapting a pretrained softmax ViT (its
            ``qkv``/``proj`` weights load unchanged).
        broadcast: ``"transpose"`` (paper) or ``"query"`` (released ViT-adaptation code).
        tied_output: output through ``qkv.weight^T`` per head (paper's derivation), shared variant only.
        qkv_bias: bias of ``qkv``; default False for ``shared``, True for ``qkv``.
        proj_bias: bias of the untied output projection.
        step_init: initial value of the per-head step sizes ``step_x`` (kappa) and ``step_rep`` (eta);
            ``None`` = N(0, 1) as the released code (sign learned); a float = that constant.
        legacy_shifted_grid: reproduce the released classification code's bug of pooling the first H*W
            tokens (CLS included, last patch excluded) instead of the patch tokens; for importing its
            checkpoints only.
        proj_drop: dropout after the output projection.
    """

    def __init__(self, dim: int, num_heads: int = 8, head_dim: int | None = None,
                 grid: tuple[int, int] | None = (8, 8), variant: Literal["shared", "qkv"] = "shared",
                 broadcast: Literal["transpose", "query"] = "transpose", tied_output: bool = False,
                 qkv_bias: bool | None = None, proj_bias: bool = True, step_init: float | None = None,
                 legacy_shifted_grid: bool = False, proj_drop: float = 0.0) -> None:
        super().__init__()
        if variant not in ("shared", "qkv"):
            raise ValueError(f"variant must be 'shared' or 'qkv', got {variant!r}")
        if broadcast not in ("transpose", "query"):
            raise ValueError(f"broadcast must be 'transpose' or 'query', got {broadcast!r}")
        if tied_output and variant != "shared":
            raise ValueError("tied_output=True needs variant='shared' (the output is qkv.weight^T)")
        if grid is not None and (len(grid) != 2 or min(grid) < 1):
            raise ValueError(f"grid must be two positive ints (gh, gw) or None, got {grid}")
        if grid is None and broadcast == "query":
            raise ValueError("broadcast='query' needs pooled representatives (grid is None)")
        self.num_heads = num_heads
        self.head_dim = resolve_head_dim(dim, num_heads, head_dim)
        self.inner_dim = num_heads * self.head_dim
        self.grid = tuple(grid) if grid is not None else None
        self.variant = variant
        self.broadcast = broadcast
        self.tied_output = tied_output
        self.legacy_shifted_grid = legacy_shifted_grid
        self.scale = self.head_dim ** -0.5
        if qkv_bias is None:
            qkv_bias = variant == "qkv"
        width = self.inner_dim if variant == "shared" else 3 * self.inner_dim
        self.qkv = nn.Linear(dim, width, bias=qkv_bias)
        if broadcast == "transpose":
            self.step_x = nn.Parameter(torch.empty(num_heads, 1, 1))
            self.step_rep = nn.Parameter(torch.empty(num_heads, 1, 1))
        else:
            self.register_parameter("step_x", None)
            self.register_parameter("step_rep", None)
        self.step_init = step_init
        self.proj = None if tied_output else nn.Linear(self.inner_dim, dim, bias=proj_bias)
        self.proj_drop = nn.Dropout(proj_drop)
        self.reset_step_sizes()

    def reset_step_sizes(self) -> None:
        """(Re)initialize ``step_x`` and ``step_rep`` as ``step_init`` says."""
        for step in (self.step_x, self.step_rep):
            if step is None:
                continue
            with torch.no_grad():
                if self.step_init is None:
                    step.normal_(0.0, 1.0)
                else:
                    step.fill_(self.step_init)

    def extra_repr(self) -> str:
        return (f"heads={self.num_heads}, head_dim={self.head_dim}, grid={self.grid}, variant={self.variant}, "
                f"broadcast={self.broadcast}, tied_output={self.tied_output}, "
                f"legacy_shifted_grid={self.legacy_shifted_grid}")

    def _split_heads(self, t: torch.Tensor) -> torch.Tensor:
        """(B, N, D) -> (B, h, N, p) as a view."""
        b, n, _ = t.shape
        return t.view(b, n, self.num_heads, self.head_dim).transpose(1, 2)

    def _pool(self, q: torch.Tensor, grid: tuple[int, int], num_prefix_tokens: int) -> torch.Tensor:
        """Representatives R0 (B, h, m, p): adaptive average pool of the patch tokens' queries."""
        b, _, d = q.shape
        h, w = grid
        start = 0 if self.legacy_shifted_grid else num_prefix_tokens
        patches = q[:, start:start + h * w].reshape(b, h, w, d).permute(0, 3, 1, 2)  # (B, D, H, W)
        pooled = F.adaptive_avg_pool2d(patches, self.grid)                          # (B, D, gh, gw)
        return pooled.flatten(2).view(b, self.num_heads, self.head_dim, -1).transpose(-2, -1)

    def forward(self, x: torch.Tensor, grid: tuple[int, int], num_prefix_tokens: int = 0) -> torch.Tensor:
        """Apply CBSA.

        Args:
            x: tokens (B, N, dim): ``[prefix] + [H*W patches] + [suffix]``.
            grid: patch grid (H, W).
            num_prefix_tokens: number of tokens before the patches.

        Returns:
            (B, N, dim). The residual connection is the caller's.
        """
        out, _ = self.attend(x, grid, num_prefix_tokens)
        return out

    def attend(self, x: torch.Tensor, grid: tuple[int, int],
               num_prefix_tokens: int = 0) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Like :meth:`forward`, also returning the extraction matrix A (B, h, m, N) (``None`` if m = N)."""
        b, n, _ = x.shape
        check_layout(n, grid, num_prefix_tokens)
        projected = self.qkv(x)
        if self.variant == "shared":
            q = k = v = projected
        else:
            q, k, v = projected.view(b, n, 3, self.inner_dim).unbind(2)
        kh, vh = self._split_heads(k), self._split_heads(v)
        if self.grid is None:
            out = self.step_x * F.scaled_dot_product_attention(kh, kh, vh, scale=self.scale)
            return self._merge(out), None
        reps0 = self._pool(q, grid, num_prefix_tokens)                              # (B, h, m, p)
        logits = (reps0 @ kh.transpose(-2, -1)) * self.scale                         # (B, h, m, N)
        extraction = logits.float().softmax(dim=-1).to(logits.dtype)                 # softmax over tokens
        gathered = extraction @ vh                                                   # (B, h, m, p)
        if self.broadcast == "query":
            out = F.scaled_dot_product_attention(self._split_heads(q), reps0, gathered, scale=self.scale)
            return self._merge(out), extraction
        reps = reps0 + self.step_rep * gathered
        contracted = F.scaled_dot_product_attention(reps, reps, reps, scale=self.scale)  # (B, h, m, p)
        out = self.step_x * (extraction.transpose(-2, -1) @ contracted)            # (B, h, N, p)
        return self._merge(out), extraction

    def _merge(self, out: torch.Tensor) -> torch.Tensor:
        b, _, n, _ = out.shape
        merged = out.transpose(1, 2).reshape(b, n, self.inner_dim)
        if self.proj is None:
            return self.proj_drop(merged @ self.qkv.weight)
        return self.proj_drop(self.proj(merged))
