"""Plain ViT encoder with an injected attention type and timm's state-dict names."""

from __future__ import annotations

import difflib
import functools
import logging
from collections.abc import Sequence

import torch
from timm.layers import PatchEmbed, to_2tuple
from torch import nn

from cbsa_dense.errors import ConfigError
from cbsa_dense.layers.base import AttnLayer
from cbsa_dense.layers.block import Block
from cbsa_dense.layers.softmax_attention import SoftmaxAttention
from cbsa_dense.models.checkpoint import LoadReport, load_matching
from cbsa_dense.models.encoders.base import TokenEncoder
from cbsa_dense.models.pretrained import read_pretrained

log = logging.getLogger(__name__)

#: Parameters that a CBSA encoder adds to a softmax ViT: absent from its weights, they start fresh (the step
#: sizes; the opt-in local term, zero-initialized).
FRESH_ATTENTION_KEYS = ("blocks.*.attn.step_x", "blocks.*.attn.step_rep", "blocks.*.attn.local.*")

#: Marker tensor of encoder files written by ``cbsa-dense linearize`` (read and removed by ``load_pretrained``).
LINEARIZED_KEY = "cbsa_dense.linearized"

#: timm ViT keys that an encoder has no use for (classification head and pooling norm).
_HEAD_PREFIXES = ("head.", "fc_norm.", "head_drop.", "attn_pool.")


class ViTEncoder(TokenEncoder):
    """Vision Transformer encoder returning NCHW feature maps (see :mod:`.base` for the contract).

    Every block's attention is injected: one type for all blocks (``CBSAAttention`` or
    ``SoftmaxAttention``), optionally another type for chosen blocks (``alt_attn_layer`` at
    ``alt_attn_blocks``, e.g. softmax in the last block of a CBSA encoder). Any input size works: images are padded
    to a multiple of the patch size and position embeddings are resampled (bicubic) to the grid.

    The architecture is given by a timm name (``arch="vit_small_patch14_dinov2"``) or by the explicit
    arguments below; with ``arch``, every architecture argument left at ``None`` is read from timm's own
    definition of that model (:func:`timm_vit_args`) and explicit ones override it. So a config needs only::

        arch: vit_small_patch14_dinov2
        img_size: 224                                  # optional: default = the arch's pretrained size
        pretrained: vit_small_patch14_dinov2.lvd142m   # or a local file: /weights/dinov2_vits14.safetensors

    Args:
        arch: timm ``VisionTransformer`` model name (``vit_small_patch16_224``, ``vit_base_patch16_384``,
            ``vit_small_patch14_dinov2``, ``vit_small_patch14_reg4_dinov2``, ``deit3_small_patch16_224``, ...;
            a pretrained tag such as ``.lvd142m`` is accepted). Only the architecture is read (the model
            is built on the meta device: nothing is allocated or downloaded); weights come from ``pretrained``.
        img_size: size the position embedding is made for (pretrained weights are resampled to it);
            ``None`` = the arch's pretrained input size (518 for DINOv2), else 224.
        patch_size: patch size (16; 14 for DINOv2) = output stride. ``None`` = arch's, else 16.
        in_chans: input channels.
        embed_dim: token width (``None`` = arch's, else 384).
        depth: number of blocks (``None`` = arch's, else 12).
        num_heads: attention heads (``None`` = arch's, else 6).
        mlp_ratio: MLP hidden width / embed_dim (``None`` = arch's, else 4).
        attn_layer: attention type of every block, called as ``attn_layer(dim, num_heads)``; ``None`` =
            :class:`~cbsa_dense.layers.SoftmaxAttention` (a class default would leak its init_args into
            a configured ``class_path`` under jsonargparse). Loading softmax-ViT weights into CBSA needs
            ``CBSAAttention(variant="qkv")`` (timm's ``qkv``/``proj`` names and shapes).
        alt_attn_layer: attention type of the blocks listed in ``alt_attn_blocks``.
        alt_attn_blocks: block indices (negative from the end) that use ``alt_attn_layer``.
        class_token: prepend a CLS token (dropped from the outputs); ``None`` = arch's, else True.
        reg_tokens: number of register tokens (DINOv2-reg); ``None`` = arch's, else 0.
        no_embed_class: position embedding covers patches only (timm's flag; DINOv2-reg checkpoints);
            ``None`` = arch's, else False.
        init_values: LayerScale init (DINOv2/DeiT-III: 1e-5 or 1.0); ``None`` = arch's, else no LayerScale;
            ``0`` = no LayerScale even if the arch has one.
        drop_path_rate: stochastic depth, linearly increasing over blocks up to this value.
        out_indices: blocks whose outputs are returned (negative counts from the end).
        final_norm: apply the final LayerNorm to the last block's output when it is returned.
        norm_eps: LayerNorm epsilon (``None`` = arch's, else timm's 1e-6; Segmenter checkpoints 1e-5).
        pretrained: timm ViT weights to load: a local ``.safetensors``/``.pth``/``.bin`` file; a timm model
            name with pretrained weights (``"vit_small_patch14_dinov2.lvd142m"``,
            ``"vit_base_patch16_224.augreg2_in21k_ft_in1k"``; untagged = timm's default tag), fetched by timm
            through the Hugging Face hub cache (``HF_HOME``; ``HF_HUB_OFFLINE=1`` uses the cache alone); or
            ``"hf-hub:org/repo"`` as timm accepts it. A checkpoint of this project is refused (the task's
            ``weights`` loads those). Set ``arch`` to the weights' architecture. Every tensor must
            fit: an unexpected or shape-mismatched tensor, or a missing one other than the CBSA step
            sizes (absent from softmax checkpoints, they start fresh), is a ``CheckpointError`` naming the
            keys and shapes (e.g. timm's ``qkv`` into CBSA layers of the ``shared`` variant).
        pretrained_strict: ``False`` turns those errors into a logged warning (the tensors that do not fit
            keep their initialization).
        grad_checkpointing: activation checkpointing of every block during training.

    Raises:
        ConfigError: ``arch`` is not a timm model name (close matches are listed) or not a plain ViT.
    """

    def __init__(self, arch: str | None = None, img_size: int | tuple[int, int] | None = None,
                 patch_size: int | None = None, in_chans: int = 3, embed_dim: int | None = None,
                 depth: int | None = None, num_heads: int | None = None, mlp_ratio: float | None = None,
                 attn_layer: AttnLayer | None = None, alt_attn_layer: AttnLayer | None = None,
                 alt_attn_blocks: Sequence[int] = (), class_token: bool | None = None,
                 reg_tokens: int | None = None, no_embed_class: bool | None = None,
                 init_values: float | None = None, drop_path_rate: float = 0.0, out_indices: Sequence[int] = (-1,),
                 final_norm: bool = True, norm_eps: float | None = None, pretrained: str | None = None,
                 grad_checkpointing: bool = False, pretrained_strict: bool = True) -> None:
        base = timm_vit_args(arch) if arch else _PLAIN_DEFAULTS
        given = {"img_size": img_size, "patch_size": patch_size, "embed_dim": embed_dim, "depth": depth,
                 "num_heads": num_heads, "mlp_ratio": mlp_ratio, "class_token": class_token,
                 "reg_tokens": reg_tokens, "no_embed_class": no_embed_class, "init_values": init_values,
                 "norm_eps": norm_eps}
        (img_size, patch_size, embed_dim, depth, num_heads, mlp_ratio, class_token, reg_tokens, no_embed_class,
         init_values, norm_eps) = (base[k] if v is None else v for k, v in given.items())
        super().__init__()
        self.arch = arch
        self.linearized = False                 # set by load_pretrained (a ``cbsa-dense linearize`` file)
        self.pretrained_from: str | None = None  # set by load_pretrained: where the weights came from
        self._resolved = {"img_size": list(img_size) if isinstance(img_size, (tuple, list)) else img_size,
                          "patch_size": patch_size, "embed_dim": embed_dim, "depth": depth, "num_heads": num_heads,
                          "mlp_ratio": float(mlp_ratio), "class_token": class_token, "reg_tokens": reg_tokens,
                          "no_embed_class": no_embed_class, "init_values": init_values or None,
                          "norm_eps": float(norm_eps)}
        alt = {i if i >= 0 else depth + i for i in alt_attn_blocks}
        if alt and (alt_attn_layer is None or not alt <= set(range(depth))):
            raise ConfigError(f"alt_attn_blocks={list(alt_attn_blocks)} needs alt_attn_layer and block indices "
                             f"in [-{depth}, {depth})")
        attn_layer = attn_layer or SoftmaxAttention
        attn_layers = [alt_attn_layer if i in alt else attn_layer for i in range(depth)]
        self.patch_embed = PatchEmbed(img_size=to_2tuple(img_size), patch_size=patch_size, in_chans=in_chans,
                                      embed_dim=embed_dim, flatten=False, output_fmt="NHWC",
                                      strict_img_size=False, dynamic_img_pad=True)
        self._init_tokens(embed_dim, tuple(self.patch_embed.grid_size), patch_size, class_token, reg_tokens,
                          no_embed_class, out_indices, depth, final_norm, grad_checkpointing)
        rates = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]
        self.blocks = nn.ModuleList(
            Block(embed_dim, num_heads, attn_layer=layer, mlp_ratio=mlp_ratio, init_values=init_values,
                  drop_path=rate, norm_eps=norm_eps)
            for layer, rate in zip(attn_layers, rates))
        self.norm = nn.LayerNorm(embed_dim, eps=norm_eps)
        self.apply(_init_linear)
        for block in self.blocks:
            reset = getattr(block.attn, "reset_step_sizes", None)
            if reset is not None:
                reset()
        if pretrained:
            self.load_pretrained(pretrained, strict=pretrained_strict)

    def stored_args(self) -> dict:
        """Constructor arguments that rebuild this encoder's architecture without timm and without files.

        The architecture arguments as resolved (those an ``arch`` filled in from timm's definition made
        explicit, ``arch`` itself ``None``) and ``pretrained=None``: a checkpoint stores these in place of
        the training config's (:meth:`~cbsa_dense.tasks.base.BaseTask.on_save_checkpoint`), so it builds the
        same model under another timm version, and its weights come from its own state dict.
        """
        return {"arch": None, **self._resolved, "pretrained": None}

    def load_pretrained(self, source: str, strict: bool = True) -> LoadReport:
        """Load timm ViT weights, adapted by :func:`adapt_timm_state_dict`: a local file, a timm model name
        with pretrained weights or ``hf-hub:org/repo`` (see :func:`cbsa_dense.models.pretrained.read_pretrained`).

        ``strict``: see ``pretrained_strict``; raises ``CheckpointError`` when the weights do not fit.
        """
        state_dict = read_pretrained(source)
        # A file written by ``cbsa-dense linearize`` holds attention already matched to its softmax teacher:
        # the AttentionTransfer callback must not run again on it (its teacher would be the changed q/k).
        self.linearized = state_dict.pop(LINEARIZED_KEY, None) is not None
        report = load_matching(self, adapt_timm_state_dict(state_dict, self), source=str(source), strict=strict,
                               may_reinit=FRESH_ATTENTION_KEYS, opt_out="pretrained_strict: false on the encoder")
        self.pretrained_from = str(source)
        return report


#: Architecture of a ``ViTEncoder`` built without ``arch`` (ViT-S/16 at 224, timm's LayerNorm eps).
_PLAIN_DEFAULTS = {"img_size": 224, "patch_size": 16, "embed_dim": 384, "depth": 12, "num_heads": 6,
                   "mlp_ratio": 4.0, "class_token": True, "reg_tokens": 0, "no_embed_class": False,
                   "init_values": None, "norm_eps": 1e-6}


@functools.lru_cache(maxsize=64)
def _timm_vit_args(arch: str) -> tuple:
    import timm
    from timm.layers import LayerScale, Mlp
    from timm.models.vision_transformer import Attention, VisionTransformer
    from timm.models.vision_transformer import Block as TimmBlock

    name, _, tag = arch.partition(".")
    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=5, cutoff=0.6)
        hint = f"; close matches: {', '.join(close)}" if close else "; see timm.list_models('vit_*')"
        raise ConfigError(f"arch={arch!r} is not a timm model name{hint}")
    if tag and arch not in timm.list_pretrained(f"{name}.*"):
        tags = [t.partition(".")[2] for t in timm.list_pretrained(f"{name}.*")]
        raise ConfigError(f"arch={arch!r}: timm knows no pretrained tag {tag!r} for {name} (known: "
                          f"{', '.join(tags) or 'none'}); the tag can be left out, only the architecture is read")
    try:
        with torch.device("meta"):
            model = timm.create_model(name, pretrained=False)
    except Exception as err:  # noqa: BLE001 - any construction failure is a bad arch for us
        raise ConfigError(f"arch={arch!r}: timm cannot build this model ({type(err).__name__}: {err})") from err

    def unsupported(what: str) -> ConfigError:
        return ConfigError(f"arch={arch!r} is not a plain timm ViT that ViTEncoder can reproduce ({what}); use a "
                           f"vit_* / deit3_* / DINOv2 name, or give the architecture arguments explicitly")

    if type(model) is not VisionTransformer:
        raise unsupported(f"it is a {type(model).__name__}")
    if model.pos_embed is None or not isinstance(model.norm, nn.LayerNorm):
        raise unsupported("no absolute position embedding or no LayerNorm final norm")
    if not isinstance(model.norm_pre, nn.Identity) or not isinstance(model.patch_embed.norm, nn.Identity):
        raise unsupported("pre-norm / patch-embedding norm")
    if model.patch_embed.proj.bias is None or model.patch_embed.patch_size[0] != model.patch_embed.patch_size[1]:
        raise unsupported("patch embedding without bias or non-square patches")
    block = model.blocks[0]
    if type(block) is not TimmBlock or type(block.attn) is not Attention or type(block.mlp) is not Mlp:
        raise unsupported(f"blocks of type {type(block).__name__} / {type(block.attn).__name__} / "
                          f"{type(block.mlp).__name__}")
    attn = block.attn
    if (not isinstance(attn.q_norm, nn.Identity) or not isinstance(getattr(attn, "norm", nn.Identity()), nn.Identity)
            or not isinstance(block.mlp.norm, nn.Identity) or attn.qkv.bias is None
            or attn.num_heads * attn.head_dim != model.embed_dim):
        raise unsupported("qk-norm, attention/MLP inner norms, qkv without bias or a custom head width")
    act = block.mlp.act
    if type(act) is not nn.GELU or act.approximate != "none" or not isinstance(block.norm1, nn.LayerNorm):
        raise unsupported(f"MLP activation {act} or block norm {type(block.norm1).__name__}")
    grid = tuple(int(g) for g in model.patch_embed.grid_size)
    patch = int(model.patch_embed.patch_size[0])
    size = (grid[0] * patch, grid[1] * patch)
    return tuple({
        "img_size": size[0] if size[0] == size[1] else size,
        "patch_size": patch,
        "embed_dim": int(model.embed_dim),
        "depth": len(model.blocks),
        "num_heads": int(attn.num_heads),
        "mlp_ratio": block.mlp.fc1.out_features / model.embed_dim,
        "class_token": model.cls_token is not None,
        "reg_tokens": int(model.num_reg_tokens),
        "no_embed_class": bool(model.no_embed_class),
        "init_values": float(block.ls1.init_values) if isinstance(block.ls1, LayerScale) else None,
        "norm_eps": float(model.norm.eps),
    }.items())


def timm_vit_args(arch: str) -> dict:
    """The :class:`ViTEncoder` architecture arguments of timm's ``arch`` (a ``VisionTransformer`` name).

    Read from timm's own model definition: the model is created with ``pretrained=False`` on the meta
    device (no memory, no download), then its patch size, width, depth, heads, MLP ratio, LayerScale
    init, class/register tokens, position-embedding layout, pretrained position grid (as ``img_size``)
    and LayerNorm epsilon are read. Raises :class:`~cbsa_dense.errors.ConfigError` for unknown names
    (with close matches) and for architectures ``ViTEncoder`` cannot reproduce (other block types,
    qk-norm, SwiGLU, RMSNorm, pre-norm...).
    """
    return dict(_timm_vit_args(str(arch)))


def adapt_timm_state_dict(state_dict: dict, model: ViTEncoder) -> dict:
    """Adapt a timm (or DINOv2/DeiT/Segmenter-encoder) ViT state dict to ``model``.

    Pure function built on timm's ``checkpoint_filter_fn``: converts DINOv2 naming, resamples the
    position embedding to ``model``'s grid (and the patch kernel to its patch size), and drops
    classification-head keys. ``encoder.``-prefixed dicts (Segmenter) are unwrapped.
    """
    from timm.models.vision_transformer import checkpoint_filter_fn

    if any(k.startswith("encoder.") for k in state_dict):
        state_dict = {k[len("encoder."):]: v for k, v in state_dict.items() if k.startswith("encoder.")}
    adapted = checkpoint_filter_fn(dict(state_dict), model)
    return {k: v for k, v in adapted.items() if not k.startswith(_HEAD_PREFIXES)}


def _init_linear(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
