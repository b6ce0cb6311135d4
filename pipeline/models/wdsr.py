"""WDSR-A and WDSR-B (Yu et al. 2018, "Wide Activation for Efficient and Accurate Image
Super-Resolution"; the authors' ``wdsr_a.py`` / ``wdsr_b.py``): residual blocks that are wide before
the ReLU and slim elsewhere, weight normalisation instead of batch norm, no long skip over the body
but a 5x5-conv + PixelShuffle skip branch from the input, and one PixelShuffle(scale) tail.

- WDSR-A block: conv3x3 (num_feat -> expand * num_feat), ReLU, conv3x3 (-> num_feat).
- WDSR-B block: conv1x1 (num_feat -> expand * num_feat), ReLU, conv1x1 (-> linear * num_feat),
  conv3x3 (-> num_feat): a low-rank linear step, so far wider activation for the same cost.

Input RGB in [0, 1], (N, 3, h, w), any h, w; output (N, 3, scale*h, scale*w) on the [0, 1] scale,
unbounded: clamp(0, 1) it. Mean shift and [-1, 1] scaling are internal.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

DIV2K_MEAN = (0.4488, 0.4371, 0.4040)
INIT_GAIN = 1e-2  # global_skip: branch gains at init, relative (see WDSR's docstring)
DEFAULT_EXPAND = {"A": 4, "B": 6}  # the paper's baseline widening: A x2-x4, B x6-x9


def _wn_conv(cin: int, cout: int, k: int) -> nn.Module:
    return weight_norm(nn.Conv2d(cin, cout, k, padding=k // 2))


class WideBlock(nn.Module):
    """A WDSR-A or -B residual block (see the module docstring), scaled by ``res_scale``, plus identity."""

    def __init__(self, num_feat: int, kind: str, expand: int, linear: float, res_scale: float):
        super().__init__()
        wide = num_feat * expand
        if kind == "A":
            layers = [_wn_conv(num_feat, wide, 3), nn.ReLU(inplace=True), _wn_conv(wide, num_feat, 3)]
        else:
            low = max(1, int(num_feat * linear))
            layers = [_wn_conv(num_feat, wide, 1), nn.ReLU(inplace=True), _wn_conv(wide, low, 1),
                      _wn_conv(low, num_feat, 3)]
        self.body, self.res_scale = nn.Sequential(*layers), res_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x) * self.res_scale


class WDSR(nn.Module):
    """WDSR: head conv3x3; ``num_block`` wide blocks; conv3x3 to 3 scale^2 + PixelShuffle(scale); plus the
    skip branch conv5x5 to 3 scale^2 + PixelShuffle(scale) on the input. All convs weight-normalised.

    Args (keyword-only, JSON-able):
        kind: "A" or "B", default "A". num_feat: default 32, num_block: default 16 (the paper's baselines).
        expand: activation widening, default None = 4 for A, 6 for B. linear: WDSR-B's low-rank
            factor, default 0.8. res_scale: default 1.0. scale: default 4. rgb_mean: default DIV2K's.
        global_skip: also add the bicubic upscaling of the input (VDSR-style residual learning on top of
            WDSR's own skip branch); default False (paper). Both branches' last convs then start with
            their weight-norm gain at 1 % of its usual value, so G starts within a few 8-bit levels of
            bicubic (not at 0: with g = 0 the gradient of the direction v vanishes and Adam grows g by
            only about lr per step, so the branches barely learn in a short schedule).
    """

    def __init__(self, *, kind: str = "A", num_feat: int = 32, num_block: int = 16, expand: int | None = None,
                 linear: float = 0.8, res_scale: float = 1.0, scale: int = 4,
                 rgb_mean: tuple[float, float, float] | list[float] = DIV2K_MEAN, global_skip: bool = False):
        super().__init__()
        kind = str(kind).upper()
        if kind not in DEFAULT_EXPAND:
            raise ValueError(f"kind={kind!r}; WDSR comes as 'A' or 'B'")
        self.scale, self.global_skip = scale, global_skip
        expand = DEFAULT_EXPAND[kind] if expand is None else int(expand)
        self.register_buffer("mean", torch.tensor(list(rgb_mean), dtype=torch.float32).view(1, 3, 1, 1))
        out = 3 * scale * scale
        self.head = _wn_conv(3, num_feat, 3)
        self.body = nn.Sequential(*(WideBlock(num_feat, kind, expand, linear, res_scale)
                                    for _ in range(num_block)))
        self.tail = nn.Sequential(_wn_conv(num_feat, out, 3), nn.PixelShuffle(scale))
        self.skip = nn.Sequential(_wn_conv(3, out, 5), nn.PixelShuffle(scale))
        if global_skip:
            for conv in (self.tail[0], self.skip[0]):
                with torch.no_grad():
                    conv.parametrizations.weight.original0.mul_(INIT_GAIN)  # gain g: weight = g v / |v|
                nn.init.zeros_(conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = (x - self.mean) / 0.5
        out = (self.tail(self.body(self.head(z))) + self.skip(z)) * 0.5
        if self.global_skip:
            return out + F.interpolate(x, scale_factor=self.scale, mode="bicubic", align_corners=False)
        return out + self.mean
