"""U-Net on a clipped ResNet-18 encoder: the colorization generator.

The encoder is torchvision's ResNet-18 (He et al. 2016, "Deep Residual Learning for Image
Recognition"), rebuilt in ``pipeline.models.resnet18`` so that the CLI does not import torchvision,
cut after ``layer3``: the paper "clips half its layers", so ``layer4``, ``avgpool`` and
``fc`` are dropped. The decoder is a U-Net (Ronneberger et al. 2015) of upsample + conv blocks with
skips from every encoder scale, as in pix2pix colorization (Isola et al. 2017) and the fastai
"DynamicUnet" recipe of colorizing with an ImageNet-pretrained ResNet encoder.

Shapes: input (N, in_channels, H, W), H and W divisible by 16 x ``factor``, the CIE L channel scaled
to [-1, 1]; output (N, out_channels, H, W) in [-1, 1] (tanh): a*b / 110 (2 channels) or RGB * 2 - 1 (3).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from pipeline.models import imagenet
from pipeline.models.resnet18 import ResNet18

STRIDE = 16  # the encoder's total downsampling: inputs must be multiples of it


def load_imagenet(net: nn.Module, weights: str, what: str) -> tuple[str, str]:
    """Load ``weights`` (a name of ``pipeline.models.imagenet.URLS`` such as
    ``"ResNet18_Weights.IMAGENET1K_V1"``, fetched without torchvision) into ``net``; returns
    (used, reason).

    used is "imagenet", or "random" when the weights cannot be had (offline, proxy, corrupt cache),
    in which case ONE line ``<what> weights: imagenet unavailable (<reason>); using random init`` is
    printed and ``net`` keeps its random init. Shared by every model with an ImageNet backbone."""
    try:
        net.load_state_dict(imagenet.state_dict(weights))
        return "imagenet", f"torchvision {weights}"
    except Exception as e:  # offline, proxy, corrupt cache: all mean "no pretrained weights"
        reason = f"{type(e).__name__}: {e}".splitlines()[0][:200]
        print(f"{what} weights: imagenet unavailable ({reason}); using random init")
        return "random", reason


def adapt_conv1(conv: nn.Conv2d, in_channels: int) -> nn.Conv2d:
    """A copy of a ResNet ``conv1`` (64, 3, 7, 7) for ``in_channels`` inputs: the RGB filters are
    summed over their input channels (keeps the response to a grey image), averaged and repeated
    when in_channels > 1."""
    w = conv.weight.data
    new = nn.Conv2d(in_channels, conv.out_channels, 7, stride=2, padding=3, bias=False)
    new.weight.data = w.sum(1, keepdim=True).repeat(1, in_channels, 1, 1) / in_channels
    return new


def _conv_bn_relu(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))


def _up2_dim(v: torch.Tensor, d: int) -> torch.Tensor:
    """x2 linear upsampling of dim ``d`` (half-pixel centres, edges replicated): out[2i] = x[i-1]/4 +
    3x[i]/4, out[2i+1] = 3x[i]/4 + x[i+1]/4."""
    if not (torch.is_grad_enabled() and v.requires_grad):
        return _up2_dim_inference(v, d)
    n = v.shape[d]
    prev = torch.cat([v.narrow(d, 0, 1), v.narrow(d, 0, n - 1)], d)
    nxt = torch.cat([v.narrow(d, 1, n - 1), v.narrow(d, n - 1, 1)], d)
    return torch.stack([0.25 * prev + 0.75 * v, 0.75 * v + 0.25 * nxt], d + 1).flatten(d, d + 1)


def _up2_dim_inference(v: torch.Tensor, d: int) -> torch.Tensor:
    """:func:`_up2_dim` without autograd, bit for bit the same numbers (x/4 is exact, and each output is
    the same one rounded sum): 3x/4 and x/4 once each, summed straight into the even and odd rows of
    the output. Four passes over the data instead of nine: 2.3x faster on this CPU."""
    n = v.shape[d]
    a, q = 0.75 * v, 0.25 * v
    shape = list(v.shape)
    shape[d] = 2 * n
    out = torch.empty(shape, dtype=v.dtype, device=v.device)
    rows = out.unflatten(d, (n, 2))
    even, odd = rows.select(d + 1, 0), rows.select(d + 1, 1)
    torch.add(q.narrow(d, 0, n - 1), a.narrow(d, 1, n - 1), out=even.narrow(d, 1, n - 1))
    torch.add(q.narrow(d, 0, 1), a.narrow(d, 0, 1), out=even.narrow(d, 0, 1))
    torch.add(a.narrow(d, 0, n - 1), q.narrow(d, 1, n - 1), out=odd.narrow(d, 0, n - 1))
    torch.add(a.narrow(d, n - 1, 1), q.narrow(d, n - 1, 1), out=odd.narrow(d, n - 1, 1))
    return out


def upsample2x_bilinear(x: torch.Tensor) -> torch.Tensor:
    """``F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)``, the same numbers
    (to rounding), as shifted slices and weighted sums, in the input's memory format.

    Why not the library call: its backward is a scatter-add (atomics into the input gradient), and
    on an H200 the compiled pix2pix step spent about 40 % of its GPU time in the upsampling of this
    decoder, most of it in that backward (``benchmarks/results/gan_step_profile_h200.json``). Here the
    backward is slices and sums as well, which fuse into a few memory-bound kernels."""
    nhwc = x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)
    if nhwc:  # work on the NHWC view, so the result is channels_last too
        v = x.permute(0, 2, 3, 1)
        return _up2_dim(_up2_dim(v, 1), 2).permute(0, 3, 1, 2)
    return _up2_dim(_up2_dim(x, 2), 3)


def pool_factor(name: str, value) -> int:
    """``value`` as an int if it is a whole number >= 1 (a pooling factor), else a one-line ValueError."""
    if int(value) != value or value < 1:
        raise ValueError(f"{name}={value!r}; use an integer >= 1")
    return int(value)


def upsample_to(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear upsampling of a low-resolution prediction to ``size`` (half-pixel centres, as
    ``F.interpolate(..., align_corners=False)``): how a ``factor`` > 1 colorizer's a*b reach full size."""
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class UpBlock(nn.Module):
    """x2 bilinear upsample, concat the skip, two conv3x3-BN-ReLU: (N, cin, h, w) -> (N, cout, 2h, 2w)."""

    def __init__(self, cin: int, cskip: int, cout: int):
        super().__init__()
        self.conv = nn.Sequential(_conv_bn_relu(cin + cskip, cout), _conv_bn_relu(cout, cout))

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.cat([upsample2x_bilinear(x), skip], dim=1))


class ResNet18UNet(nn.Module):
    """U-Net generator on a ResNet-18 encoder clipped after ``layer3``.

    Args (keyword-only; all JSON-able, so checkpoints can rebuild the model):
        out_channels: 2 (Lab: a*b / 110) or 3 (RGB * 2 - 1). Default 2.
        encoder_weights: ``"imagenet"`` (torchvision ``ResNet18_Weights.IMAGENET1K_V1``; random init
            with a one-line notice when they cannot be had, e.g. offline) or ``None`` (random init).
        in_channels: input channels, default 1 (L). With ImageNet weights, conv1's RGB filters are
            summed over their input channels (averaged and repeated when in_channels > 1).
        decoder_channels: widths of the four decoder blocks (1/8, 1/4, 1/2, 1/1 scale).
        final_activation: "tanh" (outputs in [-1, 1], a*b / 110 or RGB) or "none" (raw logits, for
            the a*b classifier, ``pipeline.models.ab_classifier``).
        factor: 1 (default) or an integer > 1: the network runs on the input average-pooled by
            ``factor`` (a 256 px tile seen whole at 64 px for factor 4) and its output is upsampled
            bilinearly back to the input's size. Colour is low-frequency, so a colorizer gains a whole
            tile of context for 1/factor^2 of the cost; the full-resolution L joins the a*b downstream.

    Skips: conv1-relu (64 ch, 1/2), layer1 (64, 1/4), layer2 (128, 1/8); layer3 (256, 1/16) is the
    bottleneck. After construction ``encoder_weights_used`` is "imagenet" or "random" and
    ``encoder_weights_reason`` says why.
    """

    def __init__(self, *, out_channels: int = 2, encoder_weights: str | None = None, in_channels: int = 1,
                 decoder_channels: tuple[int, int, int, int] | list[int] = (128, 64, 64, 32),
                 final_activation: str = "tanh", factor: int = 1):
        super().__init__()
        self.factor = pool_factor("factor", factor)
        self.input_multiple = STRIDE * self.factor
        if encoder_weights not in (None, "imagenet"):
            raise ValueError(f"encoder_weights={encoder_weights!r}; use 'imagenet' or None")
        self.in_channels, self.out_channels = in_channels, out_channels
        net = ResNet18()
        self.encoder_weights_used, self.encoder_weights_reason = "random", "not requested"
        if encoder_weights == "imagenet":
            self.encoder_weights_used, self.encoder_weights_reason = load_imagenet(
                net, "ResNet18_Weights.IMAGENET1K_V1", "encoder")
        if in_channels != 3:
            net.conv1 = adapt_conv1(net.conv1, in_channels)
        self.stem = nn.Sequential(net.conv1, net.bn1, net.relu)        # 1/2, 64
        self.pool, self.layer1 = net.maxpool, net.layer1                # 1/4, 64
        self.layer2, self.layer3 = net.layer2, net.layer3               # 1/8, 128; 1/16, 256
        c3, c2, c1, c0 = decoder_channels
        self.up3 = UpBlock(256, 128, c3)           # -> 1/8
        self.up2 = UpBlock(c3, 64, c2)             # -> 1/4
        self.up1 = UpBlock(c2, 64, c1)             # -> 1/2
        self.up0 = UpBlock(c1, in_channels, c0)    # -> 1/1, skip from the input itself
        if final_activation not in ("tanh", "none"):
            raise ValueError(f"final_activation={final_activation!r}; use tanh or none (logits)")
        act = nn.Tanh() if final_activation == "tanh" else nn.Identity()
        self.head = nn.Sequential(nn.Conv2d(c0, out_channels, 3, padding=1), act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        m = self.input_multiple
        if h % m or w % m:  # not an assert: `python -O` drops those
            raise ValueError(f"ResNet18UNet needs H and W divisible by {m}, got H={h}, W={w}; "
                             "pad or crop the input")
        if self.factor > 1:
            return upsample_to(self.body(F.avg_pool2d(x, self.factor)), (h, w))
        return self.body(x)

    def body(self, x: torch.Tensor) -> torch.Tensor:
        """The U-Net at the resolution it is given (the pooled input when ``factor`` > 1)."""
        s1 = self.stem(x)
        s2 = self.layer1(self.pool(s1))
        s3 = self.layer2(s2)
        b = self.layer3(s3)
        d = self.up1(self.up2(self.up3(b, s3), s2), s1)
        return self.head(self.up0(d, x))
