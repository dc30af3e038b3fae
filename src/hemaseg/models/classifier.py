"""WBC type classifiers: a timm backbone (random init, no download) + linear head, and an
optional gradient-reversal domain head for domain adaptation (DANN, seed 003 eq. 6.7)."""
from __future__ import annotations

import torch
from torch import nn

from hemaseg.models.registry import register_model


class GradReverse(torch.autograd.Function):
    """Identity forward; gradient multiplied by ``-lambd`` backward (Ganin & Lempitsky 2015)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, lambd: float) -> torch.Tensor:
        ctx.lambd = lambd
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return -ctx.lambd * grad, None


def grad_reverse(x: torch.Tensor, lambd: float = 1.0) -> torch.Tensor:
    """Gradient-reversal layer: features pass unchanged, their gradient comes back negated and scaled."""
    return GradReverse.apply(x, lambd)


class WbcClassifier(nn.Module):
    """Backbone -> pooled features -> dropout -> linear classes; ``domain`` head for DANN."""

    def __init__(self, backbone: str = "resnet10t", classes: int = 5, dropout: float = 0.2,
                 domain_head: bool = True) -> None:
        super().__init__()
        import timm

        self.backbone = timm.create_model(backbone, pretrained=False, num_classes=0)
        with torch.no_grad():  # pooled feature width (some timm models widen it in their head)
            nf = self.backbone.eval()(torch.zeros(1, 3, 64, 64)).shape[1]
        self.backbone.train()
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(nf, classes))
        self.domain = nn.Sequential(nn.Linear(nf, 64), nn.ReLU(inplace=True), nn.Linear(64, 1)) if domain_head else None

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """Last convolutional feature map (B, C, h, w): what Grad-CAM looks at."""
        return self.backbone.forward_features(x)

    def pooled(self, fmap: torch.Tensor) -> torch.Tensor:
        return self.backbone.forward_head(fmap)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled features (B, C)."""
        return self.pooled(self.feature_map(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def forward_dann(self, x: torch.Tensor, lambd: float) -> tuple[torch.Tensor, torch.Tensor]:
        """(class logits, domain logits through the gradient-reversal layer)."""
        f = self.features(x)
        return self.head(f), self.domain(grad_reverse(f, lambd)).squeeze(1)


@register_model("wbc-classifier")
def wbc_classifier(backbone: str = "resnet10t", classes: int = 5, dropout: float = 0.2,
                   domain_head: bool = True) -> nn.Module:
    """timm backbone built without downloaded weights, linear head, gradient-reversal domain head."""
    return WbcClassifier(backbone, classes, dropout, domain_head)
