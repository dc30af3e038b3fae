import numpy as np
import torch

from helpers import TINY
from hemaseg.engine.tiling import predict_tiled
from hemaseg.models.registry import create_model


def _model():
    torch.manual_seed(0)
    return create_model("unet-dropout", classes=3, **TINY).eval()


def test_any_size_is_padded_and_cropped_back():
    model = _model()
    for h, w in [(17, 33), (64, 64), (5, 70)]:
        x = np.random.default_rng(0).random((h, w, 3), dtype=np.float32)
        p = predict_tiled(model, x, tile=512, stride=model.stride)
        assert p.shape == (3, h, w)
        assert np.allclose(p.sum(0), 1.0, atol=1e-5)


def test_stitched_equals_untiled():
    model = _model()
    rng = np.random.default_rng(1)
    # A smooth image: structure at the scale of cells, not pixel noise.
    from scipy.ndimage import gaussian_filter

    x = gaussian_filter(rng.random((200, 260, 3)).astype(np.float32), (4, 4, 0)) * 4
    whole = predict_tiled(model, x, tile=512, stride=model.stride)
    tiled = predict_tiled(model, x, tile=64, overlap=32, stride=model.stride)
    assert tiled.shape == whole.shape
    # The tiny model's receptive field is well inside the 32 px overlap.
    assert np.abs(tiled - whole).max() < 1e-3
    assert (tiled.argmax(0) == whole.argmax(0)).mean() > 0.999


def test_tiles_actually_used_differ_without_overlap():
    """Guard for the test above: with no overlap the seams do show."""
    model = _model()
    from scipy.ndimage import gaussian_filter

    x = gaussian_filter(np.random.default_rng(1).random((200, 260, 3)).astype(np.float32), (4, 4, 0)) * 4
    whole = predict_tiled(model, x, tile=512, stride=model.stride)
    tiled = predict_tiled(model, x, tile=64, overlap=0, stride=model.stride)
    assert np.abs(tiled - whole).max() > 1e-3
