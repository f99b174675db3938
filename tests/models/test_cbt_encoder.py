import pytest
import torch
import torch.nn.functional as F
from torch import nn

import cbsa_dense
from cbsa_dense.errors import CheckpointError
from cbsa_dense.models.checkpoint import load_matching
from cbsa_dense.models.encoders import CBT_SIZES, CBTEncoder, convert_cbt_checkpoint

PAPER_PARAMS_M = {"tiny": 1.8, "small": 6.7, "base": 25.7, "large": 83.1}


@pytest.mark.parametrize("size", list(CBT_SIZES))
def test_parameter_counts_match_paper_within_one_percent(size):
    with torch.device("meta"):
        model = CBTEncoder.from_size(size, num_classes=1000)
    params = sum(p.numel() for p in model.parameters()) / 1e6
    assert abs(params - PAPER_PARAMS_M[size]) / PAPER_PARAMS_M[size] < 0.01, params


# ------------------------------------------------------------------------------------------------------
# A re-statement of the authors' released CBT classifier (their module structure and forward, plain
# nn.Modules; nothing from cbsa_dense). Its state dict is the release's layout: a nested conv stem
# ``to_patch_embedding.proj.{0,2,4,6}.{0 conv, 1 SyncBatchNorm}``, ``transformer.layers.{i}.{0,1}``
# (PreNorm(CBSA), PreNorm(ISTA)), ``pos_embedding``, ``cls_token`` (first), ``mlp_head.{0,1}``. Its CBSA
# pools ``w[:, :-1]`` with a square side int(sqrt(n)): the CLS-shifted grid of spec section 2.
# ------------------------------------------------------------------------------------------------------


class PreNorm(nn.Module):
    def __init__(self, dim, fn):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fn = fn

    def forward(self, x):
        return self.fn(self.norm(x))


def conv3x3(cin, cout, stride=1):
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.SyncBatchNorm(cout))


class ConvPatchEmbed(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.proj = nn.Sequential(conv3x3(3, dim // 8, 2), nn.GELU(), conv3x3(dim // 8, dim // 4, 2), nn.GELU(),
                                  conv3x3(dim // 4, dim // 2, 2), nn.GELU(), conv3x3(dim // 2, dim, 2))

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)


class CBSA(nn.Module):
    def __init__(self, dim, heads, dim_head):
        super().__init__()
        self.heads, self.dim_head, self.scale = heads, dim_head, dim_head ** -0.5
        self.proj = nn.Linear(dim, heads * dim_head, bias=False)
        self.step_x = nn.Parameter(torch.randn(heads, 1, 1))
        self.step_rep = nn.Parameter(torch.randn(heads, 1, 1))
        self.to_out = nn.Linear(heads * dim_head, dim)
        self.pool = nn.AdaptiveAvgPool2d((8, 8))

    def attention(self, q, k, v):
        attn = ((q @ k.transpose(-1, -2)) * self.scale).softmax(-1)
        return attn @ v, attn

    def forward(self, x):
        b, n, c = x.shape
        h = width = int(n ** 0.5)
        w = self.proj(x)
        rep = self.pool(w[:, :-1, :].reshape(b, h, width, c).permute(0, 3, 1, 2)).reshape(b, c, -1).permute(0, 2, 1)
        w = w.reshape(b, n, self.heads, self.dim_head).permute(0, 2, 1, 3)
        rep = rep.reshape(b, 64, self.heads, self.dim_head).permute(0, 2, 1, 3)
        delta, attn = self.attention(rep, w, w)
        rep = rep + self.step_rep * delta
        xd, _ = self.attention(rep, rep, rep)
        xd = self.step_x * (attn.transpose(-1, -2) @ xd)
        return self.to_out(xd.permute(0, 2, 1, 3).reshape(b, n, -1))


class ISTA(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(dim, dim) * dim ** -0.5)

    def forward(self, x):
        x1 = F.linear(x, self.weight)
        grad = 0.1 * (F.linear(x, self.weight.t()) - F.linear(x1, self.weight.t())) - 0.1 * 0.1
        return F.relu(x + grad)


class Transformer(nn.Module):
    def __init__(self, dim, depth, heads, dim_head):
        super().__init__()
        self.layers = nn.ModuleList(nn.ModuleList([PreNorm(dim, CBSA(dim, heads, dim_head)), PreNorm(dim, ISTA(dim))])
                                    for _ in range(depth))

    def forward(self, x):
        for attn, ff in self.layers:
            x = ff(attn(x) + x)
        return x


class AuthorsCBT(nn.Module):
    def __init__(self, image_size, num_classes, dim, depth, heads, dim_head):
        super().__init__()
        self.to_patch_embedding = ConvPatchEmbed(dim)
        self.pos_embedding = nn.Parameter(torch.randn(1, (image_size // 16) ** 2 + 1, dim))
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim))
        self.transformer = Transformer(dim, depth, heads, dim_head)
        self.mlp_head = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, num_classes))

    def forward(self, img):
        x = self.to_patch_embedding(img)
        b, n, _ = x.shape
        x = torch.cat([self.cls_token.expand(b, -1, -1), x], 1) + self.pos_embedding[:, :n + 1]
        return self.mlp_head(self.transformer(x)[:, 0])


def _authors_release(image_size=160, num_classes=10, dim=64, depth=2, heads=2, seed=0):
    """The re-statement with non-trivial weights and BatchNorm running statistics, in eval mode."""
    torch.manual_seed(seed)
    ref = AuthorsCBT(image_size, num_classes, dim, depth, heads, dim // heads)
    with torch.no_grad():
        for module in ref.modules():
            if isinstance(module, nn.SyncBatchNorm):
                module.running_mean.normal_(0.0, 0.2)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.normal_(1.0, 0.2)
                module.bias.normal_(0.0, 0.2)
                module.num_batches_tracked.fill_(1234)
            elif isinstance(module, nn.LayerNorm):
                module.weight.normal_(1.0, 0.2)
                module.bias.normal_(0.0, 0.2)
            elif isinstance(module, nn.Linear) and module.bias is not None:
                module.bias.normal_(0.0, 0.05)
    return ref.eval()


def _save_release(ref, path):
    """As the authors' training script saves it: DDP ``module.`` prefix inside ``state_dict``, ``.pth.tar``."""
    torch.save({"epoch": 300, "arch": "cbt_small", "best_acc1": 71.4,
                "state_dict": {"module." + k: v for k, v in ref.state_dict().items()}}, path)


def test_released_checkpoint_reproduces_the_authors_logits(tmp_path):
    ref = _authors_release()
    path = tmp_path / "cbt_small.pth.tar"
    _save_release(ref, path)
    model = cbsa_dense.load_cbt_checkpoint(path)           # strict: raises on any missing/unexpected key
    assert model.blocks[0].attn.legacy_shifted_grid and model.head.out_features == 10
    released = torch.load(path, weights_only=True)["state_dict"]
    assert "module.to_patch_embedding.proj.6.1.running_var" in released
    report = load_matching(CBTEncoder(img_size=160, embed_dim=64, depth=2, num_heads=2, head_dim=32,
                                      num_classes=10, legacy_shifted_grid=True),
                           convert_cbt_checkpoint(released))
    assert (report.missing, report.unexpected, report.mismatched) == ([], [], [])
    assert report.loaded == len(released)
    images = torch.rand(3, 3, 160, 160, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours, theirs = model.classify(images), ref(images)
    assert theirs.abs().max() > 0.1                        # a non-trivial comparison
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)


def test_release_with_a_foreign_key_is_refused(tmp_path):
    ref = _authors_release()
    path = tmp_path / "cbt.pth.tar"
    state = {"module." + k: v for k, v in ref.state_dict().items()}
    state["module.to_patch_embedding.proj.8.0.weight"] = torch.zeros(64, 64, 3, 3)     # a fifth conv
    torch.save({"state_dict": state}, path)
    with pytest.raises(CheckpointError, match=r"cbt\.pth\.tar does not fit the CBTEncoder: 1 unexpected tensor \(patch_embed\.proj\.12\.weight \(64, 64, 3, 3\)\)"):
        cbsa_dense.load_cbt_checkpoint(path)


def test_feature_maps_any_size_and_legacy_switch_changes_output():
    model = CBTEncoder(embed_dim=64, depth=2, num_heads=2, head_dim=32, out_indices=(0, 1)).eval()
    legacy = CBTEncoder(embed_dim=64, depth=2, num_heads=2, head_dim=32, out_indices=(0, 1),
                        legacy_shifted_grid=True).eval()
    legacy.load_state_dict(model.state_dict())
    x = torch.randn(1, 3, 100, 150)
    outs = model(x)
    assert [o.shape for o in outs] == [(1, 64, 7, 10)] * 2 and model.out_strides == [16, 16]
    assert not torch.allclose(outs[-1], legacy(x)[-1])


def test_unknown_size():
    with pytest.raises(ValueError, match="huge"):
        CBTEncoder.from_size("huge")
