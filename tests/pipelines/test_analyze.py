"""analyze with a typer trained on PBC: further types counted, a "WBC" typed platelet counted as a platelet."""
from __future__ import annotations

import numpy as np

import hemaseg.pipelines.analyze as analyze_mod
from hemaseg.core.result import Segmentation
from hemaseg.pipelines.report import counts_csv

CLASSES = ["neutrophil", "eosinophil", "monocyte", "lymphocyte", "basophil", "ig", "erythroblast", "platelet"]


def _box(x1, y1, x2, y2):
    return {"x1": x1, "x2": x2, "y1": y1, "y2": y2}


def test_pbc_typer_types_are_counted_and_platelets_recategorised(monkeypatch):
    instances = np.zeros((60, 90), np.int32)
    objects = []
    for k, x in enumerate((5, 35, 65), start=1):
        instances[20:40, x:x + 20] = k
        objects.append({"id": k, "class_name": "wbc", "category": "wbc", "score": 0.9,
                        "bounding_box": _box(x, 20, x + 20, 40), "vertices": [[x, 20], [x + 20, 20], [x + 20, 40]]})
    seg = Segmentation(np.zeros((60, 90), np.uint8), instances, np.zeros((0, 60, 90), np.float32), 20.0, 1.0, objects)

    class Cells:
        def predict(self, *args, **kwargs):
            return seg

    def fake_type(image, records, model, device):
        probs = np.zeros((len(records), 8), np.float32)
        for i, name in enumerate(("neutrophil", "platelet", "ig")):
            probs[i, CLASSES.index(name)] = 1.0
        return probs, [np.zeros((8, 8, 3), np.uint8)] * len(records), CLASSES

    monkeypatch.setattr(analyze_mod, "get_task", lambda name: Cells())
    monkeypatch.setattr(analyze_mod, "get_model", lambda model, device="cpu": (None, {"classes": CLASSES}))
    monkeypatch.setattr(analyze_mod, "type_wbcs", fake_type)
    a = analyze_mod.analyze(np.full((60, 90, 3), 200, np.uint8), "x.png")
    assert a.counts["wbc"] == 2 and a.counts["platelet"] == 1  # the "WBC" typed platelet is a platelet
    assert a.counts["neutrophil"] == 1 and a.counts["ig"] == 1 and a.counts["erythroblast"] == 0
    assert a.differential["ig"] == 50.0 and "erythroblast" not in a.differential
    assert len(a.wbc_crops) == 2 and [m["category"] for m in a.entry["masks"]] == ["wbc", "platelet", "wbc"]
    header, row = counts_csv([a]).splitlines()
    assert header.endswith("ig,erythroblast,ig_pct") and row.endswith("1,0,50.0")
