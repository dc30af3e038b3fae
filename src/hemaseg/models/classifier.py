"""WBC type classifiers: a timm backbone (random init, no download) + linear head, and an
optional gradient-reversal domain head for domain adaptation (DANN, seed 003 eq. 6.7)."""
from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING

from hemaseg.models.registry import register_model

if TYPE_CHECKING:
    import torch
    from torch import nn

# torch (and timm) are imported when a network is built, not when hemaseg is: the classes are defined then.


@lru_cache(maxsize=None)
def _grad_reverse_class() -> type:
    import torch

    class GradReverse(torch.autograd.Function):
        """Identity forward; gradient multiplied by ``-lambd`` backward (Ganin & Lempitsky 2015)."""

        @staticmethod
        def forward(ctx, x: torch.Tensor, lambd: float) -> torch.Tensor:
            ctx.lambd = lambd
            return x.view_as(x)

        @staticmethod
        def backward(ctx, grad: torch.Tensor):
            return -ctx.lambd * grad, None

    return GradReverse


def grad_reverse(x: torch.Tensor, lambd: float = 1.0) -> torch.Tensor:
    """Gradient-reversal layer: features pass unchanged, their gradient comes back negated and scaled."""
    return _grad_reverse_class().apply(x, lambd)


# Backbones defined here with timm's building blocks: (block layers, channels, stem width).
SMALL_RESNETS = {
    "resnet10-half": ((1, 1, 1, 1), (32, 64, 128, 256), 16),  # resnet10 at half width: 1.2 M parameters
    "resnet10-quarter": ((1, 1, 1, 1), (16, 32, 64, 128), 8),  # for tests
}


def make_backbone(name: str, norm: str = "group", in_chans: int = 3) -> nn.Module:
    """A timm backbone without classifier (random init, never downloaded): a timm model name or
    one of :data:`SMALL_RESNETS`. ``norm="group"`` swaps BatchNorm for GroupNorm (8 groups);
    ``in_chans``: the input's channels."""
    import functools

    import timm
    from timm.layers import GroupNorm

    kw = {"norm_layer": functools.partial(GroupNorm, num_groups=8)} if norm == "group" else {}
    if name in SMALL_RESNETS:
        from timm.models.resnet import BasicBlock, ResNet

        layers, channels, stem = SMALL_RESNETS[name]
        return ResNet(BasicBlock, list(layers), num_classes=0, channels=channels, stem_width=stem, stem_type="deep",
                      avg_down=True, in_chans=in_chans, **kw)
    try:
        return timm.create_model(name, pretrained=False, num_classes=0, in_chans=in_chans, **kw)
    except TypeError:
        raise ValueError(f"backbone {name!r} takes no norm_layer; use norm='batch' with it") from None


def mix_style(x: torch.Tensor, p: float = 0.5, alpha: float = 0.1, eps: float = 1e-6) -> torch.Tensor:
    """MixStyle (Zhou et al., ICLR 2021): with probability ``p``, each sample's per-channel feature
    mean and standard deviation (its "style": a lab's stain and light, in early layers) mixed with
    those of another sample of the batch, weights drawn from Beta(``alpha``, ``alpha``); the content
    (the normalised features) is kept. For training only; the torch random generator decides, so a
    seeded run is reproduced exactly.

    >>> import torch
    >>> x = torch.randn(4, 3, 5, 5)
    >>> bool((mix_style(x, p=0.0) == x).all()), mix_style(x, p=1.0).shape
    (True, torch.Size([4, 3, 5, 5]))
    """
    import torch

    if p <= 0 or x.shape[0] < 2 or float(torch.rand(())) >= p:
        return x
    mu = x.mean((2, 3), keepdim=True).detach()
    sig = (x.var((2, 3), keepdim=True) + eps).sqrt().detach()
    # Drawn on the CPU (the seeded generator), used wherever the features are.
    lam = torch.distributions.Beta(alpha, alpha).sample((x.shape[0], 1, 1, 1)).to(device=x.device, dtype=x.dtype)
    perm = torch.randperm(x.shape[0]).to(x.device)
    mu_mix = lam * mu + (1 - lam) * mu[perm]
    sig_mix = lam * sig + (1 - lam) * sig[perm]
    return (x - mu) / sig * sig_mix + mu_mix


# Backbone stages after which :func:`mix_style` mixes (early layers carry the style, late ones the type).
MIXSTYLE_STAGES = ("layer1", "layer2")


@lru_cache(maxsize=None)
def wbc_classifier_class() -> type:
    """The :class:`WbcClassifier` class, defined (and torch imported) on first use."""
    import torch
    from torch import nn

    class WbcClassifier(nn.Module):
        """Backbone -> pooled features (+ ``extras`` scalar measurements of the cell) -> dropout ->
        linear classes; ``domain`` head for DANN; ``mixstyle`` > 0: :func:`mix_style` with that
        probability after the backbone's :data:`MIXSTYLE_STAGES` while training."""

        def __init__(self, backbone: str = "resnet10-half", classes: int = 5, dropout: float = 0.2,
                     domain_head: bool = True, norm: str = "group", extras: int = 0, mixstyle: float = 0.0,
                     in_chans: int = 3) -> None:
            super().__init__()
            # GroupNorm by default: no running statistics to drift under heavy stain augmentation
            # on a few hundred crops (BatchNorm collapsed to one class in eval mode).
            self.backbone = make_backbone(backbone, norm, in_chans)
            with torch.no_grad():  # pooled feature width (some timm models widen it in their head)
                nf = self.backbone.eval()(torch.zeros(1, in_chans, 64, 64)).shape[1]
            self.backbone.train()
            self.extras = extras
            self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(nf + extras, classes))
            self.domain = nn.Sequential(nn.Linear(nf, 64), nn.ReLU(inplace=True), nn.Linear(64, 1)) if domain_head else None
            self.mixstyle = float(mixstyle)
            if self.mixstyle > 0:
                stages = [getattr(self.backbone, name, None) for name in MIXSTYLE_STAGES]
                if any(stage is None for stage in stages):
                    raise ValueError(f"mixstyle needs a backbone with stages {MIXSTYLE_STAGES} (a ResNet); "
                                     f"{backbone!r} has not")
                for stage in stages:  # hooks hold no weights: the state dict is the same with or without
                    stage.register_forward_hook(self._mix)

        @property
        def n_classes(self) -> int:
            return self.head[-1].out_features

        def _mix(self, module: nn.Module, inputs, output: torch.Tensor) -> torch.Tensor:
            return mix_style(output, self.mixstyle) if self.training else output

        def feature_map(self, x: torch.Tensor) -> torch.Tensor:
            """Last convolutional feature map (B, C, h, w): what Grad-CAM looks at."""
            return self.backbone.forward_features(x)

        def pooled(self, fmap: torch.Tensor) -> torch.Tensor:
            return self.backbone.forward_head(fmap)

        def features(self, x: torch.Tensor) -> torch.Tensor:
            """Pooled features (B, C)."""
            return self.pooled(self.feature_map(x))

        def with_extras(self, f: torch.Tensor, extras: torch.Tensor | None) -> torch.Tensor:
            if not self.extras:
                return f
            if extras is None:  # no measurements: zeros, which the training data uses for "unknown"
                extras = f.new_zeros((f.shape[0], self.extras))
            return torch.cat([f, extras.to(f.dtype)], 1)

        def forward(self, x: torch.Tensor, extras: torch.Tensor | None = None) -> torch.Tensor:
            return self.head(self.with_extras(self.features(x), extras))

        def forward_dann(self, x: torch.Tensor, lambd: float, extras: torch.Tensor | None = None
                         ) -> tuple[torch.Tensor, torch.Tensor]:
            """(class logits, domain logits through the gradient-reversal layer)."""
            f = self.features(x)
            return self.head(self.with_extras(f, extras)), self.domain(grad_reverse(f, lambd)).squeeze(1)

    return WbcClassifier


@lru_cache(maxsize=None)
def wbc_ensemble_class() -> type:
    """The :class:`WbcEnsemble` class, defined (and torch imported) on first use."""
    import math

    import torch
    import torch.nn.functional as F
    from torch import nn

    class WbcEnsemble(nn.Module):
        """Classifiers (:class:`WbcClassifier`, each of ``members`` its keyword arguments) that see their
        own inputs, stacked along the channels (``channels`` each), and answer together: the logarithm
        of the mean of their probabilities, each calibrated by its own temperature (``temperatures``),
        weighted by ``weights`` (default equal).
        A softmax of the output is that mean, so the rest of the typer treats it as one classifier's logits.
        With ``shared`` (class indices) the members share only the split within those classes: member
        ``decides`` alone gives each other class's probability and the group's total, the group's
        total is divided as the members' mean divides it (e.g. the five WBC types shared,
        an rgb member alone telling them from PBC's ig, erythroblast and platelet).
        No domain head: DANN trains a member, not the ensemble."""

        def __init__(self, members: list[dict], temperatures: list[float] | None = None,
                     channels: list[int] | None = None, shared: list[int] | None = None, decides: int = 0,
                     weights: list[float] | None = None) -> None:
            super().__init__()
            if len(members) < 2:
                raise ValueError("an ensemble needs at least two members")
            if len({int(kw.get("classes", 5)) for kw in members}) != 1:
                raise ValueError("the members of an ensemble must have the same classes")
            self.members = nn.ModuleList([wbc_classifier_class()(**{**kw, "domain_head": False, "mixstyle": 0.0})
                                          for kw in members])
            self.channels = [int(c) for c in channels] if channels else [int(kw.get("in_chans", 3)) for kw in members]
            temperatures = temperatures or [1.0] * len(members)
            if len(temperatures) != len(members) or len(self.channels) != len(members):
                raise ValueError("an ensemble needs one temperature and one channel count per member")
            self.temperatures = [float(t) for t in temperatures]
            weights = weights or [1.0] * len(members)
            if len(weights) != len(members) or min(weights) <= 0:
                raise ValueError("an ensemble needs one positive weight per member")
            self.log_weights = [math.log(w / sum(weights)) for w in weights]
            self.extras = max(m.extras for m in self.members)
            self.domain = None
            k = self.members[0].n_classes
            if shared is not None and (not shared or any(not 0 <= int(c) < k for c in shared)):
                raise ValueError(f"shared: class indices in 0..{k - 1}, at least one")
            if not 0 <= int(decides) < len(members):
                raise ValueError(f"decides: a member index in 0..{len(members) - 1}")
            self.decides = int(decides)
            mask = torch.zeros(k, dtype=torch.bool)
            mask[[int(c) for c in (shared if shared is not None else range(k))]] = True
            self.register_buffer("shared", mask, persistent=False)
            self.all_shared = bool(mask.all())

        @property
        def n_classes(self) -> int:
            return self.members[0].n_classes

        def inputs(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
            """Each member's part of the stacked input ``x`` (B, sum(channels), S, S)."""
            if not torch.jit.is_tracing() and x.shape[1] != sum(self.channels):
                raise ValueError(f"the ensemble takes {sum(self.channels)} channels, not {x.shape[1]}")
            return torch.split(x, self.channels, dim=1)

        def features(self, x: torch.Tensor) -> torch.Tensor:
            """The members' pooled features side by side (B, sum of their widths)."""
            return torch.cat([m.features(xi) for m, xi in zip(self.members, self.inputs(x))], 1)

        def forward(self, x: torch.Tensor, extras: torch.Tensor | None = None) -> torch.Tensor:
            logp = [F.log_softmax(m(xi, extras if m.extras else None).float() / t, -1)
                    for m, xi, t in zip(self.members, self.inputs(x), self.temperatures)]
            mean = torch.logsumexp(torch.stack([lp + w for lp, w in zip(logp, self.log_weights)]), 0)
            if self.all_shared:
                return mean
            lone, none = logp[self.decides], mean.new_full((), float("-inf"))
            within = torch.where(self.shared, mean, none)
            within = within - torch.logsumexp(within, -1, keepdim=True)  # the mean's split of the group
            total = torch.logsumexp(torch.where(self.shared, lone, none), -1, keepdim=True)
            return torch.where(self.shared, total + within, lone)

        def forward_dann(self, x, lambd, extras=None):
            raise ValueError("an ensemble has no domain head: train its members with DANN one by one")

    return WbcEnsemble


def __getattr__(name: str):
    # ``from hemaseg.models.classifier import WbcClassifier`` still works; it imports torch then.
    if name == "WbcClassifier":
        return wbc_classifier_class()
    if name == "WbcEnsemble":
        return wbc_ensemble_class()
    if name == "GradReverse":
        return _grad_reverse_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@register_model("wbc-classifier")
def wbc_classifier(backbone: str = "resnet10-half", classes: int = 5, dropout: float = 0.2,
                   domain_head: bool = True, norm: str = "group", extras: int = 0, mixstyle: float = 0.0,
                   in_chans: int = 3) -> nn.Module:
    """timm backbone built without downloaded weights (``norm="group"``: GroupNorm, for timm models
    that take a ``norm_layer``, e.g. the ResNet family; ``"batch"``: the model's own), linear head
    over the pooled features and ``extras`` scalar inputs, gradient-reversal domain head, MixStyle
    in training with probability ``mixstyle`` (0: none), ``in_chans`` input channels."""
    return wbc_classifier_class()(backbone, classes, dropout, domain_head, norm, extras, mixstyle, in_chans)


@register_model("wbc-ensemble")
def wbc_ensemble(members: list[dict], temperatures: list[float] | None = None,
                 channels: list[int] | None = None, shared: list[int] | None = None, decides: int = 0,
                 weights: list[float] | None = None) -> nn.Module:
    """Classifiers that answer together (:class:`WbcEnsemble`): ``members`` are the keyword arguments of
    each one's ``wbc-classifier``, ``temperatures`` their calibrations, ``channels`` the share of the
    stacked input each sees (default: each one's ``in_chans``, 3); ``shared``: the classes (indices)
    within which their mean decides, member ``decides`` deciding the rest (None: the mean decides all);
    ``weights``: each member's share of the mean (default equal).
    The typer tried in stop 55 (docs/results.md, not bundled): a member that sees the crop's colours
    beside one that sees its lightness and the cell's parts (input ``rgb+shape``), sharing the five WBC types.

    >>> import torch
    >>> tiny = {"backbone": "resnet10-quarter", "classes": 3}
    >>> net = wbc_ensemble([tiny, tiny], temperatures=[1.0, 2.0]).eval()
    >>> p = net(torch.zeros(2, 6, 32, 32)).softmax(-1)
    >>> tuple(p.shape), bool(torch.allclose(p.sum(-1), torch.ones(2)))
    ((2, 3), True)
    """
    return wbc_ensemble_class()(members, temperatures, channels, shared, decides, weights)
