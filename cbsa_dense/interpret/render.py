"""Pictures of what CBSA contracts and broadcasts (matplotlib, Agg backend)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from cbsa_dense.data.seg_labels import default_palette
from cbsa_dense.interpret.capture import CapturedExtraction, token_affinity


def support_panels(record: CapturedExtraction, index: int, head: int) -> np.ndarray:
    """The m representatives' support maps (A rows on the patch grid) of one image and head: (m, h, w)."""
    return record.patch_maps()[index, head].float().cpu().numpy()


def affinity_map(record: CapturedExtraction, index: int, head: int, token: int) -> np.ndarray:
    """Affinity (A^T A) of one token (absolute index, e.g. 0 = CLS) to every patch: (h, w)."""
    h, w = record.grid
    p = record.num_prefix_tokens
    aff = token_affinity(record.extraction[index:index + 1, head:head + 1], [token])[0, 0, 0]
    return aff[p:p + h * w].reshape(h, w).float().cpu().numpy()


def pixel_token(record: CapturedExtraction, pixel: tuple[int, int], image_size: tuple[int, int]) -> int:
    """Absolute token index of the patch under ``pixel`` (y, x) of an image of ``image_size`` (H, W)."""
    h, w = record.grid
    y = min(int(pixel[0] * h / image_size[0]), h - 1)
    x = min(int(pixel[1] * w / image_size[1]), w - 1)
    return record.num_prefix_tokens + y * w + x


def save_explanation(path: str | Path, image: np.ndarray, record: CapturedExtraction, index: int, head: int,
                     prediction: np.ndarray | None = None, query_token: int | None = None,
                     title: str = "") -> Path:
    """Write one PNG: image | prediction | representative argmax | affinity | support panels.

    Args:
        path: output PNG.
        image: (H, W, 3) uint8, the input image.
        record: captured layer.
        index: image index within the batch.
        head: head to show.
        prediction: (H, W, 3) uint8 rendering of the model's prediction (overlay or boxes), or ``None``.
        query_token: token whose affinity is shown (default: CLS if present, else the centre patch).
        title: figure title.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = support_panels(record, index, head)
    m = panels.shape[0]
    size = image.shape[:2]
    argmax = torch.from_numpy(panels).argmax(0)[None, None].float()
    argmax = F.interpolate(argmax, size=size, mode="nearest")[0, 0].long().numpy()
    colored = (0.45 * image + 0.55 * default_palette(m)[argmax]).astype(np.uint8)
    if query_token is None:
        query_token = 0 if record.num_prefix_tokens else pixel_token(record, (size[0] // 2, size[1] // 2), size)
    affinity = affinity_map(record, index, head, query_token)

    cols = min(m, 8)
    rows = 1 + -(-m // cols)
    fig = plt.figure(figsize=(2.2 * max(cols, 4), 2.2 * rows + 0.4))
    grid = fig.add_gridspec(rows, max(cols, 4))
    top = [(image, "image"), (prediction, "prediction"), (colored, f"argmax over {m} representatives"),
           (affinity, f"affinity of token {query_token}")]
    col = 0
    for data, name in top:
        if data is None:
            continue
        ax = fig.add_subplot(grid[0, col])
        ax.imshow(data, cmap="magma" if data.ndim == 2 else None)
        ax.set_title(name, fontsize=7)
        ax.axis("off")
        col += 1
    for r in range(m):
        ax = fig.add_subplot(grid[1 + r // cols, r % cols])
        ax.imshow(panels[r], cmap="viridis")
        ax.set_title(f"rep {r}", fontsize=6)
        ax.axis("off")
    fig.suptitle(title or f"{record.name}, head {head}", fontsize=8)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90, bbox_inches="tight")
    plt.close(fig)
    return path
