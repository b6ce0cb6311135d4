"""The residual VGG16-style conditional patch discriminator of the paper's "Basic U-Net" (section 3.4).

The paper pairs its basic U-Net with "a custom, residual VGG16 discriminator" and gives no more
detail. This is VGG16's conv stages (Simonyan & Zisserman 2015: widths 64-128-256-512 with 2, 2, 3,
3 conv3x3 layers) with a residual connection around each stage's conv3x3 layers (He et al. 2016),
a strided conv4x4 instead of max-pooling at the start of each stage (learned downsampling, as in
the DCGAN / pix2pix discriminators), LeakyReLU(0.2), and a conv3x3 to one logit per cell: a patch
discriminator in the sense of pix2pix (Isola et al. 2017).

ImageNet VGG16 weights are not used: the strided downsampling, the residual stages and the
``1 + out_channels`` input do not match VGG16's layers, so it is always random init
(pix2pix's N(0, 0.02)); ``weights_used`` / ``weights_reason`` record that for the model card.

Conditional: callers feed ``cat([input, output], dim=1)``. Input (N, in_channels, H, W) in [-1, 1],
H and W divisible by 16; output logits (N, 1, H/16, W/16) (16x16 at 256 px).
"""

from __future__ import annotations

import torch
from torch import nn

from pipeline.models.patchgan import _init_weights

_NORMS = {"batch": nn.BatchNorm2d, "instance": lambda c: nn.InstanceNorm2d(c, affine=True)}


class _ResidualStage(nn.Module):
    """conv4x4 s2 (cin -> cout), then x + [conv3x3-norm-LeakyReLU] * (convs - 1): (N, cin, h, w) ->
    (N, cout, h/2, w/2)."""

    def __init__(self, cin: int, cout: int, convs: int, norm: str):
        super().__init__()

        def act(c: int) -> list[nn.Module]:
            return ([_NORMS[norm](c)] if norm != "none" else []) + [nn.LeakyReLU(0.2, inplace=True)]

        self.down = nn.Sequential(nn.Conv2d(cin, cout, 4, 2, 1, bias=norm != "batch"), *act(cout))
        body: list[nn.Module] = []
        for _ in range(convs - 1):
            body += [nn.Conv2d(cout, cout, 3, 1, 1, bias=norm != "batch"), *act(cout)]
        self.body = nn.Sequential(*body)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.down(x)
        return x + self.body(x) if len(self.body) else x


class VGGResidualDiscriminator(nn.Module):
    """Residual VGG16-style patch discriminator.

    Args (keyword-only): in_channels (required: 1 + out_channels), num_feat=64 (VGG16's first width;
    stage k has num_feat * 2**k channels), convs=(2, 2, 3, 3) (conv layers per stage, VGG16's first
    four stages), norm="batch" ("batch" | "instance" | "none"; use instance or none with WGAN-GP,
    whose per-sample gradient penalty BatchNorm breaks).
    """

    def __init__(self, *, in_channels: int, num_feat: int = 64,
                 convs: tuple[int, ...] | list[int] = (2, 2, 3, 3), norm: str = "batch"):
        super().__init__()
        if norm not in (*_NORMS, "none"):
            raise ValueError(f"norm={norm!r}; use batch, instance or none")
        self.in_channels, self.input_multiple = in_channels, 2 ** len(convs)
        self.weights_used = "random"
        self.weights_reason = "no ImageNet VGG16 layer matches (strided, residual, 1 + out_channels input)"
        widths = [num_feat * 2**k for k in range(len(convs))]
        self.stages = nn.Sequential(*(_ResidualStage(in_channels if k == 0 else widths[k - 1], w, n, norm)
                                      for k, (w, n) in enumerate(zip(widths, convs, strict=True))))
        self.head = nn.Conv2d(widths[-1], 1, 3, 1, 1)
        self.apply(_init_weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] != self.in_channels:
            raise ValueError(f"VGGResidualDiscriminator built for {self.in_channels} input channels got "
                             f"{x.shape[1]}; feed cat([input, output], dim=1)")
        return self.head(self.stages(x))
