"""The napari plugin (hemaseg/apps/napari.py + napari.yaml): the layer data it builds, and the
widget docked in a headless napari viewer (napari's own ``make_napari_viewer`` fixture) on the
bundled sample photo, found through the npe2 manifest as a user's napari finds it."""
from __future__ import annotations

import os
import sys

import numpy as np
import pytest

# Headless Qt. napari's canvas still needs OpenGL: an X display (pytest-xvfb, in the dev extra, starts
# Xvfb when it is installed). Mesa's softpipe renderer keeps Mesa's LLVM uninitialised, so a process
# that already loaded torch's triton (another test's torchvision detection ops) can still draw.
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
os.environ.setdefault("GALLIUM_DRIVER", "softpipe")

from hemaseg.apps.napari import RUNS, TYPE_COLOURS, as_rgb, cell_layers  # noqa: E402
from hemaseg.core.vocabulary import CATEGORIES  # noqa: E402
from hemaseg.errors import HemasegUsageError  # noqa: E402
from hemaseg.io.images import read_image  # noqa: E402
from hemaseg.models.registry import SAMPLE_PHOTO as SAMPLE  # noqa: E402
from hemaseg.pipelines.analyze import CATEGORY_COLOURS, analyze  # noqa: E402
from hemaseg.pipelines.segment import segment  # noqa: E402

LAYERS = ("instances", "classes", "outlines", "cells")


def test_as_rgb_takes_grey_rgba_and_float_and_refuses_stacks():
    assert as_rgb(np.zeros((5, 6), np.uint16)).shape == (5, 6, 3)
    rgba = np.zeros((5, 6, 4), np.uint8)
    rgba[..., 1] = 7
    out = as_rgb(rgba)
    assert out.shape == (5, 6, 3) and out.dtype == np.uint8 and (out[..., 1] == 7).all()
    assert as_rgb(np.linspace(0, 1, 30).reshape(5, 6)).max() == 255
    with pytest.raises(HemasegUsageError, match=r"one 2D photo.*\(3, 5, 6, 3\)"):
        as_rgb(np.zeros((3, 5, 6, 3), np.uint8), "stack")


def test_cell_layers_hold_segment_result():
    """Without Qt: the four layers of a ``segment`` run are the Segmentation's own arrays and objects."""
    image = read_image(SAMPLE)
    layers, summary = cell_layers(image, "cells", scale=(2.0, 2.0))
    seg = segment(image, model="cells")
    assert [(kw["name"], kind) for _, kw, kind in layers] == [
        ("hemaseg cells instances", "labels"), ("hemaseg cells classes", "labels"),
        ("hemaseg cells outlines", "shapes"), ("hemaseg cells cells", "points")]
    (inst, inst_kw, _), (classes, _, _), (shapes, _, _), (points, pts_kw, _) = layers
    n = len(seg.objects)
    assert n > 5
    np.testing.assert_array_equal(inst, seg.instances)
    np.testing.assert_array_equal(classes, seg.classes)
    assert len(shapes) == n and len(points) == n and all(s.shape[1] == 2 for s in shapes)
    assert inst_kw["features"]["index"] == [o["id"] for o in seg.objects]
    assert pts_kw["scale"] == (2.0, 2.0)
    # Each point lies in its own cell's box, and points of one class share one colour.
    for (r, c), o in zip(points, seg.objects):
        b = o["bounding_box"]
        assert b["y1"] <= r < b["y2"] and b["x1"] <= c < b["x2"]
    colours = {}
    for t, col in zip(pts_kw["features"]["type"], pts_kw["face_color"]):
        assert np.allclose(colours.setdefault(t, col), col)
    assert summary.startswith(f"cells: {n} objects")


def test_cell_layers_refuses_unknown_run():
    with pytest.raises(HemasegUsageError, match="run"):
        cell_layers(np.zeros((8, 8, 3), np.uint8), "tissue")
    assert RUNS[0] == "analyze"


@pytest.fixture
def viewer(request):
    pytest.importorskip("napari", reason="the napari plugin's test needs the [napari] extra (pip install 'hemaseg[napari]')")
    pytest.importorskip("pytestqt", reason="napari's make_napari_viewer fixture needs pytest-qt (dev extra)")
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        pytest.skip("napari draws with OpenGL, which needs a display even offscreen: install Xvfb "
                    "(apt-get install xvfb); pytest-xvfb (dev extra) then starts it")
    why = _no_opengl()
    if why:
        pytest.skip(f"napari cannot draw here: {why}")
    return request.getfixturevalue("make_napari_viewer")()


def _no_opengl() -> str:
    """Why napari's canvas could not draw in this process ("" when it can): the check vispy makes when an
    image layer is added (an OpenGL context current on Qt's platform, and its extension string), made
    first. Qt's offscreen platform draws through the X display's GLX; without it (the display gone, or a
    context without an extension string) napari fails inside its own canvas, which says nothing of ours."""
    from napari.qt import get_qapp
    from OpenGL import GL
    from qtpy.QtGui import QOffscreenSurface, QOpenGLContext

    app = get_qapp()
    context, surface = QOpenGLContext(), QOffscreenSurface()
    surface.create()
    if not context.create() or not context.makeCurrent(surface):
        return f"no OpenGL context on Qt's {app.platformName()!r} platform (DISPLAY={os.environ.get('DISPLAY')!r})"
    try:
        if GL.glGetString(GL.GL_EXTENSIONS) is None:
            return f"the OpenGL context on Qt's {app.platformName()!r} platform gives no extension string"
    finally:
        context.doneCurrent()
    return ""


def test_widget_adds_analysis_layers_for_bundled_sample(viewer):
    """The manifest's sample and widget, run as a user does: Run on the sample adds labels, outlines and
    one point per cell coloured by its type, matching hemaseg.analyze on the same photo."""
    viewer.open_sample("hemaseg", "blood_smear")
    assert [layer.name for layer in viewer.layers] == ["BloodImage_00000"]
    photo = viewer.layers["BloodImage_00000"]
    assert photo.rgb and photo.data.shape == (480, 640, 3)
    _, widget = viewer.window.add_plugin_dock_widget("hemaseg", "Blood cells")
    form = widget.run_hemaseg
    assert form.image.value is photo and form.run.value == "analyze"
    form()

    expected = analyze(read_image(SAMPLE))
    records = expected.entry["masks"]
    n = len(records)
    assert n > 10 and expected.counts["wbc"] >= 1
    names = [layer.name for layer in viewer.layers]
    assert names == ["BloodImage_00000"] + [f"hemaseg analyze {k}" for k in LAYERS]
    inst, classes, outlines, cells = (viewer.layers[f"hemaseg analyze {k}"] for k in LAYERS)
    assert type(inst).__name__ == "Labels" and type(classes).__name__ == "Labels"
    assert type(outlines).__name__ == "Shapes" and type(cells).__name__ == "Points"
    np.testing.assert_array_equal(inst.data, expected.instances)
    assert set(np.unique(inst.data)) == set(range(n + 1))
    # The class labels are the categories: 1 rbc, 2 wbc, 3 platelet.
    for k, r in enumerate(records, 1):
        assert set(np.unique(classes.data[inst.data == k])) == {CATEGORIES.index(r["category"]) + 1}
    assert outlines.nshapes == n and len(cells.data) == n
    assert list(cells.features["type"]) == [r["class_name"] for r in records]
    for t, colour in zip(cells.features["type"], cells.face_color):
        np.testing.assert_allclose(colour[:3], np.array(TYPE_COLOURS[t]) / 255, atol=1e-6)
    wbc_types = [r["class_name"] for r in records if r["category"] == "wbc"]
    assert any(t != "wbc" for t in wbc_types)  # the sample's WBC is typed (a neutrophil)
    assert widget.summary.value.startswith(f"analyze: {expected.counts['rbc']} rbc, {expected.counts['wbc']} wbc")

    # Another run (a segment model, twice): its own four layers, replaced in place on the second run.
    form.run.value = "wbc"
    form()
    form()
    assert len(viewer.layers) == 9
    wbc = segment(read_image(SAMPLE), model="wbc")
    np.testing.assert_array_equal(viewer.layers["hemaseg wbc classes"].data, wbc.classes)
    points = viewer.layers["hemaseg wbc cells"]
    assert len(points.data) == len(wbc.objects) >= 1
    np.testing.assert_allclose(points.face_color[:, :3], np.array([CATEGORY_COLOURS["wbc"]] * len(points.data)) / 255,
                               atol=1e-6)
