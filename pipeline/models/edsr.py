"""EDSR (Lim et al. 2017, "Enhanced Deep Residual Networks for Single Image Super-Resolution";
BasicSR's ``EDSR``): residual blocks without batch norm, residual scaling, a long skip, sub-pixel
upsampling. The baseline is 16 blocks of 64 channels; the large model 32 x 256 with res_scale 0.1.

Input RGB in [0, 1], (N, 3, h, w), any h, w; output (N, 3, scale*h, scale*w) on the [0, 1] scale,
unbounded (linear last conv): clamp(0, 1) it. The mean shift is internal.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

DIV2K_MEAN = (0.4488, 0.4371, 0.4040)  # EDSR's RGB mean shift (of DIV2K)


class ResBlock(nn.Module):
    """conv3x3-ReLU-conv3x3, scaled by ``res_scale``, plus the identity (no BN: EDSR's point)."""

    def __init__(self, num_feat: int, res_scale: float):
        super().__init__()
        self.res_scale = res_scale
        self.body = nn.Sequential(nn.Conv2d(num_feat, num_feat, 3, padding=1), nn.ReLU(inplace=True),
                                  nn.Conv2d(num_feat, num_feat, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x) * self.res_scale


class EDSR(nn.Module):
    """EDSR: mean shift; conv3x3 head; ``num_block`` ResBlocks + conv3x3 with a long skip from the head;
    log2(scale) x (conv3x3 to 4 num_feat, PixelShuffle(2)); conv3x3 to RGB; mean added back.

    Args (keyword-only, JSON-able):
        num_feat: width, default 64 (baseline). num_block: default 16 (baseline).
        res_scale: residual scaling, default 1.0 (baseline; 0.1 for the 32 x 256 model).
        scale: 2, 4 or 8, default 4. rgb_mean: the mean shift, default DIV2K's.
        global_skip: add the bicubic upscaling of the input to the output (the network learns the
            residual, VDSR-style; the mean shift is then not added back); default False (paper). The
            last conv then starts at zero, so G starts as bicubic.
    """

    def __init__(self, *, num_feat: int = 64, num_block: int = 16, res_scale: float = 1.0, scale: int = 4,
                 rgb_mean: tuple[float, float, float] | list[float] = DIV2K_MEAN, global_skip: bool = False):
        super().__init__()
        if scale not in (2, 4, 8):
            raise ValueError(f"scale={scale}; EDSR upsamples by powers of two here: 2, 4 or 8")
        self.scale, self.global_skip = scale, global_skip
        self.register_buffer("mean", torch.tensor(list(rgb_mean), dtype=torch.float32).view(1, 3, 1, 1))
        self.head = nn.Conv2d(3, num_feat, 3, padding=1)
        self.body = nn.Sequential(*(ResBlock(num_feat, res_scale) for _ in range(num_block)),
                                  nn.Conv2d(num_feat, num_feat, 3, padding=1))
        ups: list[nn.Module] = []
        for _ in range(scale.bit_length() - 1):
            ups += [nn.Conv2d(num_feat, 4 * num_feat, 3, padding=1), nn.PixelShuffle(2)]
        self.upsample = nn.Sequential(*ups)
        self.tail = nn.Conv2d(num_feat, 3, 3, padding=1)
        if global_skip:
            nn.init.zeros_(self.tail.weight)
            nn.init.zeros_(self.tail.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feat = self.head(x - self.mean)
        out = self.tail(self.upsample(feat + self.body(feat)))
        if self.global_skip:
            return out + F.interpolate(x, scale_factor=self.scale, mode="bicubic", align_corners=False)
        return out + self.mean
