"""The napari plugin: run :func:`hemaseg.analyze` or :func:`hemaseg.segment` on an image layer and see
the cells as napari layers (instance and class labels, outlines, a point per cell coloured by type).

The npe2 manifest beside this module (``napari.yaml``) contributes the widget (:func:`make_widget`)
and the bundled sample photo (:func:`sample_data`). :func:`cell_layers` does the work without Qt:
arrays in, napari layer-data tuples ``(data, kwargs, layer_type)`` out, so it is usable (and
tested) without a viewer. napari and magicgui are imported only inside the functions that need
them: the module imports without the ``[napari]`` extra.
"""
import sys
from collections import Counter

import numpy as np
from scipy import ndimage as ndi

from hemaseg.core.vocabulary import CATEGORIES
from hemaseg.errors import HemasegUsageError
from hemaseg.io.images import as_photo, read_image
from hemaseg.models.registry import SAMPLE_PHOTO
from hemaseg.pipelines.analyze import CATEGORY_COLOURS, MIN_CONFIDENCE, analyze
from hemaseg.pipelines.segment import segment
from hemaseg.tasks import get_task

# What the widget runs: the whole-smear analysis (every cell, each WBC typed), or one task's model.
RUNS = ("analyze", "wbc", "nuclei", "smear10", "cells")
# Point colour per type of an analysis (RGB): the report's category colours, one per WBC type;
# an untyped ("unsure") WBC stays white.
TYPE_COLOURS = {**CATEGORY_COLOURS, "wbc": (255, 255, 255), "neutrophil": (0, 200, 255),
                "lymphocyte": (120, 230, 40), "monocyte": (255, 140, 0), "eosinophil": (255, 60, 200),
                "basophil": (150, 70, 255), "ig": (0, 255, 190), "erythroblast": (140, 0, 0)}
FALLBACK = (200, 200, 200)


def keep_triton_out() -> bool:
    """Stop torch from importing triton (its GPU kernel compiler) in a process whose OpenGL is Mesa's.

    Both bundle LLVM, and loading triton into a process that holds Mesa's ``libLLVM`` (napari's
    canvas on Linux) crashes it; torch imports triton, when installed, the first time torchvision's
    detection ops load (the cells model). hemaseg runs on the CPU and never needs triton. Returns
    True when it was kept out (Linux, Mesa's LLVM loaded, triton not yet imported).
    """
    if "triton" in sys.modules:
        return False
    try:
        with open("/proc/self/maps") as maps:
            mesa_llvm = any("libLLVM" in line for line in maps)
    except OSError:  # not Linux
        return False
    if mesa_llvm:
        sys.modules["triton"] = None  # `import triton` now raises ImportError: torch takes it as absent
    return mesa_llvm


def _rgba(rgb) -> list[float]:
    return [c / 255.0 for c in rgb[:3]] + [1.0]


def as_rgb(data: np.ndarray, name: str = "image") -> np.ndarray:
    """An image layer's data as the (H, W, 3) uint8 RGB photo hemaseg reads: grey becomes three
    equal channels, alpha is dropped, other dtypes are rescaled to their own range
    (:func:`hemaseg.io.images.as_photo`). Anything but one 2D photo is a :class:`HemasegUsageError`.

    >>> as_rgb(np.zeros((4, 5), np.float32)).shape
    (4, 5, 3)
    """
    arr = np.asarray(data)
    if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[-1] in (1, 3, 4))):
        raise HemasegUsageError(name, f"hemaseg reads one 2D photo (H, W), (H, W, 3) or (H, W, 4); this layer is {arr.shape}")
    return as_photo(arr, name)


def _centres(instances: np.ndarray, ids: list[int]) -> np.ndarray:
    """(N, 2) (row, column) centre of mass of each instance id."""
    if not ids:
        return np.zeros((0, 2))
    return np.asarray(ndi.center_of_mass(np.ones(instances.shape, np.uint8), instances, ids), float).reshape(-1, 2)


def _outline(record: dict) -> np.ndarray:
    """A record's outline as (K, 2) (row, column) vertices; its box when it has no polygon."""
    v = np.asarray(record.get("vertices") or [], float).reshape(-1, 2)
    if len(v) >= 3:
        return v[:, ::-1]
    b = record["bounding_box"]
    return np.array([[b["y1"], b["x1"]], [b["y1"], b["x2"]], [b["y2"], b["x2"]], [b["y2"], b["x1"]]], float)


def _layers(prefix: str, instances: np.ndarray, classes: np.ndarray, class_colours: dict, records: list[dict],
            ids: list[int], types: list[str], colours: list, common: dict) -> list[tuple]:
    """Labels (instances, classes), Shapes (outlines) and Points (one per cell) layer-data tuples."""
    n = len(records)
    features = {"id": ids, "type": types, "category": [r.get("category", r["class_name"]) for r in records],
                "score": [float(r.get("score", 1.0)) for r in records]}
    # The type shown beside each white cell; other cells (hundreds of red cells) stay unlabelled.
    label = [t + ("?" if r.get("unsure") else "") if r.get("category") == "wbc" else ""
             for t, r in zip(types, records)]
    face = np.array([_rgba(c) for c in colours], float).reshape(n, 4)
    diam = np.median([r.get("diameter", 20.0) for r in records]) if records else 20.0
    class_cmap = {None: "transparent", 0: "transparent", **{k: _rgba(c) for k, c in class_colours.items() if k}}
    return [
        (instances, {"name": f"{prefix} instances", "features": {"index": ids, **{k: v for k, v in features.items()
                                                                                  if k != "id"}},
                     "opacity": 0.4, **common}, "labels"),
        (classes, {"name": f"{prefix} classes", "colormap": class_cmap, "opacity": 0.35, "visible": False,
                   **common}, "labels"),
        ([_outline(r) for r in records], {"name": f"{prefix} outlines", "shape_type": "polygon",
                                          "edge_color": face if n else "white", "face_color": "transparent",
                                          "edge_width": max(2.0, diam / 25), "features": features, **common},
         "shapes"),
        (_centres(instances, ids), {"name": f"{prefix} cells", "face_color": face if n else "white",
                                    "border_color": "black", "size": max(6.0, diam / 5),
                                    "features": {**features, "label": label},
                                    "text": {"string": "{label}", "color": "white", "size": 10,
                                             "anchor": "upper_left"}, **common}, "points"),
    ]


def cell_layers(image: np.ndarray, run: str = "analyze", cell_diameter: float | None = None, device: str = "cpu",
                min_confidence: float = MIN_CONFIDENCE, scale=None, translate=None) -> tuple[list[tuple], str]:
    """Run ``run`` on an (H, W, 3) uint8 photo; return napari layer-data tuples and a one-line summary.

    Parameters
    ----------
    image : (H, W, 3) uint8 array (see :func:`as_rgb` for a layer's data).
    run : ``"analyze"`` (every RBC, WBC and platelet, each WBC typed: :func:`hemaseg.analyze`) or a
        bundled model for :func:`hemaseg.segment`: ``"wbc"``, ``"nuclei"``, ``"smear10"``, ``"cells"``.
    cell_diameter : px; the red-cell diameter for ``analyze``, ``smear10`` and ``cells``, the WBC's for
        ``wbc``, the nucleus' for ``nuclei``. None: estimated from the photo.
    device : torch device.
    min_confidence : ``analyze``: a WBC whose top type probability is under this stays untyped.
    scale, translate : the image layer's, given to every layer so they lie on the photo.

    Returns
    -------
    layers : four ``(data, kwargs, layer_type)`` tuples, named ``hemaseg <run> ...``: ``instances``
        (labels 1..N; features type, category, score per label), ``classes`` (labels: the task's class
        indices; for ``analyze`` the category, 1 rbc, 2 wbc, 3 platelet), ``outlines`` (one polygon per
        cell) and ``cells`` (one point per cell at its centre, coloured by type: the WBC type for
        ``analyze``, the class otherwise).
    summary : counts as one line, e.g. ``analyze: 34 rbc, 1 wbc, 0 platelet; neutrophil 1``.
    """
    if run not in RUNS:
        raise HemasegUsageError("run", f"{run!r} is none of {', '.join(RUNS)}")
    keep_triton_out()
    common = {k: v for k, v in (("scale", scale), ("translate", translate)) if v is not None}
    prefix = f"hemaseg {run}"
    if run == "analyze":
        a = analyze(image, cell_diameter=cell_diameter, device=device, min_confidence=min_confidence)
        records = a.entry["masks"]
        ids = list(range(1, len(records) + 1))  # mask k is instances == k + 1
        lut = np.zeros(len(records) + 1, np.uint8)
        lut[1:] = [CATEGORIES.index(r["category"]) + 1 for r in records]
        types = [r["class_name"] for r in records]
        colours = [TYPE_COLOURS.get(t, FALLBACK) for t in types]
        class_colours = {k + 1: CATEGORY_COLOURS[c] for k, c in enumerate(CATEGORIES)}
        layers = _layers(prefix, a.instances, lut[a.instances], class_colours, records, ids, types, colours, common)
        typed = ", ".join(f"{t} {a.counts[t]}" for t in a.types if a.counts.get(t))
        summary = f"analyze: {', '.join(f'{a.counts[c]} {c}' for c in CATEGORIES)}" + (f"; {typed}" if typed else "")
        if a.unsure:
            summary += f"; {len(a.unsure)} WBC untyped (unsure)"
        return layers, summary
    seg = segment(image, model=run, cell_diameter=cell_diameter, device=device)
    task = get_task(run)
    records = seg.objects
    ids = [int(r["id"]) for r in records]
    types = [r["class_name"] for r in records]
    index = {name: k for k, name in enumerate(task.classes)}
    # A class of the task's map in its colour; an object named otherwise (the wbc task's "wbc") in its category's.
    named = {**TYPE_COLOURS, **CATEGORY_COLOURS}
    colours = [task.colors.get(index[t], FALLBACK) if t in index else named.get(t, FALLBACK) for t in types]
    layers = _layers(prefix, seg.instances, seg.classes, dict(task.colors), records, ids, types, colours, common)
    counts = Counter(types)
    summary = f"{run}: {len(records)} objects" + (f" ({', '.join(f'{t} {n}' for t, n in counts.most_common())})"
                                                   if counts else "")
    return layers, summary


def make_widget():
    """The dock widget: pick an image layer and what to run, press Run; the four layers of
    :func:`cell_layers` are added (or replaced, on a second run) and the counts shown below.

    A :class:`magicgui.widgets.Container` of the form (``run_hemaseg``, a ``FunctionGui``) and the
    counts line (``summary``)."""
    import napari
    from magicgui import magicgui
    from magicgui.widgets import Container, Label

    def run_hemaseg(image: napari.layers.Image, run: str = "analyze", cell_diameter: float = 0.0,
                    min_confidence: float = MIN_CONFIDENCE) -> list[napari.types.LayerDataTuple]:
        layers, summary = cell_layers(as_rgb(image.data, image.name), run, cell_diameter or None,
                                      min_confidence=min_confidence, scale=tuple(image.scale[-2:]),
                                      translate=tuple(image.translate[-2:]))
        summary_label.value = summary
        return layers

    gui = magicgui(run_hemaseg, call_button="Run",
                   run={"choices": RUNS, "label": "run",
                        "tooltip": "analyze: every cell, WBCs typed; otherwise one model's segmentation"},
                   cell_diameter={"min": 0.0, "max": 2000.0, "step": 1.0, "label": "cell diameter (px)",
                                  "tooltip": "0: estimated from the photo"},
                   min_confidence={"min": 0.0, "max": 1.0, "step": 0.05, "label": "min WBC type confidence"})
    summary_label = Label(name="summary", value="")
    return Container(name="hemaseg", widgets=[gui, summary_label], labels=False)


def sample_data() -> list[tuple]:
    """napari sample data: the bundled BCCD smear photo (BloodImage_00000.jpg, 640x480)."""
    return [(read_image(SAMPLE_PHOTO), {"name": SAMPLE_PHOTO.stem, "rgb": True}, "image")]
