"""A colorizer that classifies: per pixel, a distribution over the Q in-gamut a*b bins
(Zhang, Isola & Efros 2016, "Colorful Image Colorization"; maths in ``pipeline.abclass``).

``ABClassifier`` wraps a backbone generator (``resnet18_unet`` by default) that outputs Q logits
per pixel. ``forward`` returns the annealed mean (temperature ``T``, 0.38 as in the paper) in the
``lab`` colour space's network units (a*b / 110), so it stands wherever a regression colorizer does:
validation, evaluation, the discriminator, ``astrogan colorize``. In training mode it also keeps the
logits of its last forward (``last_logits``) for the classification loss, which
``pipeline.colorizer.colour_objective`` adds to the generator's objective.
"""

from __future__ import annotations

import sys

import torch
from torch import nn
from torch.nn import functional as F

from pipeline.abclass import ab_bins, annealed_mean
from pipeline.color import AB_SCALE
from pipeline.models.resnet_unet import pool_factor, upsample_to


class ABClassifier(nn.Module):
    """Args (keyword-only, JSON-able): backbone (a generator name), backbone_kwargs, T (annealing
    temperature of the decoded output), grid (bin side in a*b units), in_channels, encoder_weights
    (passed to the backbone), factor (1, or the pooling of the input: the bins are classified at
    1/factor resolution, as Zhang et al. do at 1/4, and the decoded a*b upsampled bilinearly to the
    input's size; ``last_logits`` stay at 1/factor); out_channels is accepted for the shared
    interface and ignored (the output is a*b / 110, 2 channels)."""

    def __init__(self, *, backbone: str = "resnet18_unet", backbone_kwargs: dict | None = None,
                 T: float = 0.38, grid: float = 10.0, in_channels: int = 1,
                 encoder_weights: str | None = None, out_channels: int = 2, factor: int = 1):
        super().__init__()
        self.factor = pool_factor("factor", factor)
        from pipeline.models import generator_class

        centres = ab_bins(grid)
        kwargs = {**(backbone_kwargs or {}), "in_channels": in_channels, "out_channels": len(centres),
                  "encoder_weights": encoder_weights}
        if backbone == "resnet18_unet":
            kwargs["final_activation"] = "none"
        self.net = generator_class(backbone)(**kwargs)
        self.register_buffer("centres", centres)
        self.T, self.in_channels, self.out_channels = float(T), in_channels, 2
        module = sys.modules[type(self.net).__module__]
        self.input_multiple = self.factor * (getattr(self.net, "input_multiple", None)
                                             or getattr(module, "STRIDE", 1))
        self.encoder_weights_used = getattr(self.net, "encoder_weights_used", "random")
        self.encoder_weights_reason = getattr(self.net, "encoder_weights_reason", "not requested")
        self.last_logits: torch.Tensor | None = None

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Per-bin logits (N, Q, H / factor, W / factor)."""
        return self.net(F.avg_pool2d(x, self.factor) if self.factor > 1 else x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.logits(x)
        if self.training:
            self.last_logits = logits
        ab = annealed_mean(logits.float(), self.centres, self.T) / AB_SCALE
        return upsample_to(ab, tuple(x.shape[-2:])) if self.factor > 1 else ab
