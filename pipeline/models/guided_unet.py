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

With ``reference_head`` > 0, a second learned part corrects the reference's palette (issue 18: the
palette of another tile of the same image scores 0.69x grey; ``scripts/reference_learned.py`` showed
that a small per-pixel model fixes part of what the palette gets wrong). :class:`ReferenceHead` is
an MLP at 1/``factor`` resolution on what the guided input holds about each pixel: its L* and L*
blurred at 1, 3 and 8 px of that resolution, the local contrast, the palette at its L*, and its
tile's mean and spread of L*. Its last layer starts at zero and its correction counts only where a
reference is given and no hint is near (``hints.reference_gate``): the automatic and hint paths are
exactly those of the model without it, and a release gains it by training the head alone
(``python -m pipeline.release reference-head``).

Shapes: input (N, 10, H, W), H and W multiples of 16 x ``factor``; output (N, 2, H, W): a*b* / 110
in [-1, 1].
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from pipeline import color, hints
from pipeline.models.resnet_unet import ResNet18UNet


def blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian blur of (N, 1, H, W) over +-3 sigma, edge pixels repeated beyond the border."""
    k = int(3 * sigma) * 2 + 1
    t = torch.arange(k, device=x.device, dtype=x.dtype) - k // 2
    g = torch.exp(-t ** 2 / (2 * sigma ** 2))
    g = g / g.sum()
    y = F.conv2d(F.pad(x, (k // 2, k // 2, 0, 0), mode="replicate"), g.view(1, 1, 1, k))
    return F.conv2d(F.pad(y, (0, 0, k // 2, k // 2), mode="replicate"), g.view(1, 1, k, 1))


class ReferenceHead(nn.Module):
    """A per-pixel correction (N, 2, H / factor, W / factor), a*b* / 110, of the reference palette
    rendered at L* (see the module docstring), from the guided input (N, 10, H, W)."""

    FEATURES = 9
    SIGMAS = (1.0, 3.0, 8.0)   # L* blurs, px at 1/factor resolution

    def __init__(self, width: int, factor: int):
        super().__init__()
        self.factor = factor
        self.body = nn.Sequential(nn.Conv2d(self.FEATURES, width, 1), nn.ReLU(inplace=True),
                                  nn.Conv2d(width, width, 1), nn.ReLU(inplace=True), nn.Conv2d(width, 2, 1))
        nn.init.zeros_(self.body[-1].weight)
        nn.init.zeros_(self.body[-1].bias)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, FEATURES, H / factor, W / factor): L* / 100 and blurred thrice, the local contrast, the
        palette at L* (a*b* / 110), the tile's mean (/ 100) and spread (/ 50) of L*."""
        L = F.avg_pool2d(color.denormalize_l(x[:, :1].float()), self.factor)
        local = [blur(L, s) for s in self.SIGMAS]
        contrast = (blur(L * L, self.SIGMAS[1]) - local[1] ** 2).clamp(min=0).sqrt() / 50
        at_L = F.avg_pool2d(x[:, 7:9].float(), self.factor)
        flat = L.flatten(1)
        stats = torch.stack([flat.mean(1) / 100, flat.std(1, unbiased=False) / 50], 1)[..., None, None]
        return torch.cat([L / 100, *(v / 100 for v in local), contrast, at_L,
                          stats.expand(-1, -1, *L.shape[-2:])], 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(self.features(x))


class GuidedUNet(nn.Module):
    """Guided a*b* colorizer (see the module docstring).

    Args (keyword-only, JSON-able):
        out_channels: 2 (a*b*); the only value (L*a*b* colour space).
        in_channels: ``hints.CHANNELS`` (10); the only value.
        encoder_weights: ``"imagenet"`` or None, as :class:`ResNet18UNet`.
        factor: the U-Net's pooling factor, default 4.
        decoder_channels: the U-Net's decoder widths, default (128, 64, 64, 32).
        reference_head: width of :class:`ReferenceHead`'s hidden layers; 0 (default): none.
    """

    def __init__(self, *, out_channels: int = 2, in_channels: int = hints.CHANNELS,
                 encoder_weights: str | None = None, factor: int = 4,
                 decoder_channels: tuple[int, int, int, int] | list[int] = (128, 64, 64, 32),
                 reference_head: int = 0):
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
        self.reference_head = ReferenceHead(reference_head, factor) if reference_head else None
        self.factor = factor
        self.input_multiple = self.net.input_multiple
        self.encoder_weights_used = self.net.encoder_weights_used
        self.encoder_weights_reason = self.net.encoder_weights_reason

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        given = hints.guidance(xf).to(x.dtype)
        out = hints.prior(xf).to(x.dtype) + (1 - given) * self.net(x)
        if self.reference_head is not None:  # its 1/factor-resolution correction, upsampled bilinearly
            fix = F.interpolate(self.reference_head(x), scale_factor=self.factor, mode="bilinear",
                                align_corners=False)
            out = out + hints.reference_gate(xf).to(x.dtype) * fix
        return out.clamp(-1, 1)
