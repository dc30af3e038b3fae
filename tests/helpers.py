"""Helpers shared by the tests: synthetic WBC images and the tiny architecture."""
from __future__ import annotations

import numpy as np

TINY = {"widths": [4, 8, 16], "dropout": 0.1, "stem_stride": 1}


def toy_wbc(rng: np.random.Generator, size: int = 48, radius: float | None = None,
            center: tuple[float, float] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """A pink background with pale RBC rings and one WBC (cytoplasm + dark nucleus).

    Returns ((size, size, 3) uint8 image, (size, size) uint8 mask in 0/128/255).
    """
    yy, xx = np.mgrid[:size, :size].astype(np.float32)
    img = np.empty((size, size, 3), np.float32)
    img[:] = (235, 215, 215)
    for _ in range(4):
        cy, cx = rng.uniform(0, size, 2)
        d = np.hypot(yy - cy, xx - cx)
        img[(d > size / 10) & (d < size / 7)] = (215, 160, 165)
    r = radius or rng.uniform(size / 5, size / 3.5)
    cy, cx = center or (size / 2 + rng.uniform(-3, 3), size / 2 + rng.uniform(-3, 3))
    d = np.hypot(yy - cy, xx - cx)
    cell = d < r
    nuc = np.hypot(yy - cy - r / 5, xx - cx) < r * 0.55
    img[cell] = (180, 150, 215)
    img[nuc & cell] = (90, 40, 130)
    img += rng.normal(0, 4, img.shape)
    mask = np.zeros((size, size), np.uint8)
    mask[cell] = 128
    mask[nuc & cell] = 255
    return np.clip(img, 0, 255).astype(np.uint8), mask


class ThresholdNet:
    """A stand-in "model" that segments toy_wbc images by brightness (nucleus dark, cytoplasm mid).

    Deterministic and scale-free, so tests of the scale logic do not depend on training.
    """

    def __new__(cls):
        import torch

        class _Net(torch.nn.Module):
            stride = 1

            def __init__(self) -> None:
                super().__init__()
                self.dummy = torch.nn.Parameter(torch.zeros(1))

            def forward(self, x):
                # After percentile normalisation: background ~1 everywhere, nucleus ~0,
                # cytoplasm bluish-bright (blue ~1, mean ~0.8), red-cell rings low in blue.
                m, b = x.mean(1, keepdim=True), x[:, 2:3]
                nucleus = 50.0 * (0.4 - m)
                cytoplasm = 50.0 * torch.minimum(b - 0.7, 0.85 - m)
                return torch.cat([torch.zeros_like(m), cytoplasm, nucleus], 1) + 0 * self.dummy

        return _Net().eval()


def toy_nuclei(rng: np.random.Generator, size: int = 64, n: int = 5, radius: tuple[float, float] = (4, 8),
               brightfield: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Round nuclei on a plain background: bright on dark (fluorescence) or dark on light (brightfield).

    Returns ((size, size, 3) uint8 image, (size, size) uint16 labels 1..n; later discs cover earlier ones).
    """
    yy, xx = np.mgrid[:size, :size].astype(np.float32)
    labels = np.zeros((size, size), np.uint16)
    for k in range(1, n + 1):
        r = rng.uniform(*radius)
        cy, cx = rng.uniform(r, size - r, 2)
        labels[np.hypot(yy - cy, xx - cx) < r] = k
    ids = np.unique(labels[labels > 0])
    lut = np.zeros(n + 1, np.uint16)
    lut[ids] = np.arange(1, len(ids) + 1)
    labels = lut[labels]
    grey = np.where(labels > 0, 200.0, 20.0) + rng.normal(0, 6, labels.shape)
    if brightfield:
        grey = 255 - grey
    img = np.repeat(np.clip(grey, 0, 255).astype(np.uint8)[..., None], 3, -1)
    return img, labels


def make_dsb(root, n: int = 6, size: int = 64, seed: int = 0):
    """Write a tiny Data Science Bowl folder: ROOT/<id>/images/<id>.png (RGBA) + masks/<id>_<k>.png."""
    from pathlib import Path

    from PIL import Image

    root = Path(root)
    rng = np.random.default_rng(seed)
    for i in range(n):
        img, labels = toy_nuclei(rng, size, brightfield=i % 3 == 2)
        sid = f"{i:02d}{'ab' * 8}"
        (root / sid / "images").mkdir(parents=True)
        (root / sid / "masks").mkdir()
        rgba = np.concatenate([img, np.full((size, size, 1), 255, np.uint8)], -1)
        Image.fromarray(rgba).save(root / sid / "images" / f"{sid}.png")
        for k in range(1, int(labels.max()) + 1):
            Image.fromarray(((labels == k) * 255).astype(np.uint8)).save(root / sid / "masks" / f"{sid}_{k:03d}.png")
    return root


def as_begun_before_the_start_was_kept(run) -> None:
    """Make a fine-tune's run folder look like one begun before stop 67: no "start" in state.json, no start copy."""
    import json
    from pathlib import Path

    run = Path(run)
    state = json.loads((run / "state.json").read_text())
    state.pop("start")
    (run / "state.json").write_text(json.dumps(state))
    for f in ("start.safetensors", "start.json"):
        (run / f).unlink()
