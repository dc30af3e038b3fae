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


def test_an_image_run_at_the_scale_bound_is_said(caplog):
    """A walkthrough (stop 71): red cells too large for the smallest scale (0.1x) were run there unsaid, and read
    at half their size and cut in pieces."""
    import hemaseg

    image = hemaseg.read_image(hemaseg.__path__[0] + "/samples/BloodImage_00000.jpg")
    caplog.clear()
    seg = hemaseg.segment(image, model="cells", cell_diameter=4000)
    assert seg.scale == 0.1 and "run at 0.1x, the smallest scale the model is run at: cells of 449 px reach its " \
        "trained 45 px there; these are 4000 px (given)" in caplog.text
    caplog.clear()
    hemaseg.segment(image[:200, :200], model="cells", cell_diameter=90)
    assert "scale the model is run at" not in caplog.text
