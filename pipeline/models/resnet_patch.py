"""The paper's ResNet-50 patch discriminator (section 3.4): "a pre-trained ResNet-50 with imagenet
weights ... with last few layers clipped off", producing a grid of logits as pix2pix's PatchGAN does
(Isola et al. 2017).

torchvision's ResNet-50 (He et al. 2016) with ``avgpool`` and ``fc`` removed (and ``layer4`` too when
``cut_layer4``, for a finer grid), ``conv1`` adapted to ``in_channels`` (its RGB filters summed over
their inputs, averaged and repeated for more than one channel), and a 1x1 conv to one logit per
cell. ImageNet weights (``ResNet50_Weights.IMAGENET1K_V2``) come through the torch hub cache
(``pipeline.models.imagenet``); offline, random init with one printed line, recorded in
``weights_used`` / ``weights_reason``.

Conditional: callers feed ``cat([input, output], dim=1)``. Input (N, in_channels, H, W) in [-1, 1],
H and W divisible by 32 (16 with ``cut_layer4``); output logits (N, 1, H/32, W/32) (8x8 at 256 px),
or (N, 1, H/16, W/16) with ``cut_layer4``. Its BatchNorm layers make it a poor WGAN-GP critic.
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models import resnet50

from pipeline.models.resnet_unet import adapt_conv1, load_imagenet


class ResNet50Patch(nn.Module):
    """ResNet-50 patch discriminator.

    Args (keyword-only): in_channels (required: 1 + out_channels), weights="imagenet" ("imagenet" |
    None: random init), cut_layer4=False (drop layer4 as well: 1024 channels at 1/16 instead of
    2048 at 1/32).
    """

    def __init__(self, *, in_channels: int, weights: str | None = "imagenet", cut_layer4: bool = False):
        super().__init__()
        if weights not in (None, "imagenet"):
            raise ValueError(f"weights={weights!r}; use 'imagenet' or None")
        self.in_channels = in_channels
        self.input_multiple = 16 if cut_layer4 else 32
        net = resnet50(weights=None)
        self.weights_used, self.weights_reason = "random", "not requested"
        if weights == "imagenet":
            self.weights_used, self.weights_reason = load_imagenet(net, "ResNet50_Weights.IMAGENET1K_V2",
                                                                   "discriminator")
        net.conv1 = adapt_conv1(net.conv1, in_channels)
        layers = [net.conv1, net.bn1, net.relu, net.maxpool, net.layer1, net.layer2, net.layer3]
        if not cut_layer4:
            layers.append(net.layer4)
        self.features = nn.Sequential(*layers)
        self.head = nn.Conv2d(1024 if cut_layer4 else 2048, 1, 1)
        nn.init.normal_(self.head.weight, 0.0, 0.02)
        nn.init.zeros_(self.head.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] != self.in_channels:
            raise ValueError(f"ResNet50Patch built for {self.in_channels} input channels got {x.shape[1]}; "
                             "feed cat([input, output], dim=1)")
        return self.head(self.features(x))
