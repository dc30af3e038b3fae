"""Explanations of the WBC type classifier: Grad-CAM heat maps, the Grad-CAM-derived cell mask
(seed 003 §3.3) and t-SNE maps of a folder's features (seed 003 Fig. 2.4)."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np

from hemaseg.io.writers import atomic_path
from hemaseg.tasks.wbc_type.crops import to_tensor

if TYPE_CHECKING:
    import torch

# torch is imported inside the functions that need it: importing hemaseg does not import it.


def grad_cam(module: torch.nn.Module, card: dict, crop: np.ndarray, class_index: int | None = None,
             extras: np.ndarray | None = None, parts: np.ndarray | None = None) -> tuple[np.ndarray, int]:
    """Grad-CAM of a classifier on an (H, W, 3) uint8 crop: ((H, W) float32 map in [0, 1], class explained).

    The map is the ReLU of the last feature map weighted by the spatially averaged
    gradient of the class score (Selvaraju et al. 2017), resized to the input's size.
    ``class_index`` defaults to the predicted class; ``extras`` is the crop's ruler for models that
    take one (:attr:`~hemaseg.tasks.wbc_type.crops.CellCrop.extras`), ``parts`` its cell parts for models
    that see them (:attr:`~hemaseg.tasks.wbc_type.crops.CellCrop.parts`, resized with the crop).
    """
    import torch

    size = int(card.get("input_size", 96))
    h, w = crop.shape[:2]
    if parts is not None:
        parts = [cv2.resize(parts.astype(np.uint8), (size, size), interpolation=cv2.INTER_NEAREST)]
    x = to_tensor([cv2.resize(np.ascontiguousarray(crop[..., :3]), (size, size), interpolation=cv2.INTER_AREA)], card,
                  parts)
    e = torch.from_numpy(np.asarray(extras, np.float32))[None] if extras is not None else None
    module.eval()
    if hasattr(module, "members"):
        # An ensemble: the map of each member that answers for the ensemble's class (every member within
        # its shared classes, the deciding one alone outside them), each scaled to [0, 1], averaged.
        if class_index is None:
            with torch.no_grad():
                class_index = int(module(x, e).argmax(1))
        pairs = list(zip(module.members, module.inputs(x)))
        if not bool(module.shared[class_index]):
            pairs = [pairs[module.decides]]
        maps = [cv2.resize(_cam(m, xi, None, class_index)[0], (w, h), interpolation=cv2.INTER_LINEAR) for m, xi in pairs]
        cam, k = np.mean([c / c.max() if c.max() > 0 else c for c in maps], 0), int(class_index)
    else:
        cam, k = _cam(module, x, e, class_index)
        cam = cv2.resize(cam, (w, h), interpolation=cv2.INTER_LINEAR)
    top = float(cam.max())
    return (cam / top if top > 0 else cam).astype(np.float32), k


def _cam(module: torch.nn.Module, x: torch.Tensor, e: torch.Tensor | None, class_index: int | None
         ) -> tuple[np.ndarray, int]:
    """Grad-CAM of one classifier on its input ``x`` (1, C, S, S): ((s, s) map at its last feature map's size, class)."""
    import torch

    with torch.enable_grad():
        fmap = module.feature_map(x)
        fmap.retain_grad()
        logits = module.head(module.with_extras(module.pooled(fmap), e))
        k = int(logits.argmax(1)) if class_index is None else int(class_index)
        module.zero_grad(set_to_none=True)
        logits[0, k].backward()
    weights = fmap.grad.mean((2, 3), keepdim=True)
    return torch.relu((weights * fmap).sum(1))[0].detach().numpy(), k


def gradcam_mask(cam: np.ndarray, threshold: float | None = None) -> np.ndarray:
    """Seed 003 §3.3: the cell mask as the thresholded Grad-CAM map (Otsu by default), its largest
    component with holes filled: (H, W) bool.

    >>> cam = np.zeros((20, 20), np.float32); cam[5:15, 5:15] = 1.0; cam[0, 0] = 0.9
    >>> int(gradcam_mask(cam).sum())
    100
    """
    from scipy import ndimage as ndi

    if threshold is None:
        q = (np.clip(cam, 0, 1) * 255).astype(np.uint8)
        t, _ = cv2.threshold(q, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
        threshold = t / 255.0
    m = cam > threshold
    lab, n = ndi.label(m)
    if n == 0:
        return m
    m = lab == (np.argmax(np.bincount(lab.ravel())[1:]) + 1)
    return ndi.binary_fill_holes(m)


def cam_overlay(image: np.ndarray, cam: np.ndarray, mask: np.ndarray | None = None, alpha: float = 0.45) -> np.ndarray:
    """Heat map (jet) blended on the image, the Grad-CAM mask outlined in white: (H, W, 3) uint8."""
    heat = cv2.applyColorMap((np.clip(cam, 0, 1) * 255).astype(np.uint8), cv2.COLORMAP_JET)[..., ::-1]
    out = ((1 - alpha) * image[..., :3].astype(np.float32) + alpha * heat).astype(np.uint8)
    if mask is not None and mask.any():
        contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(out, contours, -1, (255, 255, 255), 1)
    return out


def features(module: torch.nn.Module, card: dict, crops: list[np.ndarray], batch_size: int = 64,
             parts: list[np.ndarray] | None = None) -> np.ndarray:
    """Pooled backbone features (N, C) of cell-normalised crops (``parts``: their cell parts, for models
    that see them)."""
    import torch

    with torch.inference_mode():
        module.eval()
        out = [module.features(to_tensor(crops[i:i + batch_size], card,
                                         parts[i:i + batch_size] if parts is not None else None)).numpy()
               for i in range(0, len(crops), batch_size)]
        return np.concatenate(out) if out else np.zeros((0, 1), np.float32)


def tsne_plot(feats: np.ndarray, labels: list[str], path: str | Path, title: str = "", seed: int = 0) -> Path:
    """2-D t-SNE of features (PCA to 50 dimensions first, as seed 003), points coloured by label, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    n = len(feats)
    x = PCA(n_components=min(50, n, feats.shape[1]), random_state=seed).fit_transform(feats) if n > 3 else feats
    perplexity = float(min(30, max(2, (n - 1) / 3)))
    emb = TSNE(n_components=2, perplexity=perplexity, random_state=seed, init="pca").fit_transform(x)
    fig, ax = plt.subplots(figsize=(7.5, 5))
    for name in sorted(set(labels)):
        sel = np.array([lab == name for lab in labels])
        ax.scatter(emb[sel, 0], emb[sel, 1], s=12, label=f"{name} ({sel.sum()})")
    # beside the map, never over a point (inside it, "best" still hid one)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    ax.set_title(title or f"t-SNE of {n} crops", fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return path
