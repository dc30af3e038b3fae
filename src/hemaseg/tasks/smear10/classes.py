"""Seed 002's ten classes, palette and groups (DESIGN.md file contract), defined once for the room."""
from __future__ import annotations

# index = value in the class-index PNG
CLASSES = ("background", "eosinophil", "basophil", "neutrophil", "lymphocyte", "monocyte", "thrombocyte",
           "platelet clump", "infected rbc", "healthy rbc")
PALETTE = {0: (0, 0, 0), 1: (0, 255, 255), 2: (0, 128, 128), 3: (251, 190, 190), 4: (128, 128, 0), 5: (0, 0, 128),
           6: (255, 255, 0), 7: (255, 0, 255), 8: (255, 0, 0), 9: (0, 255, 0)}
# The classes of each counted group, and the group of each class (what a lab counts).
GROUPS = {"wbc": (1, 2, 3, 4, 5), "platelet": (6, 7), "rbc": (8, 9)}
GROUP_OF = {0: "background", **{k: g for g, ks in GROUPS.items() for k in ks}}
