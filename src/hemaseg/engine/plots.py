"""Plots every task uses: training curves, confusion matrices (matplotlib, written atomically)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from hemaseg.io.writers import atomic_path


def plot_curves(history: list[dict], path: Path) -> None:
    """Training loss and validation metrics against epoch, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ep = [h["epoch"] for h in history]
    fig, ax = plt.subplots(1, 2, figsize=(10, 4))
    for k in ("train_loss", "domain_loss"):
        if k in history[0]:
            ax[0].plot(ep, [h[k] for h in history], label=k.replace("_", " "))
    ax[0].set_xlabel("epoch"); ax[0].set_ylabel("loss"); ax[0].legend()
    for k in ("dice_cell", "dice_nucleus", "dsb", "ap50", "ap75", "accuracy", "macro_f1", "accuracy_4", "accuracy_2",
              "pixel_accuracy", "mean_iou", "map50", "ap50_rbc", "ap50_wbc", "ap50_platelet"):
        if k in history[0]:
            ax[1].plot(ep, [h[k] for h in history], label=f"val {k}")
    ax[1].set_xlabel("epoch"); ax[1].set_ylabel("score"); ax[1].grid(alpha=0.3)
    if ax[1].lines:  # (no score drawn: no legend, which matplotlib warned of)
        ax[1].legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def plot_confusion(cm: np.ndarray, classes: list[str], path: Path, title: str = "", percent: bool = False) -> None:
    """Confusion matrix (rows true, columns predicted) as a PNG with counts (or row percentages)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cm = np.asarray(cm)
    k = cm.shape[0]
    fig, ax = plt.subplots(figsize=(max(5.2, 0.75 * k + 1.5), max(4.6, 0.65 * k + 1.2)))
    norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    for i in range(k):
        for j in range(k):
            text = f"{100 * norm[i, j]:.0f}" if percent else str(cm[i, j])
            ax.text(j, i, text, ha="center", va="center", fontsize=8 if percent else 10,
                    color="white" if norm[i, j] > 0.5 else "black")
    ax.set_xticks(range(len(classes)), classes, rotation=40, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
