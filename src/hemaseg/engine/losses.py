"""Losses: soft Dice + cross-entropy for multi-class segmentation.

Target pixels equal to :data:`IGNORE` (255) count in neither term (unannotated regions,
such as the red cells BCCD's boxes miss). Pixels equal to :data:`ANY_FOREGROUND` (254) are known
to be an object but not which class (the core of a WBC box: cytoplasm or nucleus): cross-entropy
asks only that the foreground classes together be likely (-log sum of their probabilities), and
the Dice term ignores them.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from hemaseg.core.labels import ANY_FOREGROUND, IGNORE  # noqa: F401  (defined in core: io reads masks into them)

if TYPE_CHECKING:
    import torch

# torch is imported inside the functions that need it: importing hemaseg does not import it.


def _onehot(logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(softmax probs, one-hot target, valid mask (B, 1, H, W)) with ignored pixels zeroed in both."""
    import torch
    import torch.nn.functional as F

    probs = logits.softmax(1)
    valid = (target != IGNORE).unsqueeze(1).to(probs.dtype)
    t = torch.where(target == IGNORE, torch.zeros_like(target), target).long()
    onehot = F.one_hot(t, logits.shape[1]).permute(0, 3, 1, 2).to(probs.dtype)
    return probs * valid, onehot * valid, valid


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """1 - mean soft Dice over the foreground classes (1..C-1), batch-pooled."""
    probs, onehot, _ = _onehot(logits, target)
    dims = (0, 2, 3)
    inter = (probs * onehot).sum(dims)
    denom = probs.sum(dims) + onehot.sum(dims)
    d = (2 * inter + eps) / (denom + eps)
    return 1.0 - d[1:].mean()


def nested_dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """Dice on nested regions (class >= k for k >= 1): whole cell, then nucleus, ... as scored."""
    import torch

    probs, onehot, _ = _onehot(logits, target)
    losses = []
    for k in range(1, logits.shape[1]):
        p = probs[:, k:].sum(1)
        t = onehot[:, k:].sum(1)
        inter = (p * t).sum()
        losses.append(1 - (2 * inter + eps) / (p.sum() + t.sum() + eps))
    return torch.stack(losses).mean()


def dice_ce_loss(logits: torch.Tensor, target: torch.Tensor, nested: bool = False,
                 weight: torch.Tensor | None = None) -> torch.Tensor:
    """Cross-entropy (per-pixel ``weight`` (B, H, W) if given) plus soft Dice (nested regions when ``nested``).

    >>> import torch
    >>> logits = torch.tensor([[5.0, 0.0, 0.0], [0.0, 5.0, 0.0], [0.0, 0.0, 5.0]]).T.reshape(1, 3, 1, 3)
    >>> sure = dice_ce_loss(logits, torch.tensor([[[0, 1, 2]]]))
    >>> either = dice_ce_loss(logits, torch.tensor([[[0, ANY_FOREGROUND, ANY_FOREGROUND]]]))
    >>> wrong = dice_ce_loss(logits, torch.tensor([[[ANY_FOREGROUND, 1, 2]]]))
    >>> bool(either < sure < wrong)
    True
    """
    import torch
    import torch.nn.functional as F

    target = target.long()
    anyfg = target == ANY_FOREGROUND
    partial = bool(anyfg.any())
    hard = target.masked_fill(anyfg, IGNORE) if partial else target
    if weight is None and not partial:
        ce = F.cross_entropy(logits, hard, ignore_index=IGNORE)
    else:
        per_pixel = F.cross_entropy(logits, hard, reduction="none", ignore_index=IGNORE)
        if partial:
            # -log P(some foreground class) where only "an object" is known
            any_nll = -torch.logsumexp(logits[:, 1:], 1) + torch.logsumexp(logits, 1)
            per_pixel = torch.where(anyfg, any_nll, per_pixel)
        w = torch.ones_like(per_pixel) if weight is None else weight
        w = w * (target != IGNORE)
        ce = (per_pixel * w).sum() / w.sum().clamp_min(1e-6)
    d = nested_dice_loss(logits, hard) if nested else soft_dice_loss(logits, hard)
    return ce + d
