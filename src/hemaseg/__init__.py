"""hemaseg: blood-smear segmentation, counting and WBC typing on a laptop CPU.

Public API (arrays in, arrays out)::

    import hemaseg
    image = hemaseg.read_image("smear.jpg")          # (H, W, 3) uint8
    seg = hemaseg.segment(image, model="wbc")        # Segmentation: classes, instances, objects
    nuclei = hemaseg.segment(image, model="nuclei")  # nuclei instances
    smear = hemaseg.segment(image, model="smear10")  # 10-class map (seed 002 classes)
    probs = hemaseg.classify(crop)                   # {"neutrophil": 0.93, ...} for a single-WBC crop
    report = hemaseg.analyze(image)                  # every RBC/WBC/platelet, WBC types, counts
    model, card = hemaseg.load_model("wbc")           # hemaseg.list_models(bundled=True): the shipped names
    task = hemaseg.get_task("wbc")                   # a task's classes, parameters, hooks

The layout (docs/ARCHITECTURE.md): ``core`` -> ``io``/``data``/``classical`` -> ``models`` ->
``engine`` -> ``tasks`` (one room per task) -> ``pipelines`` -> ``cli``.
"""
from __future__ import annotations

from hemaseg.core.result import Segmentation
from hemaseg.errors import HemasegError, HemasegInputError, HemasegUsageError
from hemaseg.io.images import read_image
from hemaseg.models.registry import create_model, list_models, load_model
from hemaseg.pipelines.analyze import analyze
from hemaseg.pipelines.segment import segment
from hemaseg.tasks import get_task, list_tasks
from hemaseg.tasks.wbc import estimate_diameter
from hemaseg.tasks.wbc_type.crops import classify
from hemaseg.version import __version__

__all__ = ["__version__", "HemasegError", "HemasegInputError", "HemasegUsageError", "Segmentation", "analyze", "classify",
           "create_model", "estimate_diameter", "get_task", "list_models", "list_tasks", "load_model", "read_image", "segment"]
