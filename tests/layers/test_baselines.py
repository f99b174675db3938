import torch
from timm.layers import Attention as TimmAttention

from cbsa_dense.layers import ISTA, Block, CBSAAttention, LinearAttention, SoftmaxAttention


def test_softmax_attention_equals_timm_attention():
    ours = SoftmaxAttention(48, num_heads=4)
    ref = TimmAttention(48, num_heads=4, qkv_bias=True)
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(2, 11, 48)
    torch.testing.assert_close(ours(x, (2, 5), 1), ref(x), atol=1e-5, rtol=1e-5)


def test_linear_attention_matches_formula():
    layer = LinearAttention(16, num_heads=2)
    x = torch.randn(1, 9, 16)
    q, k, v = (x @ layer.qkv.weight.T + layer.qkv.bias).split(16, dim=-1)
    outs = []
    for h in range(2):
        sl = slice(8 * h, 8 * h + 8)
        fq, fk = torch.nn.functional.elu(q[..., sl]) + 1, torch.nn.functional.elu(k[..., sl]) + 1
        weights = fq @ fk.transpose(1, 2)
        outs.append(weights @ v[..., sl] / weights.sum(-1, keepdim=True))
    expected = layer.proj(torch.cat(outs, -1))
    torch.testing.assert_close(layer(x, (3, 3)), expected, atol=1e-5, rtol=1e-4)


def test_all_attention_types_share_the_call_contract_in_a_block():
    x = torch.randn(2, 1 + 6 * 4, 32)
    for attn in (SoftmaxAttention, LinearAttention, CBSAAttention):
        block = Block(32, 2, attn_layer=attn, init_values=1e-5, drop_path=0.1)
        assert block(x, (6, 4), 1).shape == x.shape


def test_ista_formula():
    ista = ISTA(8)
    x = torch.randn(3, 8)
    d = ista.weight
    # Column form of the spec: ReLU(x + 0.1 (D^T x - D^T D x) - 0.01) with D acting on column vectors.
    expected = torch.relu(x + 0.1 * ((d.T @ x.T).T - (d.T @ d @ x.T).T) - 0.01)
    torch.testing.assert_close(ista(x), expected, atol=1e-5, rtol=1e-5)
