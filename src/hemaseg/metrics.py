"""Metrics: Dice and IoU on binary masks, instance and detection scores (NumPy), and the exact
binomial confidence interval of a proportion (a differential count)."""
from __future__ import annotations

import numpy as np


def dice(pred: np.ndarray, target: np.ndarray) -> float:
    """Dice coefficient 2|A∩B|/(|A|+|B|) of two boolean masks; 1.0 when both are empty.

    >>> a = np.zeros((4, 4), bool); a[:2] = True
    >>> dice(a, a), dice(a, ~a)
    (1.0, 0.0)
    """
    pred = pred.astype(bool)
    target = target.astype(bool)
    denom = pred.sum() + target.sum()
    return 1.0 if denom == 0 else float(2.0 * np.logical_and(pred, target).sum() / denom)


def iou(pred: np.ndarray, target: np.ndarray) -> float:
    """Intersection over union of two boolean masks; 1.0 when both are empty."""
    pred = pred.astype(bool)
    target = target.astype(bool)
    union = np.logical_or(pred, target).sum()
    return 1.0 if union == 0 else float(np.logical_and(pred, target).sum() / union)


def wbc_scores(pred: np.ndarray, target: np.ndarray) -> dict[str, float]:
    """Dice and IoU of the whole cell (class > 0) and the nucleus (class 2) of two (H, W) class maps."""
    cell_p, cell_t = pred > 0, target > 0
    nuc_p, nuc_t = pred == 2, target == 2
    return {
        "dice_cell": dice(cell_p, cell_t),
        "iou_cell": iou(cell_p, cell_t),
        "dice_nucleus": dice(nuc_p, nuc_t),
        "iou_nucleus": iou(nuc_p, nuc_t),
    }


DSB_THRESHOLDS = tuple(np.round(np.arange(0.5, 1.0, 0.05), 2))


def instance_iou(pred: np.ndarray, target: np.ndarray) -> np.ndarray:
    """IoU of every target instance with every predicted instance: (n_target, n_pred) float64.

    Both inputs are (H, W) label images (0 background, instance ids need not be consecutive).
    """
    _, t = np.unique(target, return_inverse=True)
    _, p = np.unique(pred, return_inverse=True)
    t, p = t.reshape(target.shape), p.reshape(pred.shape)
    # Relabelled consecutively; index 0 is background only if the image has background.
    t_has_bg, p_has_bg = int(target.min() == 0), int(pred.min() == 0)
    nt, npr = int(t.max()) + 1, int(p.max()) + 1
    inter = np.bincount((t * npr + p).ravel(), minlength=nt * npr).reshape(nt, npr).astype(np.float64)
    area_t, area_p = inter.sum(1), inter.sum(0)
    union = area_t[:, None] + area_p[None, :] - inter
    iou_ = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
    return iou_[t_has_bg:, p_has_bg:]


def matching_counts(iou_matrix: np.ndarray, threshold: float) -> tuple[int, int, int]:
    """(TP, FP, FN) at an IoU threshold: a pair matches when IoU > threshold.

    Above 0.5 each object has at most one partner, so no assignment problem arises.
    """
    n_t, n_p = iou_matrix.shape
    tp = int((iou_matrix > threshold).any(1).sum()) if n_t and n_p else 0
    return tp, n_p - tp, n_t - tp


def dsb_scores(pred: np.ndarray, target: np.ndarray, thresholds=DSB_THRESHOLDS) -> dict[str, float]:
    """The 2018 Data Science Bowl score of one image and its AP at IoU 0.5 and 0.75.

    For each threshold t, precision(t) = TP/(TP+FP+FN); ``dsb`` is their mean over
    t = 0.50, 0.55, ..., 0.95. An image with no nuclei and no predictions scores 1.

    >>> t = np.zeros((8, 8), int); t[:4, :4] = 1; t[4:, 4:] = 2
    >>> dsb_scores(t, t)["dsb"]
    1.0
    >>> one_missing = np.where(t == 2, 0, t)
    >>> dsb_scores(one_missing, t)["ap50"]
    0.5
    """
    pred, target = np.asarray(pred), np.asarray(target)
    for name, a in (("pred", pred), ("target", target)):
        if a.ndim != 2 or a.dtype.kind not in "biu":
            raise ValueError(f"dsb_scores: {name} must be an (H, W) integer label image, got {a.dtype} {a.shape}")
        if a.size and a.min() < 0:
            raise ValueError(f"dsb_scores: {name} holds negative labels (0 is background, 1..N the nuclei)")
    if pred.shape != target.shape:
        raise ValueError(f"dsb_scores: pred {pred.shape} and target {target.shape} differ in shape")
    m = instance_iou(pred, target)
    n_t, n_p = m.shape
    out = {"n_true": n_t, "n_pred": n_p}
    scores = {}
    for th in thresholds:
        tp, fp, fn = matching_counts(m, th)
        denom = tp + fp + fn
        scores[float(th)] = 1.0 if denom == 0 else tp / denom
    out["dsb"] = float(np.mean(list(scores.values())))
    for th, key in ((0.5, "ap50"), (0.75, "ap75")):
        tp, fp, fn = matching_counts(m, th)
        out[key] = 1.0 if tp + fp + fn == 0 else tp / (tp + fp + fn)
    return out


def confusion_matrix(y_true, y_pred, n_classes: int) -> np.ndarray:
    """(K, K) int64 counts: rows true class, columns predicted class."""
    t, p = np.asarray(y_true, int), np.asarray(y_pred, int)
    return np.bincount(t * n_classes + p, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def classification_report(y_true, y_pred, classes: list[str]) -> dict:
    """Accuracy, macro-F1 over the classes present in ``y_true``, per-class precision/recall/F1, confusion.

    >>> r = classification_report([0, 0, 1, 1], [0, 1, 1, 1], ["a", "b"])
    >>> r["accuracy"], round(r["macro_f1"], 3), r["per_class"]["b"]["precision"]
    (0.75, 0.733, 0.667)
    """
    k = len(classes)
    cm = confusion_matrix(y_true, y_pred, k)
    tp = np.diag(cm).astype(float)
    support, predicted = cm.sum(1), cm.sum(0)
    prec = np.divide(tp, predicted, out=np.zeros(k), where=predicted > 0)
    rec = np.divide(tp, support, out=np.zeros(k), where=support > 0)
    f1 = np.divide(2 * prec * rec, prec + rec, out=np.zeros(k), where=(prec + rec) > 0)
    present = support > 0
    return {
        "n": int(cm.sum()),
        "accuracy": float(tp.sum() / max(cm.sum(), 1)),
        "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
        "per_class": {c: {"precision": round(float(prec[i]), 3), "recall": round(float(rec[i]), 3),
                          "f1": round(float(f1[i]), 3), "support": int(support[i])} for i, c in enumerate(classes)},
        "confusion": cm.tolist(),
    }


def semantic_scores(cm: np.ndarray, classes: list[str] | None = None) -> dict:
    """Pixel accuracy, per-class IoU and mean IoU from a (K, K) pixel confusion matrix
    (rows true, columns predicted; summed over a data set, as segmentation benchmarks do).

    Classes absent from both truth and prediction are left out of the mean.

    >>> cm = np.array([[8, 2], [0, 10]])   # 2 background pixels called class 1
    >>> s = semantic_scores(cm, ["bg", "fg"])
    >>> s["pixel_accuracy"], s["iou"]["bg"], round(s["iou"]["fg"], 3), round(s["mean_iou"], 3)
    (0.9, 0.8, 0.833, 0.817)
    """
    cm = np.asarray(cm, np.float64)
    k = cm.shape[0]
    names = list(classes) if classes is not None else [str(i) for i in range(k)]
    tp = np.diag(cm)
    union = cm.sum(0) + cm.sum(1) - tp
    iou = np.divide(tp, union, out=np.full(k, np.nan), where=union > 0)
    return {
        "pixel_accuracy": float(tp.sum() / max(cm.sum(), 1)),
        "mean_iou": float(np.nanmean(iou)) if np.isfinite(iou).any() else 0.0,
        "iou": {names[i]: (None if np.isnan(iou[i]) else float(iou[i])) for i in range(k)},
    }


def box_iou(a, b) -> np.ndarray:
    """(N, M) IoU of boxes (x1, y1, x2, y2)."""
    a, b = np.asarray(a, float).reshape(-1, 4), np.asarray(b, float).reshape(-1, 4)
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 2], b[None, :, 2])
    y2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = lambda r: (r[:, 2] - r[:, 0]) * (r[:, 3] - r[:, 1])  # noqa: E731
    union = area(a)[:, None] + area(b)[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def detection_ap(preds: list[tuple[str, float, tuple]], truths: dict[str, list[tuple]], iou: float = 0.5) -> float:
    """Pascal VOC average precision (all-point interpolation, VOC 2010+) of one class.

    ``preds``: (image id, score, box) detections; ``truths``: image id -> ground-truth boxes.
    A detection is a true positive when it overlaps a not yet matched truth box by IoU >= ``iou``
    (highest scores matched first).

    >>> truths = {"a": [(0, 0, 10, 10)], "b": [(0, 0, 10, 10)]}
    >>> detection_ap([("a", 0.9, (0, 0, 10, 10)), ("b", 0.8, (0, 0, 10, 9))], truths)
    1.0
    >>> detection_ap([("a", 0.9, (50, 50, 60, 60)), ("a", 0.8, (0, 0, 10, 10))], truths)
    0.25
    """
    n_true = sum(len(v) for v in truths.values())
    if n_true == 0:
        return float("nan")
    order = sorted(preds, key=lambda p: -p[1])
    used = {k: np.zeros(len(v), bool) for k, v in truths.items()}
    tp = np.zeros(len(order))
    for i, (img, _, box) in enumerate(order):
        gts = truths.get(img, [])
        if not gts:
            continue
        ious = box_iou([box], gts)[0]
        j = int(ious.argmax())
        if ious[j] >= iou and not used[img][j]:
            used[img][j] = True
            tp[i] = 1
    ctp = np.cumsum(tp)
    recall = ctp / n_true
    precision = ctp / np.arange(1, len(order) + 1)
    mrec = np.concatenate([[0.0], recall, [1.0]])
    mpre = np.concatenate([[0.0], precision, [0.0]])
    for i in range(len(mpre) - 2, -1, -1):
        mpre[i] = max(mpre[i], mpre[i + 1])
    idx = np.nonzero(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[idx + 1] - mrec[idx]) * mpre[idx + 1]))


def binomial_ci(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Exact (Clopper-Pearson) confidence interval of the proportion ``k / n``: (low, high) in [0, 1].

    This is the interval Rümke's table gives for a differential count: ``k`` cells of one type
    among ``n`` cells counted. It is the Beta-quantile form of the binomial test's inversion, so
    it never goes below 0 or above 1 and keeps at least ``confidence`` coverage for every true
    proportion (it is conservative). With no cell counted (``n == 0``) nothing is known: (0, 1).

    Parameters
    ----------
    k : int
        Cells of the type, ``0 <= k <= n``.
    n : int
        Cells counted.
    confidence : float
        Two-sided confidence level, in (0, 1).

    Returns
    -------
    tuple of float
        The lower and upper bound of the proportion.

    Examples
    --------
    50 neutrophils in a 100-cell differential: 50 %, 95 % interval 39.8 % to 60.2 % (Rümke: 40-60).

    >>> lo, hi = binomial_ci(50, 100)
    >>> round(100 * lo, 1), round(100 * hi, 1)
    (39.8, 60.2)

    No basophil among 100 cells still allows up to 3.6 % (the "rule of three" gives about 3 %):

    >>> lo, hi = binomial_ci(0, 100)
    >>> lo, round(100 * hi, 2)
    (0.0, 3.62)
    >>> binomial_ci(1, 1)[1], binomial_ci(0, 0)
    (1.0, (0.0, 1.0))
    """
    if not (isinstance(k, (int, np.integer)) and isinstance(n, (int, np.integer)) and 0 <= k <= n):
        raise ValueError(f"binomial_ci needs integers 0 <= k <= n, got k={k!r}, n={n!r}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence!r}")
    if n == 0:
        return 0.0, 1.0
    # scipy.stats takes ~0.3 s to import; only the report needs it, so not at module import.
    from scipy.stats import beta

    alpha = 1.0 - confidence
    lo = 0.0 if k == 0 else float(beta.ppf(alpha / 2, k, n - k + 1))
    hi = 1.0 if k == n else float(beta.ppf(1 - alpha / 2, k + 1, n - k))
    return lo, hi


def coco_box_map(preds: dict, truths: dict, sizes: dict, categories: tuple[str, ...]) -> float:
    """COCO mAP@[.5:.95] of boxes (pycocotools' COCOeval, bbox, up to 1000 detections an image: a field
    holds ~100 red cells). ``preds[c]``: (image id, score, (x1, y1, x2, y2)) of category ``c``;
    ``truths[c]``: image id -> boxes; ``sizes``: image id -> (h, w). A category with no truth box is left
    out, as COCO does.

    >>> t = {"rbc": {0: [(0, 0, 10, 10)]}}
    >>> round(coco_box_map({"rbc": [(0, 0.9, (0, 0, 10, 10))]}, t, {0: (20, 20)}, ("rbc",)), 6)
    1.0
    """
    import contextlib
    import io

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    images = [{"id": i, "width": w, "height": h} for i, (h, w) in sizes.items()]
    anns, dets = [], []
    for ci, c in enumerate(categories, 1):
        for i, boxes in truths[c].items():
            for x1, y1, x2, y2 in boxes:
                anns.append({"id": len(anns) + 1, "image_id": i, "category_id": ci, "bbox": [x1, y1, x2 - x1, y2 - y1],
                             "area": (x2 - x1) * (y2 - y1), "iscrowd": 0})
        for i, s, (x1, y1, x2, y2) in preds[c]:
            dets.append({"image_id": i, "category_id": ci, "bbox": [x1, y1, x2 - x1, y2 - y1], "score": s})
    if not dets:
        return 0.0
    gt = COCO()
    gt.dataset = {"images": images, "annotations": anns,
                  "categories": [{"id": i, "name": c} for i, c in enumerate(categories, 1)]}
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
        dt = gt.loadRes(dets)
        ev = COCOeval(gt, dt, "bbox")
        ev.params.maxDets = [1, 10, 1000]
        ev.evaluate()
        ev.accumulate()
    # precision[iou, recall, category, area range, max dets]: all areas, up to 1000 detections; a
    # category with no truth box is -1 and left out.
    prec = ev.eval["precision"][:, :, :, 0, -1]
    per_cat = [prec[:, :, k][prec[:, :, k] > -1].mean() for k in range(prec.shape[2]) if (prec[:, :, k] > -1).any()]
    return float(np.mean(per_cat)) if per_cat else float("nan")
