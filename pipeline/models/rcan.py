"""RCAN (Zhang et al. 2018, "Image Super-Resolution Using Very Deep Residual Channel Attention
Networks", ECCV; the authors' ``rcan.py``): EDSR's residual blocks with channel attention, nested as
a residual in residual.

- Channel attention (CA): global average pooling of each channel, conv1x1 (C -> C/r), ReLU, conv1x1
  (-> C), sigmoid; the block's features are scaled channel by channel by the result. It lets the
  network weigh its features by what the whole input holds (on Hubble tiles: star field, nebula
  filament or galaxy disk), which plain EDSR blocks cannot see beyond their receptive field.
- RCAB: conv3x3-ReLU-conv3x3, CA, ``res_scale``, plus the identity (no BN, as EDSR).
- Residual group: ``num_block`` RCABs + conv3x3, plus the group's input (the short skip).
- Body: ``num_group`` groups + conv3x3, plus the head's output (the long skip). Upsampling and tail
  as EDSR (log2(scale) x conv3x3 + PixelShuffle(2), conv3x3 to RGB), mean shift internal.

The paper's model is 10 groups x 20 blocks x 64 channels, r = 16 (15.6 M parameters). It reports
32.63 dB PSNR-Y on Set5 x4, against 32.46 dB for the 43 M-parameter EDSR, trained on DIV2K. Here it is
the side-by-side candidate to EDSR-baseline for the SR release (``scripts/gpu_release.sh sr``: 64 x 4
groups x 8 blocks, 2.9 M parameters, against EDSR-baseline's 1.5 M, for the same GPU seconds; the
CPU trial at 32 channels is in README "Release weights"). ``global_skip`` adds the bicubic upscaling
of the input, as our EDSR's does (the network learns the residual, its last conv starting at zero),
so it starts as bicubic.

Input RGB in [0, 1], (N, 3, h, w), any h, w; output (N, 3, scale*h, scale*w) on the [0, 1] scale,
unbounded: clamp(0, 1) it.
"""

from __future__ import annotations

import torch
from torch import nn

from pipeline.models.edsr import DIV2K_MEAN, SubPixelSR


class ChannelAttention(nn.Module):
    """x * sigmoid(W2 relu(W1 mean_hw(x))): squeeze to C/``reduction`` and excite back to C."""

    def __init__(self, num_feat: int, reduction: int):
        super().__init__()
        squeezed = max(1, num_feat // reduction)
        self.fc = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(num_feat, squeezed, 1),
                                nn.ReLU(inplace=True), nn.Conv2d(squeezed, num_feat, 1), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.fc(x)


class RCAB(nn.Module):
    """Residual channel attention block: conv3x3-ReLU-conv3x3, channel attention, scaled, plus identity."""

    def __init__(self, num_feat: int, reduction: int, res_scale: float):
        super().__init__()
        self.res_scale = res_scale
        self.body = nn.Sequential(nn.Conv2d(num_feat, num_feat, 3, padding=1), nn.ReLU(inplace=True),
                                  nn.Conv2d(num_feat, num_feat, 3, padding=1),
                                  ChannelAttention(num_feat, reduction))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x) * self.res_scale


class ResidualGroup(nn.Module):
    """``num_block`` RCABs and a conv3x3, plus the group's input (RCAN's short skip)."""

    def __init__(self, num_feat: int, num_block: int, reduction: int, res_scale: float):
        super().__init__()
        self.body = nn.Sequential(*(RCAB(num_feat, reduction, res_scale) for _ in range(num_block)),
                                  nn.Conv2d(num_feat, num_feat, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class RCAN(SubPixelSR):
    """RCAN: EDSR's frame (:class:`~pipeline.models.edsr.SubPixelSR`: mean shift, head, long skip,
    sub-pixel upsampling, RGB tail) around ``num_group`` residual groups + conv3x3.

    Args (keyword-only, JSON-able):
        num_feat: width, default 64 (paper). num_group: residual groups, default 10 (paper).
        num_block: RCABs per group, default 20 (paper). reduction: CA squeeze ratio r, default 16.
        res_scale: residual scaling in each RCAB, default 1.0 (paper).
        scale: 2, 4 or 8, default 4. rgb_mean: the mean shift, default DIV2K's.
        global_skip: add the bicubic upscaling of the input to the output, the last conv starting at
            zero (as EDSR's option here); default False (paper).
    """

    def __init__(self, *, num_feat: int = 64, num_group: int = 10, num_block: int = 20, reduction: int = 16,
                 res_scale: float = 1.0, scale: int = 4,
                 rgb_mean: tuple[float, float, float] | list[float] = DIV2K_MEAN, global_skip: bool = False):
        if num_group < 1 or num_block < 1 or reduction < 1:
            raise ValueError(f"num_group={num_group}, num_block={num_block}, reduction={reduction}: "
                             "each must be >= 1")

        def body() -> nn.Module:
            groups = (ResidualGroup(num_feat, num_block, reduction, res_scale) for _ in range(num_group))
            return nn.Sequential(*groups, nn.Conv2d(num_feat, num_feat, 3, padding=1))

        super().__init__(num_feat=num_feat, scale=scale, rgb_mean=rgb_mean, global_skip=global_skip,
                         make_body=body)
