"""Contract-and-Broadcast Self-Attention (CBSA), general form (spec: docs of the method, section 2)."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from cbsa_dense.errors import ConfigError
from cbsa_dense.layers.base import TokenMixer
from cbsa_dense.layers.tokens import check_layout, resolve_head_dim


def _softmax_dtype(dtype: torch.dtype) -> torch.dtype:
    """Softmax precision: at least float32 (bf16/fp16 logits are upcast), float64 stays float64."""
    return torch.promote_types(dtype, torch.float32)


def _heads(t: torch.Tensor, num_heads: int) -> torch.Tensor:
    """(B, N, D) -> (B*h, N, p) for batched GEMMs over the tokens.

    With B = 1 the head-strided view is already a valid batched-GEMM operand (leading dimension = the
    row stride), so nothing is copied; with B > 1 batch and head strides cannot be folded into one, so
    the view is made contiguous once (instead of once per matmul).
    """
    b, n, d = t.shape
    heads = t.view(b, n, num_heads, d // num_heads).transpose(1, 2)
    return heads.flatten(0, 1) if b == 1 else heads.reshape(b * num_heads, n, d // num_heads)


def _merge_heads(t: torch.Tensor, batch: int) -> torch.Tensor:
    """(B*h, N, p) -> (B, N, h*p): one copy that moves whole p-wide rows."""
    bh, n, p = t.shape
    return t.view(batch, bh // batch, n, p).transpose(1, 2).reshape(batch, n, bh // batch * p)


def _token_major_buffer(like: torch.Tensor, batch: int, head_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A (B, N, h*p) gradient buffer and the (B*h, N, p) view GEMMs write into.

    With B = 1 the view is head-strided into the token-major buffer (GEMMs write with a leading
    dimension of h*p, so no merge copy is needed); with B > 1 it is a separate contiguous buffer. Under
    ``torch.compile`` (no strided ``out=`` in Dynamo) it is always the separate buffer.
    """
    bh, _, n = like.shape
    heads = bh // batch
    if batch == 1 and not torch.compiler.is_compiling():
        buffer = like.new_empty(1, n, heads * head_dim)
        return buffer, buffer.view(n, heads, head_dim).transpose(0, 1)
    return like.new_empty(0), like.new_empty(bh, n, head_dim)


def _merged(buffer: torch.Tensor, heads: torch.Tensor, batch: int) -> torch.Tensor:
    """The (B, N, h*p) gradient from :func:`_token_major_buffer`'s pair after the GEMMs wrote ``heads``."""
    return buffer if buffer.numel() else _merge_heads(heads, batch)


class _Extraction(torch.autograd.Function):
    """``A = softmax_N(r k^T)`` (B, h, m, N) and ``G = A v`` (B, h, m, p), per head.

    Inputs: ``r`` (B, h, m, p) (scale already applied), ``k`` and ``v`` (B, N, D) in token-major layout
    (``v=None``: values are the keys, the shared variant). The softmax runs in float32; the matmuls in ``k``'s dtype.

    Why a Function: autograd's backward of ``r @ k_h^T`` returns the key gradient in (p, N) layout, which
    then has to be added to and merged with (N, p)-layout gradients through element-wise transposing
    copies of (B, h, N, p) tensors. Here every gradient is produced by a GEMM directly in the layout it
    is consumed in, the two key/value gradient GEMMs accumulate into one buffer (shared variant), and the
    head merge is a single row copy.
    """

    @staticmethod
    def forward(ctx, r: torch.Tensor, k: torch.Tensor, v: torch.Tensor | None,
                num_heads: int) -> tuple[torch.Tensor, torch.Tensor]:
        b, m, p = r.shape[0], r.shape[2], r.shape[3]
        dtype = k.dtype
        kh = _heads(k, num_heads)                                                    # (B*h, N, p)
        shared = v is None
        vh = kh if shared else _heads(v, num_heads)
        r3 = r.to(dtype).reshape(b * num_heads, m, p)
        logits = torch.bmm(r3, kh.transpose(1, 2))                                   # (B*h, m, N)
        extraction = logits.to(_softmax_dtype(dtype)).softmax(dim=-1).to(dtype)
        gathered = torch.bmm(extraction, vh)                                         # (B*h, m, p)
        ctx.save_for_backward(r3, kh, vh, extraction)
        ctx.shared, ctx.batch, ctx.r_dtype = shared, b, r.dtype
        return extraction.view(b, num_heads, m, -1), gathered.view(b, num_heads, m, p)

    @staticmethod
    @once_differentiable
    def backward(ctx, d_extraction: torch.Tensor, d_gathered: torch.Tensor):
        r3, kh, vh, extraction = ctx.saved_tensors
        dtype = extraction.dtype
        d_ext = d_extraction.to(dtype).reshape(extraction.shape)
        d_gat = d_gathered.to(dtype).reshape(r3.shape)
        d_ext = torch.baddbmm(d_ext, d_gat, vh.transpose(1, 2))                     # + dG v^T
        acc = _softmax_dtype(dtype)
        d_logits = torch.ops.aten._softmax_backward_data(d_ext.to(acc), extraction.to(acc), -1,
                                                         acc).to(dtype)             # (B*h, m, N)
        d_r = torch.bmm(d_logits, kh).view(ctx.batch, -1, *r3.shape[1:]).to(ctx.r_dtype)
        if ctx.shared:                                      # d_kv = A^T dG + dL^T r, one buffer
            d_kv, heads = _token_major_buffer(extraction, ctx.batch, r3.shape[-1])
            torch.bmm(extraction.transpose(1, 2), d_gat, out=heads)
            heads.baddbmm_(d_logits.transpose(1, 2), r3)
            return d_r, _merged(d_kv, heads, ctx.batch), None, None
        d_kh = torch.bmm(d_logits.transpose(1, 2), r3)
        d_vh = torch.bmm(extraction.transpose(1, 2), d_gat)                          # (B*h, N, p)
        return d_r, _merge_heads(d_kh, ctx.batch), _merge_heads(d_vh, ctx.batch), None


class _BroadcastProject(torch.autograd.Function):
    """``out = A_flat^T right + bias`` (B, N, dim) from A (B, h, m, N) and right (B, h*m, dim).

    The backward computes ``dA = right dout^T`` directly in A's (h*m, N) layout (autograd's bmm backward
    would return it transposed, forcing a transposing copy of an (N, h*m) tensor).
    """

    @staticmethod
    def forward(ctx, extraction: torch.Tensor, right: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        left = extraction.flatten(1, 2).transpose(1, 2)                              # (B, N, h*m) view
        right = right.to(extraction.dtype)
        ctx.save_for_backward(extraction, right)
        ctx.bias_dtype = None if bias is None else bias.dtype
        if bias is None:
            return torch.bmm(left, right)
        return torch.baddbmm(bias.to(right.dtype), left, right)

    @staticmethod
    @once_differentiable
    def backward(ctx, d_out: torch.Tensor):
        extraction, right = ctx.saved_tensors
        d_out = d_out.to(right.dtype)
        d_ext = torch.bmm(right, d_out.transpose(1, 2)).view(extraction.shape)       # (B, h*m, N)
        d_right = torch.bmm(extraction.flatten(1, 2), d_out)                         # (B, h*m, dim)
        d_bias = None if ctx.bias_dtype is None else d_out.sum(dim=(0, 1)).to(ctx.bias_dtype)
        return d_ext, d_right, d_bias


class _NoGradContext:
    """Stand-in ``ctx`` for running a Function's forward as plain ops (nothing is saved)."""

    def save_for_backward(self, *tensors: torch.Tensor) -> None:
        pass


def _apply(function: type[torch.autograd.Function], *args):
    """``function.apply(*args)``, except under TorchScript tracing, which cannot serialize custom
    Functions: there the forward is traced as the plain tensor ops it is (exports need no backward)."""
    if torch.jit.is_tracing():
        return function.forward(_NoGradContext(), *args)
    return function.apply(*args)


#: Default ``(step_x, step_rep)`` of the ``qkv`` variant (set from the measurements in docs/finetuning.md).
QKV_STEP_INIT: tuple[float, float] = (0.5, 0.5)


class CBSAAttention(TokenMixer):
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
        step_init: initial values of the per-head step sizes ``step_x`` (kappa) and ``step_rep`` (eta):
            ``"normal"`` = N(0, 1) as the released code (sign learned); a float = both that constant; a
            pair = (``step_x``, ``step_rep``); ``None`` = the variant's default: ``"normal"`` for
            ``shared``, :data:`QKV_STEP_INIT` for ``qkv`` (adapting a pretrained ViT: see that constant).
        legacy_shifted_grid: reproduce the released classification code's bug of pooling the first H*W
            tokens (CLS included, last patch excluded) instead of the patch tokens; for importing its
            checkpoints only.
        proj_drop: dropout after the output projection.
        local_kernel: **not in the paper** (opt-in): side of a depthwise convolution over the patch tokens'
            values (``local``, Agent Attention's DWC term), added to every patch token's output before
            ``proj``. Zero-initialized, so the layer starts as it would without it; linear cost (``k*k*N*D``
            MACs). It gives the layer the local detail that m pooled representatives cannot carry (the
            early blocks of a pretrained ViT attend very locally). ``0`` (default) = off.
    """

    def __init__(self, dim: int, num_heads: int = 8, head_dim: int | None = None,
                 grid: tuple[int, int] | None = (8, 8), variant: Literal["shared", "qkv"] = "shared",
                 broadcast: Literal["transpose", "query"] = "transpose", tied_output: bool = False,
                 qkv_bias: bool | None = None, proj_bias: bool = True,
                 step_init: float | tuple[float, float] | Literal["normal"] | None = None,
                 legacy_shifted_grid: bool = False, proj_drop: float = 0.0, local_kernel: int = 0) -> None:
        super().__init__()
        if variant not in ("shared", "qkv"):
            raise ConfigError(f"variant must be 'shared' or 'qkv', got {variant!r}")
        if broadcast not in ("transpose", "query"):
            raise ConfigError(f"broadcast must be 'transpose' or 'query', got {broadcast!r}")
        if tied_output and variant != "shared":
            raise ConfigError("tied_output=True needs variant='shared' (the output is qkv.weight^T)")
        if grid is not None and (len(grid) != 2 or min(grid) < 1):
            raise ConfigError(f"grid must be two positive ints (gh, gw) or None, got {grid}")
        if not (step_init is None or step_init == "normal" or isinstance(step_init, (int, float))
                or (isinstance(step_init, (tuple, list)) and len(step_init) == 2)):
            raise ConfigError(f"step_init must be 'normal', a number, a (step_x, step_rep) pair or None, got "
                             f"{step_init!r}")
        if grid is None and broadcast == "query":
            raise ConfigError("broadcast='query' needs pooled representatives (grid is None)")
        if not isinstance(local_kernel, int) or local_kernel < 0 or (local_kernel and local_kernel % 2 == 0):
            raise ConfigError(f"local_kernel must be 0 (off) or an odd positive int, got {local_kernel!r}")
        if grid is None and local_kernel:
            raise ConfigError("local_kernel needs pooled representatives (grid is None: the layer is already "
                              "full softmax attention)")
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
        self.local_kernel = local_kernel
        if local_kernel:
            self.local = nn.Conv2d(self.inner_dim, self.inner_dim, local_kernel, padding=local_kernel // 2,
                                   groups=self.inner_dim)
            nn.init.zeros_(self.local.weight)
            nn.init.zeros_(self.local.bias)
        else:
            self.register_module("local", None)
        self.reset_step_sizes()

    def reset_step_sizes(self) -> None:
        """(Re)initialize ``step_x`` and ``step_rep`` as ``step_init`` says."""
        init = self.step_init
        if init is None:
            init = "normal" if self.variant == "shared" else QKV_STEP_INIT
        values = (init, init) if isinstance(init, (str, int, float)) else tuple(init)
        for step, value in zip((self.step_x, self.step_rep), values):
            if step is None:
                continue
            with torch.no_grad():
                if value == "normal":
                    step.normal_(0.0, 1.0)
                else:
                    step.fill_(float(value))

    def extra_repr(self) -> str:
        return (f"heads={self.num_heads}, head_dim={self.head_dim}, grid={self.grid}, variant={self.variant}, "
                f"broadcast={self.broadcast}, tied_output={self.tied_output}, "
                f"legacy_shifted_grid={self.legacy_shifted_grid}"
                + (f", local_kernel={self.local_kernel}" if self.local_kernel else ""))

    def _split_heads(self, t: torch.Tensor) -> torch.Tensor:
        """(B, N, D) -> (B, h, N, p) as a view."""
        b, n, _ = t.shape
        return t.view(b, n, self.num_heads, self.head_dim).transpose(1, 2)

    def _pool(self, q: torch.Tensor, grid: tuple[int, int], num_prefix_tokens: int) -> torch.Tensor:
        """Representatives R0 (B, h, m, p): adaptive average pool of the patch tokens' queries.

        When the pooling grid divides the patch grid the bins are disjoint tiles and the pool is two
        sums over reshaped views (contiguous inner reductions, no copy); otherwise ``adaptive_avg_pool2d``
        (overlapping bins) on a channels-last view.
        """
        b, _, d = q.shape
        h, w = grid
        gh, gw = self.grid
        start = 0 if self.legacy_shifted_grid else num_prefix_tokens
        patches = q[:, start:start + h * w]                                          # (B, H*W, D)
        if h % gh == 0 and w % gw == 0:
            rows = patches.unflatten(1, (gh, h // gh, w)).sum(dim=2)                # (B, gh, W, D)
            pooled = rows.unflatten(2, (gw, w // gw)).sum(dim=3) / ((h // gh) * (w // gw))  # (B, gh, gw, D)
        else:
            image = patches.unflatten(1, (h, w)).permute(0, 3, 1, 2)                 # (B, D, H, W) view
            pooled = F.adaptive_avg_pool2d(image, self.grid).permute(0, 2, 3, 1)     # (B, gh, gw, D)
        return pooled.reshape(b, gh * gw, self.num_heads, self.head_dim).transpose(1, 2)

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
        if self.grid is None:
            kh, vh = self._split_heads(k), self._split_heads(v)
            out = self.step_x * F.scaled_dot_product_attention(kh, kh, vh, scale=self.scale)
            return self._merge(out), None
        reps0 = self._pool(q, grid, num_prefix_tokens)                              # (B, h, m, p)
        values = None if self.variant == "shared" else v                            # None: v is k
        extraction, gathered = _apply(_Extraction, reps0 * self.scale, k, values, self.num_heads)
        local = None if self.local is None else self._local_term(v, grid, num_prefix_tokens)   # (B, N, D)
        if self.broadcast == "query":
            qh = self._split_heads(q)
            out = F.scaled_dot_product_attention(qh, reps0.to(qh.dtype), gathered, scale=self.scale)
            return self._merge(out, local), extraction
        reps = reps0 + self.step_rep * gathered
        contracted = F.scaled_dot_product_attention(reps, reps, reps, scale=self.scale)  # (B, h, m, p)
        out = self._broadcast(extraction, self.step_x * contracted)
        if local is not None:            # the broadcast GEMM already applied proj: the local term needs its own
            out = out + self.proj_drop(local @ self._output_weight())
        return out, extraction

    def _local_term(self, v: torch.Tensor, grid: tuple[int, int], num_prefix_tokens: int) -> torch.Tensor:
        """The opt-in depthwise term (B, N, D): ``local`` over the patch tokens' values, zero elsewhere."""
        b, n, d = v.shape
        h, w = grid
        start = num_prefix_tokens
        image = v[:, start:start + h * w].unflatten(1, (h, w)).permute(0, 3, 1, 2)   # (B, D, H, W)
        local = self.local(image).flatten(2).transpose(1, 2)                          # (B, H*W, D)
        return F.pad(local, (0, 0, start, n - start - h * w))

    def _output_weight(self) -> torch.Tensor:
        """The output projection as a (D, dim) matrix: ``proj.weight^T``, or ``qkv.weight`` when tied."""
        return self.qkv.weight if self.proj is None else self.proj.weight.t()

    def _broadcast(self, extraction: torch.Tensor, contracted: torch.Tensor) -> torch.Tensor:
        """Broadcast fused with the output projection: ``proj(merge_heads(A^T C))`` (B, N, dim).

        ``sum_k A_k^T C_k P_k = [A_1; ..; A_h]^T [C_1 P_1; ..; C_h P_h]`` with P_k the head's (p, dim)
        slice of the output weight: the small (h*m, dim) right factor is formed first, then ONE GEMM over
        the N tokens reads A (B, h*m, N) transposed in place. The (B, h, N, p) broadcast and its head
        merge (a transpose copy) are never materialized, in the forward nor in the backward pass.
        """
        weight = self._output_weight().view(self.num_heads, self.head_dim, -1)       # (h, p, dim)
        right = (contracted @ weight.to(contracted.dtype)).flatten(1, 2)            # (B, h*m, dim)
        bias = None if self.proj is None else self.proj.bias
        return self.proj_drop(_apply(_BroadcastProject, extraction, right, bias))

    def _merge(self, out: torch.Tensor, local: torch.Tensor | None = None) -> torch.Tensor:
        """Heads (B, h, N, p) merged, plus the opt-in local term (B, N, D), through the output projection."""
        b, _, n, _ = out.shape
        merged = out.transpose(1, 2).reshape(b, n, self.inner_dim)
        if local is not None:
            merged = merged + local
        if self.proj is None:
            return self.proj_drop(merged @ self.qkv.weight)
        return self.proj_drop(self.proj(merged))
