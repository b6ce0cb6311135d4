"""EDSR (Lim et al. 2017, "Enhanced Deep Residual Networks for Single Image Super-Resolution";
BasicSR's ``EDSR``): residual blocks without batch norm, residual scaling, a long skip, sub-pixel
upsampling. The baseline is 16 blocks of 64 channels; the large model 32 x 256 with res_scale 0.1.

Input RGB in [0, 1], (N, 3, h, w), any h, w; output (N, 3, scale*h, scale*w) on the [0, 1] scale,
unbounded (linear last conv): clamp(0, 1) it. The mean shift is internal.
"""

from __future__ import annotations

from collections.abc import Callable

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


class SubPixelSR(nn.Module):
    """EDSR's frame around a body (EDSR's and RCAN's): mean shift; conv3x3 head; ``make_body()`` with a
    long skip from the head; log2(scale) x (conv3x3 to 4 num_feat, PixelShuffle(2)); conv3x3 to RGB;
    mean added back, or with ``global_skip`` the bicubic upscaling of the input added (the last conv
    then starts at zero, so the model starts as bicubic). Built head, body, upsampling, tail, in
    that order (the order of the RNG's draws)."""

    def __init__(self, *, num_feat: int, scale: int, rgb_mean: tuple[float, float, float] | list[float],
                 global_skip: bool, make_body: Callable[[], nn.Module]):
        super().__init__()
        if scale not in (2, 4, 8):
            raise ValueError(f"scale={scale}; {type(self).__name__} upsamples by powers of two here: "
                             "2, 4 or 8")
        self.scale, self.global_skip = scale, global_skip
        self.register_buffer("mean", torch.tensor(list(rgb_mean), dtype=torch.float32).view(1, 3, 1, 1))
        self.head = nn.Conv2d(3, num_feat, 3, padding=1)
        self.body = make_body()
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


class EDSR(SubPixelSR):
    """EDSR: :class:`SubPixelSR` around ``num_block`` ResBlocks + conv3x3.

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

        def body() -> nn.Module:
            blocks = (ResBlock(num_feat, res_scale) for _ in range(num_block))
            return nn.Sequential(*blocks, nn.Conv2d(num_feat, num_feat, 3, padding=1))

        super().__init__(num_feat=num_feat, scale=scale, rgb_mean=rgb_mean, global_skip=global_skip,
                         make_body=body)
