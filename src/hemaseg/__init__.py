"""hemaseg: blood-smear segmentation, counting and WBC typing on a laptop CPU.

Public API (arrays in, arrays out)::

    import hemaseg
    image = hemaseg.read_image("smear.jpg")          # (H, W, 3) uint8
    seg = hemaseg.segment(image, model="wbc")        # Segmentation: classes, instances, objects
    nuclei = hemaseg.segment(image, model="nuclei")  # nuclei instances
    smear = hemaseg.segment(image, model="smear10")  # 10-class map (seed 002 classes)
    probs = hemaseg.classify(crop)                   # {"neutrophil": 0.93, ...} for a single-WBC crop
    report = hemaseg.analyze(image)                  # every RBC/WBC/platelet, WBC types, counts
    model, card = hemaseg.load_model("wbc")
"""
from __future__ import annotations

__version__ = "0.1.0"

from hemaseg.errors import HemasegError, HemasegInputError  # noqa: E402
from hemaseg.infer.pipeline import analyze  # noqa: E402
from hemaseg.infer.segment import Segmentation, estimate_diameter, segment  # noqa: E402
from hemaseg.io.images import read_image  # noqa: E402
from hemaseg.models.registry import create_model, list_models, load_model  # noqa: E402
from hemaseg.wbctype import classify  # noqa: E402

__all__ = ["__version__", "HemasegError", "HemasegInputError", "Segmentation", "analyze", "classify", "create_model",
           "estimate_diameter",
           "list_models", "load_model", "read_image", "segment"]
