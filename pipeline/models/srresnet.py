"""SRResNet generator and SRGAN discriminator (Ledig et al. 2017, "Photo-Realistic Single Image
Super-Resolution Using a Generative Adversarial Network", Fig. 4; BasicSR's ``MSRResNet`` and
``VGGStyleDiscriminator``).

Generator: input RGB in [0, 1], (N, 3, h, w), any h, w; output (N, 3, 4h, 4w) on the [0, 1] scale,
unbounded (linear last conv, as BasicSR's MSRResNet; the paper's tanh is omitted): clamp(0, 1) it.
Discriminator: unconditional, input an HR RGB image in [0, 1], (N, 3, H, W), H, W >= 16; output
one real/fake logit per image, (N, 1).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ResidualBlock(nn.Module):
    """conv3x3-BN-PReLU-conv3x3-BN plus the identity (SRGAN Fig. 4); BN optional."""

    def __init__(self, num_feat: int, batch_norm: bool):
        super().__init__()
        norm = (lambda: nn.BatchNorm2d(num_feat)) if batch_norm else nn.Identity
        self.body = nn.Sequential(nn.Conv2d(num_feat, num_feat, 3, padding=1), norm(), nn.PReLU(num_feat),
                                  nn.Conv2d(num_feat, num_feat, 3, padding=1), norm())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class SRResNet(nn.Module):
    """SRResNet: conv9x9 + PReLU; ``num_block`` residual blocks; conv3x3(-BN) + skip from the first conv;
    log2(scale) x (conv3x3 to 4 num_feat, PixelShuffle(2), PReLU); conv9x9 to RGB.

    Args (keyword-only, JSON-able):
        num_feat: width, default 64 (paper). num_block: residual blocks, default 16 (paper).
        scale: 2 or 4 (power of two), default 4.
        batch_norm: BN in the residual blocks, default True (paper; BasicSR's MSRResNet drops it).
        global_skip: add the bicubic upscaling of the input to the output, so the network learns the
            residual (VDSR); default False (paper). The last conv then starts at zero: G starts as bicubic.
    Input is shifted to [-1, 1] inside; output on the [0, 1] scale.
    """

    def __init__(self, *, num_feat: int = 64, num_block: int = 16, scale: int = 4, batch_norm: bool = True,
                 global_skip: bool = False):
        super().__init__()
        if scale not in (2, 4, 8):
            raise ValueError(f"scale={scale}; SRResNet upsamples by powers of two: 2, 4 or 8")
        self.scale, self.global_skip = scale, global_skip
        self.head = nn.Sequential(nn.Conv2d(3, num_feat, 9, padding=4), nn.PReLU(num_feat))
        self.body = nn.Sequential(*(ResidualBlock(num_feat, batch_norm) for _ in range(num_block)))
        self.body_end = nn.Sequential(nn.Conv2d(num_feat, num_feat, 3, padding=1),
                                      nn.BatchNorm2d(num_feat) if batch_norm else nn.Identity())
        ups: list[nn.Module] = []
        for _ in range(scale.bit_length() - 1):
            ups += [nn.Conv2d(num_feat, 4 * num_feat, 3, padding=1), nn.PixelShuffle(2), nn.PReLU(num_feat)]
        self.upsample = nn.Sequential(*ups)
        self.tail = nn.Conv2d(num_feat, 3, 9, padding=4)
        if global_skip:
            nn.init.zeros_(self.tail.weight)
            nn.init.zeros_(self.tail.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feat = self.head(x * 2 - 1)
        out = self.tail(self.upsample(feat + self.body_end(self.body(feat))))
        out = (out + 1) / 2
        if self.global_skip:
            out = out - 0.5 + F.interpolate(x, scale_factor=self.scale, mode="bicubic", align_corners=False)
        return out


class SRGANDiscriminator(nn.Module):
    """SRGAN's VGG-style discriminator: conv3x3 + LeakyReLU(0.2); seven conv3x3-BN-LeakyReLU blocks with
    widths nf, 2nf, 2nf, 4nf, 4nf, 8nf, 8nf and strides 2, 1, 2, 1, 2, 1, 2 (H/16); then dense(1024),
    LeakyReLU, dense(1) (logits; the paper's sigmoid lives in the BCE-with-logits loss).

    Args (keyword-only, JSON-able): in_channels=3, num_feat=64 (paper), pool=6: the feature map is
    adaptively average-pooled to pool x pool before the dense layers, an identity at the paper's
    96 px crops (96 / 16 = 6) that lets any crop >= 16 px through. fc=1024 (paper). batch_norm=True
    (paper); False drops the BatchNorms (conv biases instead), e.g. for WGAN-GP's per-sample penalty.
    Input RGB in [0, 1] (shifted to [-1, 1] inside), (N, in_channels, H, W); output (N, 1) logits.
    """

    def __init__(self, *, in_channels: int = 3, num_feat: int = 64, pool: int = 6, fc: int = 1024,
                 batch_norm: bool = True):
        super().__init__()
        self.in_channels = in_channels
        nf = num_feat
        layers: list[nn.Module] = [nn.Conv2d(in_channels, nf, 3, padding=1), nn.LeakyReLU(0.2, inplace=True)]
        cin = nf
        for cout, stride in ((nf, 2), (2 * nf, 1), (2 * nf, 2), (4 * nf, 1), (4 * nf, 2), (8 * nf, 1),
                             (8 * nf, 2)):
            layers += [nn.Conv2d(cin, cout, 3, stride, 1, bias=not batch_norm),
                       *([nn.BatchNorm2d(cout)] if batch_norm else []), nn.LeakyReLU(0.2, inplace=True)]
            cin = cout
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(pool))
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(cin * pool * pool, fc),
                                        nn.LeakyReLU(0.2, inplace=True), nn.Linear(fc, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] != self.in_channels or min(x.shape[-2:]) < 16:
            raise ValueError(f"SRGANDiscriminator needs (N, {self.in_channels}, H >= 16, W >= 16), got "
                             f"{tuple(x.shape)}; it is unconditional: feed the HR image only")
        return self.classifier(self.features(x * 2 - 1))
