"""Colorization as classification over quantized a*b bins (Zhang, Isola & Efros, ECCV 2016).

"Colorful Image Colorization", https://arxiv.org/abs/1603.08511. Instead of regressing a*b (which
averages multimodal colours into grey-brown), the network predicts, per pixel, a distribution over Q
a*b bins (section 2.1):

- ``ab_bins``: the bin centres, a grid of side 10 on the a*b plane, kept where sRGB colours fall.
- ``soft_encode``: the target Z, the k = 5 nearest bins weighted by a Gaussian (sigma 5) of distance.
- ``empirical_prior`` / ``rebalance_weights``: class rebalancing (eq. 3-4); rare, saturated colours get
  larger weights so the loss is not dominated by the desaturated mass of natural images.
- ``class_loss``: the rebalanced multinomial cross-entropy (eq. 2).
- ``annealed_mean``: the point estimate H(Z), the mean of the distribution sharpened by temperature
  T = 0.38 (eq. 5): between the mean (T = 1, desaturated) and the mode (T -> 0, patchy).
- ``colourfulness_loss``: not Zhang's; a differentiable Hasler & Suesstrunk colourfulness gap, to
  penalise washed-out outputs directly.

Conventions: a*b in CIE units (roughly [-110, 110]), not the network's a*b / 110 of
``pipeline.color.normalize_ab``; images (N, C, H, W); bin axis at dim 1 of logits, (N, Q, H, W). Every
function is a pure tensor function (no loops over pixels) that runs on the inputs' device; centres are
moved there. Targets and logits must share a resolution (Zhang predicts at 1/4 and downsamples a*b).
Distance computations hold a transient (N, Q, H, W) float32 tensor, the size of the logits.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable

import torch

from pipeline import color

RGB_STEP = 3  # sample the sRGB cube at every 3rd 8-bit level: 0, 3, ..., 255 (86^3 colours)
_CHUNK = 1 << 16


def ab_bins(grid: float = 10.0, limit: float = 110.0) -> torch.Tensor:
    """In-gamut a*b bin centres, (Q, 2) float32 on CPU, sorted by a then b.

    Cells of side ``grid`` centred at multiples of ``grid`` (edges at odd multiples of grid / 2); a
    cell is kept when at least one sRGB colour falls into it and its centre lies in
    [-limit, limit]^2. Membership comes from the 86^3 8-bit colours with every channel a multiple of
    3 (0 and 255 included): that gives the same 261 cells as all 256^3 colours at grid 10.

    Q = 261 at the defaults, not Zhang's 313: his list (pts_in_hull.npy) is a strict superset of
    these cells; its 52 extra cells sit on the gamut's border and no 8-bit sRGB colour falls into
    them, e.g. (100, 0), (90, 70), (-90, 90); his own gamut test evidently had a margin. Cached: a
    fresh copy per call.
    """
    return _ab_bins(float(grid), float(limit)).clone()


@functools.lru_cache(maxsize=4)
def _ab_bins(grid: float, limit: float) -> torch.Tensor:
    levels = torch.arange(0, 256, RGB_STEP, dtype=torch.float32) / 255.0
    rgb = torch.cartesian_prod(levels, levels, levels).T.reshape(1, 3, -1, 1)
    ab = torch.cat([color.rgb_to_lab(c)[0, 1:, :, 0] for c in rgb.split(_CHUNK, dim=2)], dim=1).T
    cells = torch.unique(torch.floor(ab / grid + 0.5).long(), dim=0)
    centres = cells.float() * grid
    return centres[(centres.abs() <= limit).all(dim=1)]


def _check_ab(ab: torch.Tensor) -> None:
    if ab.dim() != 4 or ab.shape[1] != 2:
        raise ValueError(f"expected a*b as (N, 2, H, W), got {tuple(ab.shape)}")


def _sq_dist(ab: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """Squared distances (N, Q, H, W) in float32 from a*b (N, 2, H, W) to centres (Q, 2).

    Per-coordinate differences rather than |x|^2 - 2 x.c + |c|^2, which loses ~1e-3 to cancellation
    in float32 and would break ties (a point midway between two centres) arbitrarily.
    """
    _check_ab(ab)
    c = centres.to(device=ab.device, dtype=torch.float32)[:, :, None, None]  # (Q, 2, 1, 1)
    x = ab.float()
    return (x[:, 0:1] - c[:, 0]).square() + (x[:, 1:2] - c[:, 1]).square()


def nearest_bin(ab: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """Hard assignment: index of the nearest centre (Euclidean) per pixel, (N, H, W) int64.

    Ties go to the lower index.
    """
    return _sq_dist(ab, centres).argmin(dim=1)


def soft_encode(ab: torch.Tensor, centres: torch.Tensor, k: int = 5,
                sigma: float = 5.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Zhang's soft target: the k nearest centres and their weights, each (N, k, H, W).

    Weights are proportional to exp(-d^2 / (2 sigma^2)) over those k and sum to 1 per pixel. Indices
    (int64) are sorted by distance, so ``idx[:, 0]`` is the nearest bin. k is capped at Q. Sparse on
    purpose: the dense (N, Q, H, W) target is never built.
    """
    d2 = _sq_dist(ab, centres)
    d2k, idx = d2.topk(min(k, d2.shape[1]), dim=1, largest=False, sorted=True)
    return idx, torch.softmax(-d2k / (2.0 * sigma**2), dim=1)


def empirical_prior(batches: torch.Tensor | Iterable[torch.Tensor], centres: torch.Tensor,
                    sigma: float = 5.0) -> torch.Tensor:
    """Smoothed distribution of the nearest bins over all pixels of a training set, (Q,) float64.

    ``batches``: one a*b tensor (N, 2, H, W) or an iterable of them (streamed, so a large set never
    sits in memory at once). The hard-assigned histogram p is smoothed over the bin centres,
    p_s[q] ∝ sum_r p[r] exp(-|c_q - c_r|^2 / (2 sigma^2)), and renormalised; ``sigma`` <= 0 skips
    smoothing. Zhang smoothed on the full 2-D grid and then kept the in-gamut cells; over centres no
    mass leaks out of gamut, otherwise the two agree away from the gamut's border.
    Returned on the centres' device.
    """
    if isinstance(batches, torch.Tensor):
        batches = [batches]
    c = centres.double()
    counts = torch.zeros(len(c), dtype=torch.float64, device=c.device)
    for ab in batches:
        bins = nearest_bin(ab, centres).flatten().to(c.device)
        counts += torch.bincount(bins, minlength=len(c)).double()
    if counts.sum() == 0:
        raise ValueError("empirical_prior got no pixels")
    p = counts / counts.sum()
    if sigma > 0:
        p = torch.exp(-torch.cdist(c, c).square() / (2.0 * sigma**2)) @ p
    return p / p.sum()


def rebalance_weights(prior: torch.Tensor, lam: float = 0.5) -> torch.Tensor:
    """Zhang's class-rebalancing weights (eq. 4), (Q,) in the prior's dtype.

    w ∝ ((1 - lam) p + lam / Q)^-1, scaled so that sum_q p_q w_q = 1 (the expected weight of a
    pixel drawn from the prior is 1). lam = 0.5 in the paper; a uniform prior gives all ones.
    """
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"lam must be in [0, 1], got {lam}")
    mix = (1.0 - lam) * prior + lam / prior.numel()
    if (mix <= 0).any():
        raise ValueError("zero-probability bins need lam > 0 (or a smoothed prior)")
    w = 1.0 / mix
    return w / (prior * w).sum()


def class_loss(logits: torch.Tensor, ab_true: torch.Tensor, centres: torch.Tensor,
               weights: torch.Tensor | None = None, k: int = 5, sigma: float = 5.0) -> torch.Tensor:
    """Rebalanced multinomial cross-entropy (Zhang eq. 2), a float32 scalar.

    logits (N, Q, H, W) (any float dtype; log-softmax taken in float32), ab_true (N, 2, H, W) in CIE
    units at the logits' resolution. Per pixel CE = -sum_k w_k log softmax(logits)[idx_k] against
    ``soft_encode(ab_true, centres, k, sigma)``, times v = weights[nearest bin] (Zhang's v(Z), the
    weight of the soft target's argmax bin; 1 when ``weights`` is None). Returns the plain mean of
    v * CE over all pixels (not divided by sum v), so the scale follows the prior's mean weight of 1.
    """
    if logits.dim() != 4 or logits.shape[1] != len(centres) or logits.shape[-2:] != ab_true.shape[-2:]:
        raise ValueError(f"logits {tuple(logits.shape)} do not fit a*b {tuple(ab_true.shape)} "
                         f"and {len(centres)} bins")
    with torch.no_grad():
        idx, w = soft_encode(ab_true, centres, k, sigma)
    logp = torch.log_softmax(logits.float(), dim=1)
    ce = -(w * logp.gather(1, idx)).sum(dim=1)
    if weights is not None:
        ce = ce * weights.to(ce)[idx[:, 0]]
    return ce.mean()


CHUNK_ELEMENTS = 1 << 24  # inference decodes at most this many logits at once (64 MiB of float32)


def annealed_mean(logits: torch.Tensor, centres: torch.Tensor, T: float = 0.38) -> torch.Tensor:
    """Zhang's point estimate H(Z) (eq. 5): a*b (N, 2, H, W) float32 in CIE units.

    f_T(z) = exp(log z / T) / sum_q exp(log z_q / T) with z = softmax(logits) is softmax(logits / T);
    the output is its expectation of the centres. T = 1: the mean; T = 0: the centre of the argmax
    (the mode), taken explicitly. Differentiable for T > 0. Logits that need no gradient are decoded
    in row blocks of at most ``CHUNK_ELEMENTS`` (the same numbers, bounded temporaries).
    """
    if T < 0:
        raise ValueError(f"temperature must be >= 0, got {T}")
    c = centres.to(device=logits.device, dtype=torch.float32)
    if T == 0:
        return c[logits.argmax(dim=1)].permute(0, 3, 1, 2)
    n, q, h, w = logits.shape
    rows = h if logits.requires_grad else max(1, CHUNK_ELEMENTS // max(1, n * q * w))
    if rows >= h:
        return torch.einsum("nqhw,qc->nchw", torch.softmax(logits.float() / T, dim=1), c)
    # Inference: a few rows at a time, so the float32 temporaries (each as big as the logits, Q
    # channels) stay small; every pixel's softmax is its own, so the result is the same.
    out = logits.new_empty((n, 2, h, w), dtype=torch.float32)
    for y in range(0, h, rows):
        part = torch.softmax(logits[:, :, y:y + rows].float() / T, dim=1)
        out[:, :, y:y + rows] = torch.einsum("nqhw,qc->nchw", part, c)
    return out


def colourfulness_loss(pred_rgb: torch.Tensor, true_rgb: torch.Tensor, scale: float = 100.0,
                       eps: float = 1e-6) -> torch.Tensor:
    """Mean over images of |M(pred) - M(true)| / scale, a differentiable float32 scalar.

    RGB (N, 3, H, W) in [0, 1]; M is the Hasler & Suesstrunk colourfulness of the image on the 0-255
    scale, as ``pipeline.metrics.colourfulness``: rg = R - G, yb = (R + G) / 2 - B,
    M = sqrt(var rg + var yb) + 0.3 sqrt(mean rg^2 + mean yb^2) (population variance). ``eps`` inside
    each sqrt keeps gradients finite for grey images (it shifts M by at most sqrt(eps) each).
    ``scale`` 100: vivid photos score ~100, so the term is O(1).
    """
    if pred_rgb.shape != true_rgb.shape or pred_rgb.dim() != 4 or pred_rgb.shape[1] != 3:
        raise ValueError(f"expected two RGB batches (N, 3, H, W), got {tuple(pred_rgb.shape)} "
                         f"and {tuple(true_rgb.shape)}")

    def m(rgb: torch.Tensor) -> torch.Tensor:
        r, g, b = (rgb.float() * 255.0).flatten(2).unbind(1)
        rg, yb = r - g, 0.5 * (r + g) - b
        sd = torch.sqrt(rg.var(dim=1, unbiased=False) + yb.var(dim=1, unbiased=False) + eps)
        return sd + 0.3 * torch.sqrt(rg.mean(dim=1).square() + yb.mean(dim=1).square() + eps)

    return ((m(pred_rgb) - m(true_rgb)).abs() / scale).mean()
