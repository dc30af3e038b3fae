"""torchvision Mask R-CNN with a light backbone, built without downloaded weights (seed 003's
Matterport Mask R-CNN, for parity with our U-Net + watershed cells model)."""
from __future__ import annotations

from collections import OrderedDict
from functools import lru_cache
from typing import TYPE_CHECKING

from hemaseg.models.classifier import make_backbone
from hemaseg.models.registry import register_model

if TYPE_CHECKING:
    from torch import nn

# torch and torchvision are imported when a network is built, not when hemaseg is.


@lru_cache(maxsize=None)
def light_maskrcnn_class() -> type:
    """The :class:`LightMaskRCNN` class, defined (and torch imported) on first use."""
    import torch
    from torch import nn

    class _Body(nn.Module):
        """A small timm ResNet (see :data:`hemaseg.models.classifier.SMALL_RESNETS`) returning its
        stride-8/16/32 feature maps, plus a feature pyramid: what Mask R-CNN calls a backbone."""

        def __init__(self, backbone: str, fpn_channels: int, norm: str) -> None:
            super().__init__()
            from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork, LastLevelMaxPool

            net = make_backbone(backbone, norm)
            self.stem = nn.Sequential(net.conv1, net.bn1, net.act1, net.maxpool)
            self.layers = nn.ModuleList([net.layer1, net.layer2, net.layer3, net.layer4])
            chans = [self.layers[i][-1].conv2.out_channels if hasattr(self.layers[i][-1], "conv2")
                     else self.layers[i][-1].conv3.out_channels for i in range(4)]
            self.fpn = FeaturePyramidNetwork(chans[1:], fpn_channels, extra_blocks=LastLevelMaxPool())
            self.out_channels = fpn_channels

        def forward(self, x: torch.Tensor) -> OrderedDict:
            x = self.stem(x)
            feats = OrderedDict()
            for i, layer in enumerate(self.layers):
                x = layer(x)
                if i >= 1:
                    feats[str(i)] = x
            return self.fpn(feats)


    class LightMaskRCNN(nn.Module):
        """Mask R-CNN (torchvision) on a small ResNet + 64-channel FPN, anchors 16-128 px.

        ``forward(images)`` in eval mode returns torchvision's detections for a list of
        (3, H, W) float tensors in [0, 1]; in train mode ``forward(images, targets)`` the loss dict.
        """

        def __init__(self, classes: int = 4, backbone: str = "resnet10-half", fpn_channels: int = 64, norm: str = "group",
                     min_size: int = 240, max_size: int = 320, detections: int = 300) -> None:
            super().__init__()
            from torchvision.models.detection import MaskRCNN
            from torchvision.models.detection.anchor_utils import AnchorGenerator
            from torchvision.models.detection.faster_rcnn import TwoMLPHead
            from torchvision.models.detection.mask_rcnn import MaskRCNNHeads

            body = _Body(backbone, fpn_channels, norm)
            anchors = AnchorGenerator(sizes=((16,), (32,), (64,), (128,)), aspect_ratios=((0.5, 1.0, 2.0),) * 4)
            self.net = MaskRCNN(
                body, num_classes=classes, min_size=min_size, max_size=max_size, rpn_anchor_generator=anchors,
                box_head=TwoMLPHead(fpn_channels * 7 * 7, 256), box_detections_per_img=detections,
                mask_head=MaskRCNNHeads(fpn_channels, (fpn_channels,) * 4, 1),
                image_mean=[0.5, 0.5, 0.5], image_std=[0.25, 0.25, 0.25])
            # The box and mask predictors take the heads' widths.
            from torchvision.models.detection.faster_rcnn import FastRCNNPredictor
            from torchvision.models.detection.mask_rcnn import MaskRCNNPredictor

            self.net.roi_heads.box_predictor = FastRCNNPredictor(256, classes)
            self.net.roi_heads.mask_predictor = MaskRCNNPredictor(fpn_channels, fpn_channels, classes)
            # hemaseg scales images to the trained red-cell size itself (as for the U-Net), so
            # torchvision's resize-to-min_size is switched off.
            self.net.transform.resize = lambda image, target=None: (image, target)
            self.stride = 32

        def forward(self, images, targets=None):
            return self.net(images, targets)

    return LightMaskRCNN


def __getattr__(name: str):
    # ``from hemaseg.models.maskrcnn import LightMaskRCNN`` still works; it imports torch then.
    if name == "LightMaskRCNN":
        return light_maskrcnn_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@register_model("maskrcnn-light")
def maskrcnn_light(classes: int = 4, backbone: str = "resnet10-half", fpn_channels: int = 64, norm: str = "group",
                   min_size: int = 240, max_size: int = 320, detections: int = 300) -> nn.Module:
    """Light Mask R-CNN: classes counts the background (cells: background, rbc, wbc, platelet)."""
    return light_maskrcnn_class()(classes, backbone, fpn_channels, norm, min_size, max_size, detections)
