"""Fixtures shared by the tests."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import TINY, toy_wbc
from hemaseg.models.registry import create_model, save_model

# Tiny tensors gain nothing from threads, and spinning threads fight anything else running.
torch.set_num_threads(1)


@pytest.fixture
def wbc_folder(tmp_path: Path) -> Path:
    """A wbc-seg style folder: NNN.bmp images beside NNN.png masks (10 pairs)."""
    rng = np.random.default_rng(0)
    root = tmp_path / "wbcseg"
    root.mkdir()
    for i in range(10):
        img, mask = toy_wbc(rng)
        Image.fromarray(img).save(root / f"{i:03d}.bmp")
        Image.fromarray(mask).save(root / f"{i:03d}.png")
    return root


@pytest.fixture
def tiny_model_path(tmp_path: Path) -> Path:
    """A tiny untrained U-Net saved as safetensors + card (cell diameter 24 px)."""
    import torch

    torch.manual_seed(0)
    model = create_model("unet-dropout", classes=3, **TINY)
    card = {"name": "tiny", "task": "wbc", "classes": ["background", "cytoplasm", "nucleus"],
            "architecture": {"name": "unet-dropout", "kwargs": {"classes": 3, **TINY}},
            "normalization": {"type": "percentile", "low": 1.0, "high": 99.0}, "cell_diameter": 24.0}
    st, _ = save_model(model.eval(), tmp_path / "tiny", card)
    return st
