"""Task definitions: classes, label values on disk, colours, default model."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Task:
    """What a task predicts and how its labels look on disk."""

    name: str
    classes: tuple[str, ...]
    label_values: tuple[int, ...]  # value written to the label PNG for each class index
    colors: dict[int, tuple[int, int, int]] = field(default_factory=dict)
    default_model: str = ""
    description: str = ""


TASKS: dict[str, Task] = {}


def register_task(task: Task) -> Task:
    """Add a task to the registry."""
    TASKS[task.name] = task
    return task


def get_task(name: str) -> Task:
    """Look a task up by name; KeyError lists the known ones."""
    if name not in TASKS:
        raise KeyError(f"unknown task {name!r}; known: {', '.join(sorted(TASKS))}")
    return TASKS[name]


WBC = register_task(Task(
    name="wbc",
    classes=("background", "cytoplasm", "nucleus"),
    label_values=(0, 128, 255),
    colors={1: (0, 200, 255), 2: (255, 0, 200)},
    default_model="wbc",
    description="WBC boundary and nucleus (wbc-seg convention 0/128/255)",
))

NUCLEI = register_task(Task(
    name="nuclei",
    classes=("background", "nucleus", "boundary"),
    label_values=(0, 1, 1),  # written as instance labels 1..N; the classes are the network's view
    colors={1: (255, 220, 0)},
    default_model="nuclei",
    description="nuclei instances (DSB 2018): uint16 labels 0 background, 1..N",
))

WBC_TYPE = register_task(Task(
    name="wbc-type",
    # Order of seed 004's CSV columns (NEUTRO, EOSINO, MONOC, LYMPHO), then basophil.
    classes=("neutrophil", "eosinophil", "monocyte", "lymphocyte", "basophil"),
    label_values=(0, 1, 2, 3, 4),
    default_model="wbc-type",
    description="WBC type of a single-cell crop",
))

# Mononuclear / polynuclear grouping of the types (seed 004's 2-class model).
MONONUCLEAR = ("monocyte", "lymphocyte")
POLYNUCLEAR = ("neutrophil", "eosinophil", "basophil")

# Seed 002's classes and palette (DESIGN.md); index = value in the class-index PNG.
SMEAR10 = register_task(Task(
    name="smear10",
    classes=("background", "eosinophil", "basophil", "neutrophil", "lymphocyte", "monocyte", "thrombocyte",
             "platelet clump", "infected rbc", "healthy rbc"),
    label_values=tuple(range(10)),
    colors={0: (0, 0, 0), 1: (0, 255, 255), 2: (0, 128, 128), 3: (251, 190, 190), 4: (128, 128, 0), 5: (0, 0, 128),
            6: (255, 255, 0), 7: (255, 0, 255), 8: (255, 0, 0), 9: (0, 255, 0)},
    default_model="smear10",
    description="10-class smear map (seed 002): 5 WBC types, thrombocyte, platelet clump, infected/healthy RBC",
))
# Group of each smear10 class: what a lab counts.
SMEAR10_GROUPS = {0: "background", 1: "wbc", 2: "wbc", 3: "wbc", 4: "wbc", 5: "wbc", 6: "platelet", 7: "platelet",
                  8: "rbc", 9: "rbc"}

# Whole-smear cells (seed 003 chapter 5): every RBC, WBC and platelet as an instance. The network
# predicts each class's cell interior plus a shared cell-edge class that keeps touching cells apart.
CELLS = register_task(Task(
    name="cells",
    classes=("background", "rbc", "wbc", "platelet", "edge", "centre"),
    label_values=(0, 1, 2, 3, 0, 0),
    colors={1: (220, 40, 40), 2: (40, 90, 255), 3: (250, 200, 0)},
    default_model="cells",
    description="RBC, WBC and platelet instances of whole smear photos (BCCD pseudo-masks)",
))
CELL_CATEGORIES = ("rbc", "wbc", "platelet")  # class index k + 1 in the cells task
