"""Losses: soft Dice + cross-entropy for multi-class segmentation."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """1 - mean soft Dice over the foreground classes (1..C-1), batch-pooled."""
    probs = logits.softmax(1)
    onehot = F.one_hot(target.long(), logits.shape[1]).permute(0, 3, 1, 2).to(probs.dtype)
    dims = (0, 2, 3)
    inter = (probs * onehot).sum(dims)
    denom = probs.sum(dims) + onehot.sum(dims)
    d = (2 * inter + eps) / (denom + eps)
    return 1.0 - d[1:].mean()


def nested_dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """Dice on nested regions (class >= k for k >= 1): whole cell, then nucleus, ... as scored."""
    probs = logits.softmax(1)
    losses = []
    for k in range(1, logits.shape[1]):
        p = probs[:, k:].sum(1)
        t = (target >= k).to(p.dtype)
        inter = (p * t).sum()
        losses.append(1 - (2 * inter + eps) / (p.sum() + t.sum() + eps))
    return torch.stack(losses).mean()


def dice_ce_loss(logits: torch.Tensor, target: torch.Tensor, nested: bool = False,
                 weight: torch.Tensor | None = None) -> torch.Tensor:
    """Cross-entropy (per-pixel ``weight`` (B, H, W) if given) plus soft Dice (nested regions when ``nested``)."""
    if weight is None:
        ce = F.cross_entropy(logits, target.long())
    else:
        per_pixel = F.cross_entropy(logits, target.long(), reduction="none")
        ce = (per_pixel * weight).sum() / weight.sum().clamp_min(1e-6)
    d = nested_dice_loss(logits, target) if nested else soft_dice_loss(logits, target)
    return ce + d
