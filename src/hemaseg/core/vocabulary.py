"""The words every task and file format shares: cell categories and WBC type names, defined once.

Each task keeps its own class *order* (fixed by its weights or its file contract) but spells
the names as here.
"""
from __future__ import annotations

CATEGORIES = ("rbc", "wbc", "platelet")  # what a lab counts; class index k + 1 in the cells task
# The five WBC types in the order of counts.csv and the report (DESIGN.md).
WBC_TYPES = ("neutrophil", "lymphocyte", "monocyte", "eosinophil", "basophil")
# Further cell types a typer trained on PBC names (counted after the five; ``ig`` counts in the
# differential as a leukocyte, erythroblasts and platelets are reported beside it).
EXTRA_TYPES = ("ig", "erythroblast", "platelet")
NOT_IN_DIFFERENTIAL = ("erythroblast", "platelet")
UNTYPED = "unknown"  # the crop folder of a WBC of no type yet (`hemaseg crop`); `train wbc-type` leaves it out
# The labels hemaseg's CVAT and COCO files declare, in this order (COCO category ids 1, 2, ...): a WBC type no
# object has yet stays choosable when correcting one in CVAT.
EXPORT_LABELS = ("rbc", "platelet", *WBC_TYPES)
# Seed 004's 2-class grouping of the types.
MONONUCLEAR = ("monocyte", "lymphocyte")
POLYNUCLEAR = ("neutrophil", "eosinophil", "basophil")
# ig and erythroblast are among the WBCs analyze finds and counts (its wbc column, its WBC outlines): a CVAT or COCO
# round trip of them stays a WBC, trained and scored as one (they were groups of their own).
CATEGORY_OF = {**{t: "wbc" for t in WBC_TYPES}, "ig": "wbc", "erythroblast": "wbc", "wbc": "wbc", "rbc": "rbc",
               "healthy rbc": "rbc",
               "infected rbc": "rbc", "platelet": "platelet", "platelets": "platelet", "thrombocyte": "platelet",
               "platelet clump": "platelet"}


def category_of(class_name: str) -> str:
    """Group (``rbc``, ``wbc``, ``platelet``) of a class name; unknown names are their own group.

    Other spellings are read as :func:`canonical_name` reads them (a COCO or CVAT file's "White Blood
    Cell" or "Neutrophils" is a WBC, not a group of its own that scoring then passes over).

    >>> category_of("Neutrophil"), category_of("platelet clump"), category_of("ghost")
    ('wbc', 'platelet', 'ghost')
    >>> category_of("White Blood Cell (WBC)"), category_of("Neutrophils"), category_of("Platelets")
    ('wbc', 'wbc', 'platelet')
    >>> category_of("ig"), category_of("erythroblast")  # as analyze counts them: among the WBCs
    ('wbc', 'wbc')
    """
    n = class_name.strip().lower()
    if n not in CATEGORY_OF:
        n = canonical_name(class_name)
    return CATEGORY_OF.get(n, n)


# Other spellings of the names above, as datasets write them (TXL-PBC: "White Blood Cell (WBC)",
# "Platelets"; BCCD: "WBC", "Platelets"; PBC folders: "neutrophils").
ALIASES = {"platelets": "platelet", "plt": "platelet", "thrombocyte": "platelet", "thrombocytes": "platelet",
           "white blood cell": "wbc", "white blood cells": "wbc", "white cell": "wbc", "leukocyte": "wbc",
           "leukocytes": "wbc", "leucocyte": "wbc", "leucocytes": "wbc", "wbcs": "wbc",
           "red blood cell": "rbc", "red blood cells": "rbc", "red cell": "rbc", "erythrocyte": "rbc",
           "erythrocytes": "rbc", "rbcs": "rbc",
           **{f"{t}s": t for t in (*WBC_TYPES, "erythroblast")}}
KNOWN_NAMES = frozenset((*CATEGORIES, *WBC_TYPES, *EXTRA_TYPES))


def canonical_name(name: str) -> str:
    """The project's spelling of a class name read from a dataset (lower case; an unknown name is
    kept, lower-cased). A name with a parenthesised abbreviation is tried by both parts.

    >>> canonical_name("White Blood Cell (WBC)"), canonical_name("Platelets"), canonical_name(" RBC ")
    ('wbc', 'platelet', 'rbc')
    >>> canonical_name("Neutrophils"), canonical_name("Ghost cell")
    ('neutrophil', 'ghost cell')
    """
    n = " ".join(name.strip().lower().replace("_", " ").split())
    candidates = [n]
    if "(" in n and n.endswith(")"):
        head, _, inner = n[:-1].partition("(")
        candidates += [inner.strip(), head.strip()]
    for c in candidates:
        c = ALIASES.get(c, c)
        if c in KNOWN_NAMES:
            return c
    return n
