"""The 70x70 PatchGAN discriminator of pix2pix (Isola et al. 2017, "Image-to-Image Translation with
Conditional Adversarial Networks"; ``NLayerDiscriminator`` in its ``models/networks.py``).

Conditional: callers feed ``cat([input, output], dim=1)``, so ``in_channels = 1 + out_channels``
(L plus a*b, or L plus RGB). Input (N, in_channels, H, W) in [-1, 1]; output a grid of real/fake
logits (N, 1, H/8 - 2, W/8 - 2) for n_layers=3 (30x30 at 256 px), each seeing a 70x70 patch.
"""

from __future__ import annotations

import torch
from torch import nn

from pipeline.models.resnet_unet import pool_factor

_NORMS = {"batch": nn.BatchNorm2d, "instance": nn.InstanceNorm2d}


class PatchGAN(nn.Module):
    """PatchGAN: conv4x4 s2 + LeakyReLU(0.2); n_layers - 1 conv4x4 s2-norm-LeakyReLU blocks doubling the
    width (at most 8 * ndf); one stride-1 block; a final stride-1 conv to 1 channel of logits.

    Args (keyword-only): in_channels (required), ndf=64 (first layer width), n_layers=3 (3 gives the
    70x70 receptive field), norm="batch" ("batch" | "instance" | "none"), downsample=1 (average-pool
    the input by this factor first: a D that judges at the resolution of a ``factor`` colorizer, whose
    a*b carry nothing finer; 1/downsample^2 of the cost).
    Weights are initialised N(0, 0.02) (norm scales N(1, 0.02)), as in pix2pix.
    """

    def __init__(self, *, in_channels: int, ndf: int = 64, n_layers: int = 3, norm: str = "batch",
                 downsample: int = 1):
        super().__init__()
        self.downsample = pool_factor("downsample", downsample)
        if norm not in (*_NORMS, "none"):
            raise ValueError(f"norm={norm!r}; use batch, instance or none")
        self.in_channels = in_channels
        use_bias = norm != "batch"  # a BatchNorm's shift makes a conv bias redundant (pix2pix)

        def block(cin: int, cout: int, stride: int) -> list[nn.Module]:
            layers: list[nn.Module] = [nn.Conv2d(cin, cout, 4, stride, 1, bias=use_bias)]
            if norm != "none":
                layers.append(_NORMS[norm](cout))
            return [*layers, nn.LeakyReLU(0.2, inplace=True)]

        layers: list[nn.Module] = [nn.Conv2d(in_channels, ndf, 4, 2, 1), nn.LeakyReLU(0.2, inplace=True)]
        mult = 1
        for n in range(1, n_layers):
            prev, mult = mult, min(2**n, 8)
            layers += block(ndf * prev, ndf * mult, 2)
        prev, mult = mult, min(2**n_layers, 8)
        layers += block(ndf * prev, ndf * mult, 1)
        layers.append(nn.Conv2d(ndf * mult, 1, 4, 1, 1))
        self.net = nn.Sequential(*layers)
        self.apply(_init_weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] != self.in_channels:
            raise ValueError(f"PatchGAN built for {self.in_channels} input channels got {x.shape[1]}; "
                             "feed cat([input, output], dim=1) with in_channels = 1 + out_channels")
        return self.net(nn.functional.avg_pool2d(x, self.downsample) if self.downsample > 1 else x)


def _init_weights(m: nn.Module) -> None:
    """pix2pix's 'normal' init: conv weights N(0, 0.02), biases 0; norm scales N(1, 0.02)."""
    if isinstance(m, nn.Conv2d | nn.ConvTranspose2d):
        nn.init.normal_(m.weight, 0.0, 0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.BatchNorm2d) and m.affine:
        nn.init.normal_(m.weight, 1.0, 0.02)
        nn.init.zeros_(m.bias)
