import numpy as np
import torch
from PIL import Image

from cbsa_dense.interpret import capture_extractions
from cbsa_dense.interpret.render import pixel_token, save_explanation
from cbsa_dense.interpret.zero_shot import majority_relabel, representative_argmax
from cbsa_dense.layers import CBSAAttention
from cbsa_dense.models.encoders import ViTEncoder


def test_majority_relabel():
    clusters = torch.tensor([[0, 0, 1], [1, 2, 2]])
    target = torch.tensor([[3, 3, 1], [255, 255, 0]])
    out = majority_relabel(clusters, target, num_clusters=4)
    assert out.tolist() == [[3, 3, 1], [1, 0, 0]]


def test_representative_argmax_and_figure(tmp_path):
    enc = ViTEncoder(img_size=64, embed_dim=32, depth=1, num_heads=2,
                     attn_layer=lambda d, h: CBSAAttention(d, h, grid=(2, 2))).eval()
    with capture_extractions(enc) as records:
        enc(torch.randn(1, 3, 48, 64))
    labels = representative_argmax(records[0], (48, 64))
    assert labels.shape == (1, 48, 64) and 0 <= labels.min() and labels.max() < 4
    assert pixel_token(records[0], (47, 63), (48, 64)) == 1 + 3 * 4 - 1
    image = np.zeros((48, 64, 3), np.uint8)
    out = save_explanation(tmp_path / "x.png", image, records[0], 0, 1, prediction=image)
    assert Image.open(out).size[0] > 100
