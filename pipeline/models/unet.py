"""The plain U-Net colorization generator: the paper's "Basic U-Net" (section 3.4, Table 1).

A U-Net (Ronneberger et al. 2015, "U-Net: Convolutional Networks for Biomedical Image
Segmentation") in the encoder-decoder form of pix2pix (Isola et al. 2017, ``UnetGenerator`` in its
``models/networks.py``): ``depth`` conv4x4 stride-2 downsamplings (LeakyReLU 0.2, BatchNorm except on
the first and the innermost), mirrored by ConvTranspose4x4 stride-2 upsamplings (ReLU, BatchNorm,
dropout on the innermost decoder levels) with a skip from every encoder level. No pretrained
encoder: it trains from scratch, as the paper's basic U-Net did.

Shapes: input (N, in_channels, H, W), H and W divisible by ``2**depth`` (``input_multiple``), the CIE
L channel scaled to [-1, 1]; output (N, out_channels, H, W) in [-1, 1] (tanh): RGB * 2 - 1 (3) or
a*b / 110 (2). pix2pix's ``unet_256`` is depth 8 (a 1x1 bottleneck at 256 px).
"""

from __future__ import annotations

import torch
from torch import nn

from pipeline.models.patchgan import _init_weights


class UNet(nn.Module):
    """pix2pix U-Net generator.

    Args (keyword-only; JSON-able, so checkpoints rebuild the model):
        in_channels: 1 (L). out_channels: 3 (RGB, the paper's basic U-Net) or 2 (a*b). Default 3.
        num_feat: width of the first level, default 64 (pix2pix ngf); level k has
            num_feat * min(2**k, 8) channels.
        depth: number of stride-2 levels, default 8 (unet_256); inputs are multiples of 2**depth.
        dropout: dropout probability on the decoder's innermost levels (at most 3, below 8x width),
            default 0.5 as in pix2pix (where it is the generator's noise); off in eval mode.
        encoder_weights: accepted for the shared generator interface (the stages pass
            ``model.encoder_weights``); this U-Net has no pretrained encoder, so it is always random
            init, recorded in ``encoder_weights_used`` / ``encoder_weights_reason``.
    Weights are initialised N(0, 0.02) (norm scales N(1, 0.02)), as in pix2pix.
    """

    def __init__(self, *, in_channels: int = 1, out_channels: int = 3, num_feat: int = 64, depth: int = 8,
                 dropout: float = 0.5, encoder_weights: str | None = None):
        super().__init__()
        if encoder_weights not in (None, "imagenet"):
            raise ValueError(f"encoder_weights={encoder_weights!r}; use 'imagenet' or None")
        if depth < 2:
            raise ValueError(f"depth={depth}; need at least 2 levels")
        self.in_channels, self.out_channels, self.input_multiple = in_channels, out_channels, 2**depth
        self.encoder_weights_used = "random"
        self.encoder_weights_reason = ("not requested" if encoder_weights is None else
                                       "the basic U-Net has no pretrained encoder; it trains from scratch")
        widths = [num_feat * min(2**k, 8) for k in range(depth)]
        self.down = nn.ModuleList()
        for k, w in enumerate(widths):
            cin = in_channels if k == 0 else widths[k - 1]
            layers: list[nn.Module] = [] if k == 0 else [nn.LeakyReLU(0.2, inplace=True)]
            layers.append(nn.Conv2d(cin, w, 4, 2, 1, bias=k in (0, depth - 1)))
            if 0 < k < depth - 1:
                layers.append(nn.BatchNorm2d(w))
            self.down.append(nn.Sequential(*layers))
        self.up = nn.ModuleList()
        for k in reversed(range(depth)):  # decoder level k takes level k's features (+ the skip)
            cin = widths[k] if k == depth - 1 else 2 * widths[k]
            if k == 0:
                self.up.append(nn.Sequential(nn.ReLU(inplace=True),
                                             nn.ConvTranspose2d(cin, out_channels, 4, 2, 1), nn.Tanh()))
                continue
            layers = [nn.ReLU(inplace=True), nn.ConvTranspose2d(cin, widths[k - 1], 4, 2, 1, bias=False),
                      nn.BatchNorm2d(widths[k - 1])]
            if dropout > 0 and 1 <= depth - 1 - k <= 3 and widths[k - 1] == num_feat * 8:
                layers.append(nn.Dropout(dropout))
            self.up.append(nn.Sequential(*layers))
        self.apply(_init_weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        m = self.input_multiple
        if h % m or w % m:
            raise ValueError(f"UNet of depth {len(self.down)} needs H and W divisible by {m}, "
                             f"got H={h}, W={w}; pad or crop")
        skips = []
        for layer in self.down:
            x = layer(x)
            skips.append(x)
        x = self.up[0](skips[-1])
        for layer, skip in zip(self.up[1:], reversed(skips[:-1]), strict=True):
            x = layer(torch.cat([x, skip], 1))
        return x
