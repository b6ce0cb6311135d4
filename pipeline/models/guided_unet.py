"""The guided colorizer: a ResNet-18 U-Net that takes colour hints and corrects their propagation.

Zhang, Zhu et al. 2017 ("Real-Time User-Guided Image Colorization with Learned Deep Priors") feed
the grey image, a sparse local hint map (a*b* and a mask) and a global hint (the reference's colour
distribution) to one network. Here the input is ``pipeline.hints``'s 10 channels: L*, the hint map,
the nearest hint in (L*, x, y) with its distance, and the reference palette rendered through L*.
The output is that non-learned guided colour (``hints.prior``) plus a learned correction from a
:class:`~pipeline.models.resnet_unet.ResNet18UNet` whose last conv starts at zero, weighted by how
little colour is given there (``hints.guidance``: none at a hint or with a reference, all of it far
from every hint and with no reference): an untrained model is the non-learned propagation, with no
hints it is grey, and training only adds what the data supports where the user said nothing.
(Trained on two CPU cores, the correction learnt an automatic colour, which helped where nothing
is given and hurt on top of a reference; see README "Colour you choose".) The U-Net runs at
1/``factor`` of the resolution (default 4: colour is low-frequency and a 256 px tile is seen whole
at 64 px); the prior stays at full resolution, where L* is sharp.

Shapes: input (N, 10, H, W), H and W multiples of 16 x ``factor``; output (N, 2, H, W): a*b* / 110
in [-1, 1].
"""

from __future__ import annotations

import torch
from torch import nn

from pipeline import hints
from pipeline.models.resnet_unet import ResNet18UNet


class GuidedUNet(nn.Module):
    """Guided a*b* colorizer (see the module docstring).

    Args (keyword-only, JSON-able):
        out_channels: 2 (a*b*); the only value (L*a*b* colour space).
        in_channels: ``hints.CHANNELS`` (10); the only value.
        encoder_weights: ``"imagenet"`` or None, as :class:`ResNet18UNet`.
        factor: the U-Net's pooling factor, default 4.
        decoder_channels: the U-Net's decoder widths, default (128, 64, 64, 32).
    """

    def __init__(self, *, out_channels: int = 2, in_channels: int = hints.CHANNELS,
                 encoder_weights: str | None = None, factor: int = 4,
                 decoder_channels: tuple[int, int, int, int] | list[int] = (128, 64, 64, 32)):
        super().__init__()
        if out_channels != 2 or in_channels != hints.CHANNELS:
            raise ValueError(f"GuidedUNet predicts a*b* (out_channels 2) from {hints.CHANNELS} guided input "
                             f"channels; got out_channels={out_channels}, in_channels={in_channels}")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.net = ResNet18UNet(out_channels=2, in_channels=in_channels, encoder_weights=encoder_weights,
                                decoder_channels=decoder_channels, factor=factor)
        head = self.net.head[0]
        nn.init.zeros_(head.weight)
        nn.init.zeros_(head.bias)
        self.input_multiple = self.net.input_multiple
        self.encoder_weights_used = self.net.encoder_weights_used
        self.encoder_weights_reason = self.net.encoder_weights_reason

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        given = hints.guidance(x.float()).to(x.dtype)
        return (hints.prior(x.float()).to(x.dtype) + (1 - given) * self.net(x)).clamp(-1, 1)
