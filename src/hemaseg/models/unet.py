"""U-Net family sized for a CPU: the seed's plain U-Net with dropout, and smp U-Nets."""
from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING

from hemaseg.models.registry import register_model

if TYPE_CHECKING:
    from torch import nn

# torch is imported when a network is built, not when hemaseg is: the classes are defined then.


def _norm(kind: str, channels: int) -> nn.Module:
    from torch import nn

    # BatchNorm in eval mode is a fixed affine map, so tiled inference equals whole-image
    # inference exactly. GroupNorm (the shipped WBC model's choice, as nnU-Net's instance
    # norm) normalises each image/tile by its own statistics: tiles blend to nearly, not
    # exactly, the whole-image result, but no running statistics can drift away from real
    # images; with heavy stain augmentation and dropout, BatchNorm's did.
    if kind == "group":
        return nn.GroupNorm(min(8, channels // 4) or 1, channels)
    return nn.BatchNorm2d(channels)


def _block(cin: int, cout: int, dropout: float, norm: str = "batch") -> nn.Sequential:
    from torch import nn

    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, 3, padding=1, bias=False),
        _norm(norm, cout),
        nn.ReLU(inplace=True),
    ]
    if dropout > 0:
        # Seed 000: dropout inside the convolutional blocks, not only before a head.
        layers.append(nn.Dropout2d(dropout))
    layers += [nn.Conv2d(cout, cout, 3, padding=1, bias=False), _norm(norm, cout), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


@lru_cache(maxsize=None)
def plain_unet_class() -> type:
    """The :class:`PlainUNet` class, defined (and torch imported) on first use."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    class PlainUNet(nn.Module):
        """The seed-000 U-Net (two 3x3 convs per level, max-pool down, transposed-conv up) with dropout.

        Normalisation is BatchNorm by default (``norm="group"`` for GroupNorm).

        ``stem_stride=2`` runs the first level at half resolution and upsamples the logits,
        which keeps large images fast; the output always has the input's size.
        """

        def __init__(
            self,
            in_channels: int = 3,
            classes: int = 3,
            widths: tuple[int, ...] = (16, 32, 64, 128, 256),
            dropout: float = 0.1,
            stem_stride: int = 1,
            norm: str = "batch",
        ) -> None:
            super().__init__()
            self.stem_stride = stem_stride
            self.stride = 2 ** (len(widths) - 1) * stem_stride
            self.stem = nn.Identity() if stem_stride == 1 else nn.Sequential(
                nn.Conv2d(in_channels, widths[0], 3, stride=stem_stride, padding=1, bias=False),
                _norm(norm, widths[0]),
                nn.ReLU(inplace=True),
            )
            cin = in_channels if stem_stride == 1 else widths[0]
            self.down = nn.ModuleList()
            for i, w in enumerate(widths):
                self.down.append(_block(cin, w, dropout if i > 0 else 0.0, norm))
                cin = w
            self.up = nn.ModuleList()
            self.dec = nn.ModuleList()
            for w in reversed(widths[:-1]):
                self.up.append(nn.ConvTranspose2d(cin, w, 2, stride=2))
                self.dec.append(_block(2 * w, w, dropout, norm))
                cin = w
            self.head = nn.Conv2d(cin, classes, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            size = x.shape[-2:]
            x = self.stem(x)
            skips = []
            for i, block in enumerate(self.down):
                if i > 0:
                    x = F.max_pool2d(x, 2)
                x = block(x)
                skips.append(x)
            skips.pop()
            for up, dec in zip(self.up, self.dec):
                x = dec(torch.cat([up(x), skips.pop()], 1))
            x = self.head(x)
            if self.stem_stride != 1:
                x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
            return x

    return PlainUNet


def __getattr__(name: str):
    # ``from hemaseg.models.unet import PlainUNet`` still works; it imports torch then.
    if name == "PlainUNet":
        return plain_unet_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@register_model("unet-dropout")
def unet_dropout(in_channels: int = 3, classes: int = 3, widths=(16, 32, 64, 128, 256),
                 dropout: float = 0.1, stem_stride: int = 1, norm: str = "batch") -> nn.Module:
    """The seed's plain U-Net with dropout in the convolutional blocks (GroupNorm or BatchNorm)."""
    return plain_unet_class()(in_channels, classes, tuple(widths), dropout, stem_stride, norm)


@register_model("smp-unet")
def smp_unet(in_channels: int = 3, classes: int = 3, encoder: str = "tu-resnet10t",
             decoder_channels=(128, 64, 32, 16, 8), encoder_depth: int = 5) -> nn.Module:
    """segmentation_models_pytorch U-Net with a light encoder, random init (no downloads)."""
    import segmentation_models_pytorch as smp

    model = smp.Unet(
        encoder_name=encoder,
        encoder_weights=None,
        encoder_depth=encoder_depth,
        decoder_channels=tuple(decoder_channels)[:encoder_depth],
        in_channels=in_channels,
        classes=classes,
    )
    model.stride = 2**encoder_depth
    return model
