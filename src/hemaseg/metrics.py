"""Metrics: Dice and IoU on binary masks, instance and detection scores (NumPy), and the exact
binomial confidence interval of a proportion (a differential count)."""
from __future__ import annotations

import numpy as np

from hemaseg.core.labels import ANY_FOREGROUND


def dice(pred: np.ndarray, target: np.ndarray) -> float:
    """Dice coefficient of two binary masks, 1.0 when both are empty.

    The Dice coefficient is ``2 |A ∩ B| / (|A| + |B|)``, where A and B are the foreground
    (nonzero) pixels of the two masks.

    Parameters
    ----------
    pred : ndarray
        Predicted mask, any shape, any dtype: nonzero pixels are foreground. A NumPy array
        (it is cast with ``pred.astype(bool)``; a list is not accepted).
    target : ndarray
        Ground-truth mask of the same shape.

    Returns
    -------
    dice : float
        The Dice coefficient, in [0, 1]; 1.0 when neither mask has a foreground pixel.

    Examples
    --------
    >>> a = np.zeros((4, 4), bool); a[:2] = True
    >>> dice(a, a), dice(a, ~a)
    (1.0, 0.0)
    >>> b = np.zeros((4, 4), bool); b[:1] = True   # half of a: 2 * 4 / (8 + 4)
    >>> round(dice(a, b), 3)
    0.667
    >>> dice(np.zeros((2, 2)), np.zeros((2, 2)))
    1.0
    """
    pred = pred.astype(bool)
    target = target.astype(bool)
    denom = pred.sum() + target.sum()
    return 1.0 if denom == 0 else float(2.0 * np.logical_and(pred, target).sum() / denom)


def iou(pred: np.ndarray, target: np.ndarray) -> float:
    """Intersection over union (Jaccard index) of two binary masks, 1.0 when both are empty.

    Parameters
    ----------
    pred : ndarray
        Predicted mask, any shape, any dtype: nonzero pixels are foreground. A NumPy array
        (it is cast with ``pred.astype(bool)``; a list is not accepted).
    target : ndarray
        Ground-truth mask of the same shape.

    Returns
    -------
    iou : float
        ``|A ∩ B| / |A ∪ B|`` of the two foregrounds, in [0, 1]; 1.0 when neither mask has a
        foreground pixel.

    Examples
    --------
    >>> a = np.zeros((4, 4), bool); a[:2] = True
    >>> b = np.zeros((4, 4), bool); b[:1] = True   # 4 shared pixels out of 8
    >>> iou(a, b), iou(a, ~a), iou(a[:0], a[:0])
    (0.5, 0.0, 1.0)
    """
    pred = pred.astype(bool)
    target = target.astype(bool)
    union = np.logical_or(pred, target).sum()
    return 1.0 if union == 0 else float(np.logical_and(pred, target).sum() / union)


def wbc_scores(pred: np.ndarray, target: np.ndarray) -> dict[str, float]:
    """Dice and IoU of the whole cell and of the nucleus between two WBC class maps.

    The whole cell is every pixel of class > 0 (cytoplasm and nucleus), the nucleus every pixel of
    class 2; each pair of masks is scored by :func:`dice` and :func:`iou`.

    Parameters
    ----------
    pred : (H, W) ndarray of int
        Predicted class map: 0 background, 1 cytoplasm, 2 nucleus.
    target : (H, W) ndarray of int
        Ground-truth class map of the same shape and classes; cells of a binary mask may be 254
        (``ANY_FOREGROUND``: whole cell, parts unknown).

    Returns
    -------
    scores : dict of str to float
        ``"dice_cell"``, ``"iou_cell"``, ``"dice_nucleus"`` and ``"iou_nucleus"``, each in [0, 1]
        (1.0 for a region that is empty in both maps); the nucleus ones NaN when ``target`` holds
        ``ANY_FOREGROUND`` (no nucleus annotated to score against).

    Examples
    --------
    >>> t = np.zeros((4, 4), np.uint8); t[1:3, 1:3] = 1; t[1, 1] = 2
    >>> p = t.copy(); p[2, 2] = 2          # same cell, one cytoplasm pixel called nucleus
    >>> s = wbc_scores(p, t)
    >>> s["dice_cell"], round(s["dice_nucleus"], 3), s["iou_nucleus"]
    (1.0, 0.667, 0.5)
    """
    cell_p, cell_t = pred > 0, target > 0
    nuc_p, nuc_t = pred == 2, target == 2
    # a binary cell mask's cells (ANY_FOREGROUND: no part known) score the whole cell, not the nucleus: NaN, which
    # the means leave out (the nucleus scored 0 against a correct model)
    parts_known = not (target == ANY_FOREGROUND).any()
    return {
        "dice_cell": dice(cell_p, cell_t),
        "iou_cell": iou(cell_p, cell_t),
        "dice_nucleus": dice(nuc_p, nuc_t) if parts_known else float("nan"),
        "iou_nucleus": iou(nuc_p, nuc_t) if parts_known else float("nan"),
    }


DSB_THRESHOLDS = tuple(np.round(np.arange(0.5, 1.0, 0.05), 2))


def instance_iou(pred: np.ndarray, target: np.ndarray) -> np.ndarray:
    """IoU of every ground-truth instance with every predicted instance.

    Both inputs are label images: 0 is background and every other value one instance; ids need not
    be consecutive. Rows and columns follow the instances' ids in increasing order. Label 0 is treated
    as background only when it is the image's smallest value: a label image with negative values has
    0 counted as an instance (:func:`dsb_scores` rejects negative labels).

    Parameters
    ----------
    pred : (H, W) ndarray of int
        Predicted instance labels.
    target : (H, W) ndarray of int
        Ground-truth instance labels, same shape as ``pred``.

    Returns
    -------
    iou : (n_target, n_pred) ndarray of float64
        ``iou[i, j]`` is the IoU of the i-th target instance and the j-th predicted instance, in
        [0, 1]. An image holding only background contributes no row (or column). A zero-size image
        raises ValueError (NumPy's ``min`` of an empty array).

    Examples
    --------
    >>> t = np.zeros((4, 4), int); t[:2, :2] = 1; t[2:, 2:] = 7
    >>> p = np.zeros((4, 4), int); p[:2, :3] = 5   # covers target 1 (4 of its 6 pixels)
    >>> m = instance_iou(p, t)
    >>> m.shape, m.dtype.name, [round(float(v), 3) for v in m[:, 0]]
    ((2, 1), 'float64', [0.667, 0.0])
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
    """True positives, false positives and false negatives at one IoU threshold.

    A target and a prediction match when their IoU is strictly greater than ``threshold``. TP is the
    number of targets with at least one match, FP the number of predictions minus TP, FN the number of
    targets minus TP. This is exact for ``threshold >= 0.5`` and non-overlapping instances, where an
    object can have at most one partner, so no assignment problem arises; below 0.5 a prediction could
    match two targets (and be counted twice), so such a threshold is refused.

    Parameters
    ----------
    iou_matrix : (n_target, n_pred) ndarray of float
        IoU of every target (rows) with every prediction (columns), as :func:`instance_iou` gives.
    threshold : float
        IoU a pair must exceed to match, at least 0.5 (e.g. 0.5).

    Returns
    -------
    tp, fp, fn : tuple of int
        The counts. With no target or no prediction TP is 0: ``(0, n_pred, n_target)``.

    Raises
    ------
    ValueError
        When ``threshold`` is below 0.5 (or nan).

    Examples
    --------
    >>> m = np.array([[0.9, 0.0], [0.0, 0.6], [0.1, 0.0]])   # 3 targets, 2 predictions
    >>> matching_counts(m, 0.5), matching_counts(m, 0.75)
    ((2, 0, 1), (1, 1, 2))
    >>> matching_counts(np.zeros((0, 3)), 0.5)
    (0, 3, 0)
    """
    if not threshold >= 0.5:
        raise ValueError(f"matching_counts: IoU threshold {threshold} is below 0.5, where one prediction could "
                         "match two targets; give 0.5 or more")
    n_t, n_p = iou_matrix.shape
    tp = int((iou_matrix > threshold).any(1).sum()) if n_t and n_p else 0
    return tp, n_p - tp, n_t - tp


def dsb_scores(pred: np.ndarray, target: np.ndarray, thresholds=DSB_THRESHOLDS) -> dict[str, int | float]:
    """The 2018 Data Science Bowl score of one image, and its AP at IoU 0.5 and 0.75.

    For each threshold t, precision(t) = TP/(TP+FP+FN), with TP, FP and FN counted by
    :func:`matching_counts` on :func:`instance_iou` (a pair matches when IoU > t); ``dsb`` is their mean
    over ``thresholds`` (t = 0.50, 0.55, ..., 0.95 by default). An image with no nuclei and no
    predictions scores 1.

    Parameters
    ----------
    pred : (H, W) ndarray of int or bool
        Predicted instance labels: 0 background, positive ids the nuclei (need not be consecutive).
        Any integer or bool dtype; array-likes are converted with ``np.asarray``.
    target : (H, W) ndarray of int or bool
        Ground-truth instance labels, same shape and convention.
    thresholds : sequence of float, optional
        IoU thresholds ``dsb`` averages over, each at least 0.5 (:func:`matching_counts`); default
        :data:`DSB_THRESHOLDS` (0.5 to 0.95 in steps of 0.05). They do not change ``ap50`` and ``ap75``.
        An empty sequence gives a ``dsb`` of nan.

    Returns
    -------
    scores : dict
        ``"n_true"`` and ``"n_pred"`` (int): the number of target and predicted instances;
        ``"dsb"`` (float): the mean precision over ``thresholds``; ``"ap50"`` and ``"ap75"`` (float):
        the precision at IoU 0.5 and 0.75. Each score is in [0, 1].

    Raises
    ------
    ValueError
        When an input is not a 2-D integer (or bool) array, is empty (zero pixels: the score is not
        defined), holds negative labels, or the two shapes differ; also for a threshold below 0.5.

    Examples
    --------
    >>> t = np.zeros((8, 8), int); t[:4, :4] = 1; t[4:, 4:] = 2
    >>> dsb_scores(t, t)["dsb"]
    1.0
    >>> one_missing = np.where(t == 2, 0, t)
    >>> s = dsb_scores(one_missing, t)
    >>> s["n_true"], s["n_pred"], s["ap50"]
    (2, 1, 0.5)
    >>> dsb_scores(np.zeros((8, 8), int), np.zeros((8, 8), int))["dsb"]
    1.0
    """
    pred, target = np.asarray(pred), np.asarray(target)
    for name, a in (("pred", pred), ("target", target)):
        if a.ndim != 2 or a.dtype.kind not in "biu":
            raise ValueError(f"dsb_scores: {name} must be an (H, W) integer label image, got {a.dtype} {a.shape}")
        if a.size == 0:
            raise ValueError(f"dsb_scores: {name} is an empty image {a.shape}: no pixel to score")
        if a.min() < 0:
            raise ValueError(f"dsb_scores: {name} holds negative labels (0 is background, 1..N the nuclei)")
    if pred.shape != target.shape:
        raise ValueError(f"dsb_scores: pred {pred.shape} and target {target.shape} differ in shape")
    thresholds = tuple(thresholds)
    low = [th for th in thresholds if not th >= 0.5]
    if low:
        raise ValueError(f"dsb_scores: IoU threshold {low[0]} is below 0.5, where the DSB score is not defined "
                         "(one prediction could match two nuclei)")
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
    """Confusion matrix of class indices: rows are the true class, columns the predicted class.

    Parameters
    ----------
    y_true : array_like of int, shape (N,)
        True class indices, 0 to ``n_classes - 1`` (converted with ``np.asarray(y_true, int)``).
    y_pred : array_like of int, shape (N,)
        Predicted class indices, same length and range.
    n_classes : int
        Number of classes K.

    Returns
    -------
    cm : (K, K) ndarray of int64
        ``cm[i, j]`` counts the samples of true class i predicted as j; all zero for empty inputs.

    Raises
    ------
    ValueError
        When an index of ``y_true`` or ``y_pred`` lies outside 0 to ``n_classes - 1``.

    Examples
    --------
    >>> confusion_matrix([0, 0, 1, 2], [0, 1, 1, 2], 3).tolist()
    [[1, 1, 0], [0, 1, 0], [0, 0, 1]]
    >>> confusion_matrix([], [], 2).tolist()
    [[0, 0], [0, 0]]
    """
    t, p = np.asarray(y_true, int), np.asarray(y_pred, int)
    for name, a in (("y_true", t), ("y_pred", p)):
        bad = (a < 0) | (a >= n_classes)
        if bad.any():
            raise ValueError(f"confusion_matrix: {name} holds class index {int(a[bad][0])}, outside 0..{n_classes - 1} "
                             f"({n_classes} classes)")
    return np.bincount(t * n_classes + p, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def classification_report(y_true, y_pred, classes: list[str]) -> dict:
    """Accuracy, macro-F1 over the classes present in ``y_true``, per-class precision/recall/F1, confusion.

    A class never predicted has precision 0, a class absent from ``y_true`` recall 0 and support 0;
    macro-F1 averages F1 over the classes with support > 0 only.

    Parameters
    ----------
    y_true : array_like of int, shape (N,)
        True class indices, 0 to ``len(classes) - 1`` (another index raises ValueError,
        :func:`confusion_matrix`).
    y_pred : array_like of int, shape (N,)
        Predicted class indices, same length and range.
    classes : list of str
        Class names; ``classes[i]`` names class index i (K = ``len(classes)`` classes).

    Returns
    -------
    report : dict
        ``"n"`` (int): number of samples; ``"accuracy"`` (float): share of correct predictions, 0.0
        when N is 0; ``"macro_f1"`` (float): mean F1 of the classes present in ``y_true``, 0.0 when
        none is; ``"per_class"``: class name -> ``{"precision", "recall", "f1"}`` (floats rounded to 3
        decimals) and ``"support"`` (int, true samples of the class); ``"confusion"``: the (K, K)
        :func:`confusion_matrix` as a list of lists of int.

    Examples
    --------
    >>> r = classification_report([0, 0, 1, 1], [0, 1, 1, 1], ["a", "b"])
    >>> r["accuracy"], round(r["macro_f1"], 3), r["per_class"]["b"]["precision"]
    (0.75, 0.733, 0.667)
    >>> r["per_class"]["a"], r["confusion"]
    ({'precision': 1.0, 'recall': 0.5, 'f1': 0.667, 'support': 2}, [[1, 1], [0, 2]])
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
    """Pixel accuracy, per-class IoU and mean IoU from a pixel confusion matrix.

    The matrix is summed over a data set, as segmentation benchmarks do: rows are the true class,
    columns the predicted class. The IoU of class k is ``cm[k, k] / (row k sum + column k sum -
    cm[k, k])``. Classes absent from both truth and prediction are left out of the mean.

    Parameters
    ----------
    cm : (K, K) array_like of int or float
        Pixel counts, rows true class, columns predicted class (e.g. :func:`confusion_matrix` of the
        flattened class maps).
    classes : list of str, optional
        Names of the K classes, used as the keys of ``"iou"``; default None: ``"0"``, ``"1"``, ...

    Returns
    -------
    scores : dict
        ``"pixel_accuracy"`` (float): trace over total, 0.0 for an all-zero matrix; ``"mean_iou"``
        (float): mean IoU of the classes that occur, 0.0 when none does; ``"iou"``: class name -> IoU
        (float), or None for a class absent from both truth and prediction.

    Examples
    --------
    >>> cm = np.array([[8, 2], [0, 10]])   # 2 background pixels called class 1
    >>> s = semantic_scores(cm, ["bg", "fg"])
    >>> s["pixel_accuracy"], s["iou"]["bg"], round(s["iou"]["fg"], 3), round(s["mean_iou"], 3)
    (0.9, 0.8, 0.833, 0.817)
    >>> semantic_scores(np.array([[5, 0, 0], [0, 5, 0], [0, 0, 0]]))["iou"]   # class 2 never occurs
    {'0': 1.0, '1': 1.0, '2': None}
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
    """IoU of every box of ``a`` with every box of ``b``.

    Boxes are (x1, y1, x2, y2) corners in continuous coordinates: a box's area is
    ``(x2 - x1) * (y2 - y1)`` (no +1 pixel). Boxes are not checked: one with x2 < x1 or y2 < y1 gives
    a meaningless value.

    Parameters
    ----------
    a : array_like of float, shape (N, 4) or (4,)
        Boxes (x1, y1, x2, y2), px; reshaped to (N, 4), so a single box may be given flat.
    b : array_like of float, shape (M, 4) or (4,)
        Boxes (x1, y1, x2, y2), px.

    Returns
    -------
    iou : (N, M) ndarray of float64
        ``iou[i, j]`` is the IoU of ``a[i]`` and ``b[j]``, in [0, 1]; 0 where the union has no area.

    Examples
    --------
    >>> m = box_iou((0, 0, 2, 2), [(1, 0, 3, 2), (5, 5, 6, 6)])
    >>> m.shape, [round(float(v), 3) for v in m[0]]
    ((1, 2), [0.333, 0.0])
    """
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

    Detections are taken in order of decreasing score (ties keep their order in ``preds``). Each is
    compared with the truth boxes of its image: it is a true positive when the truth box it overlaps
    most (:func:`box_iou`) has IoU >= ``iou`` and is not yet matched, which then becomes matched;
    otherwise (also when that best box is already matched, or the image has no truth box) it is a
    false positive, as in the VOC devkit. AP is the area under the precision-recall curve made
    monotonic (each precision replaced by the highest precision at equal or higher recall).

    Parameters
    ----------
    preds : list of (image id, float, tuple)
        Detections of the class: (image id, score, (x1, y1, x2, y2) box in px). Image ids are any
        hashable keys matching those of ``truths``.
    truths : dict of image id to list of tuple
        Ground-truth boxes (x1, y1, x2, y2), px, of each image.
    iou : float, optional
        IoU a detection needs with a truth box to count as found. Default 0.5.

    Returns
    -------
    ap : float
        Average precision in [0, 1]; 0.0 when there are truth boxes but no detection; nan when there
        is no truth box at all.

    Examples
    --------
    >>> truths = {"a": [(0, 0, 10, 10)], "b": [(0, 0, 10, 10)]}
    >>> detection_ap([("a", 0.9, (0, 0, 10, 10)), ("b", 0.8, (0, 0, 10, 9))], truths)
    1.0
    >>> detection_ap([("a", 0.9, (50, 50, 60, 60)), ("a", 0.8, (0, 0, 10, 10))], truths)
    0.25
    >>> detection_ap([("a", 0.9, (0, 0, 10, 10)), ("a", 0.8, (0, 0, 10, 10))], truths)   # a duplicate is an FP
    0.5
    >>> detection_ap([], truths), detection_ap([], {})
    (0.0, nan)
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
    SciPy (``scipy.stats``) is imported when ``n > 0``, not at module import.

    Parameters
    ----------
    k : int
        Cells of the type, ``0 <= k <= n`` (a Python or NumPy integer).
    n : int
        Cells counted.
    confidence : float, optional
        Two-sided confidence level, in (0, 1). Default 0.95.

    Returns
    -------
    low, high : tuple of float
        The lower and upper bound of the proportion; ``low`` is 0.0 when ``k == 0`` and ``high``
        1.0 when ``k == n``.

    Raises
    ------
    ValueError
        When ``k`` or ``n`` is not an integer, ``k`` lies outside 0..n, or ``confidence`` outside (0, 1).

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
    """COCO mAP@[.5:.95] of boxes, computed by pycocotools' COCOeval.

    The evaluation is COCO's ``bbox`` one with up to 1000 detections an image (a field holds ~100 red
    cells) over all object sizes: for each category, precision is averaged over the IoU thresholds
    0.50, 0.55, ..., 0.95 and COCO's 101 recall points; the result is the mean over the categories.
    A category with no truth box is left out, as COCO does (and :func:`detection_ap` gives it nan); a
    category with truth boxes but no detection scores 0. pycocotools is imported at the call.

    Parameters
    ----------
    preds : dict of str to list of (image id, float, tuple)
        For every name in ``categories``, its detections: (image id, score, (x1, y1, x2, y2) box in
        px). Each image id must be a key of ``sizes`` (ValueError otherwise).
    truths : dict of str to dict of image id to list of tuple
        For every name in ``categories``, image id -> its ground-truth boxes (x1, y1, x2, y2), px.
        Boxes of images not in ``sizes`` are not evaluated.
    sizes : dict of image id to (int, int)
        The evaluated images: image id -> (height, width), px.
    categories : tuple of str
        The category names (COCO ids 1, 2, ... in this order).

    Returns
    -------
    map : float
        mAP in [0, 1]; nan when no category has a truth box on the images of ``sizes`` (with or without
        detections), as :func:`detection_ap` gives for a class with no truth box.

    Raises
    ------
    ValueError
        For a detection on an image id that is not a key of ``sizes``.

    Examples
    --------
    >>> t = {"rbc": {0: [(0, 0, 10, 10)]}}
    >>> round(coco_box_map({"rbc": [(0, 0.9, (0, 0, 10, 10))]}, t, {0: (20, 20)}, ("rbc",)), 6)
    1.0
    >>> t2 = {"rbc": {0: [(0, 0, 10, 10), (10, 10, 20, 20)]}}   # one of two cells found: 51 of 101 recall points
    >>> round(coco_box_map({"rbc": [(0, 0.9, (0, 0, 10, 10))]}, t2, {0: (20, 20)}, ("rbc",)), 5)
    0.50495
    >>> none = {"rbc": []}   # no detection: 0 with a truth box, nan without (as detection_ap)
    >>> coco_box_map(none, t, {0: (20, 20)}, ("rbc",)), coco_box_map(none, {"rbc": {}}, {0: (20, 20)}, ("rbc",))
    (0.0, nan)
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
            if i not in sizes:
                raise ValueError(f"coco_box_map: a {c!r} detection is on image id {i!r}, which is not in sizes")
            dets.append({"image_id": i, "category_id": ci, "bbox": [x1, y1, x2 - x1, y2 - y1], "score": s})
    if not dets:  # pycocotools cannot load no detection: each category with a truth box scores 0
        return 0.0 if any(a["image_id"] in sizes for a in anns) else float("nan")
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
