"""Fréchet Inception Distance, pytorch-fid style: activations -> (mu, sigma) -> Fréchet distance.

Features come from pytorch-fid's ``InceptionV3`` (the TF-ported FID weights, fetched by its own
loader into the torch hub cache; offline, a cached copy is used and a missing one makes FID
unavailable, never a crash). Images go in as RGB in [0, 1]; pytorch-fid resizes them to 299 x 299
with bilinear interpolation (``F.interpolate(..., align_corners=False)``) and scales to [-1, 1].
Inception features were learnt on ImageNet photos: they are untested on astronomical images.
The Fréchet distance is our own float64 torch code (symmetric PSD square roots via ``eigh``).
"""

from __future__ import annotations

import torch
from torch import nn


class FIDUnavailable(RuntimeError):
    """FID cannot be computed; the message is the one-line reason recorded in the metrics."""


def fid_blocker(n_images: int, dims: int) -> str | None:
    """Why FID cannot be estimated from ``n_images`` per side at ``dims`` features, or None if it can.

    A covariance of n samples has rank <= n - 1, so n <= dims gives a singular, meaningless estimate.
    """
    from pytorch_fid.inception import InceptionV3

    if dims not in InceptionV3.BLOCK_INDEX_BY_DIM:
        return f"evaluate.fid_dims = {dims} is not an Inception block size; use 64, 192, 768 or 2048"
    if n_images <= dims:
        return (f"{n_images} tiles <= {dims} dims: the covariance would be rank-deficient; add test "
                "tiles or set evaluate.fid_dims to 64, 192 or 768")
    return None


def inception(dims: int, device: torch.device | str = "cpu") -> nn.Module:
    """pytorch-fid's InceptionV3 returning the ``dims``-feature block, in eval mode on ``device``.

    Raises FIDUnavailable("Inception weights unavailable offline: <short error>") when its loader
    cannot get the weights (no cache, no network).
    """
    from pytorch_fid.inception import InceptionV3

    block = InceptionV3.BLOCK_INDEX_BY_DIM[dims]
    try:
        model = InceptionV3([block])
    except Exception as e:  # urllib, hub-cache and state-dict errors alike mean "no weights"
        short = " ".join(str(e).split())[:160] or type(e).__name__
        raise FIDUnavailable(f"Inception weights unavailable offline: {short}") from None
    return model.to(device).eval()


@torch.no_grad()
def activations(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Pooled Inception features of an RGB batch in [0, 1], (N, 3, H, W) -> (N, dims) float64 on CPU.

    Blocks below the last one are spatial maps; they are average-pooled to one vector per image,
    as pytorch-fid does for every block.
    """
    feats = model(images.float())[0]
    if feats.shape[-2:] != (1, 1):
        feats = nn.functional.adaptive_avg_pool2d(feats, (1, 1))
    return feats.flatten(1).double().cpu()


def statistics(acts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean (D,) and unbiased covariance (D, D) of activations (N, D), float64 (``np.cov(rowvar=False)``)."""
    a = acts.double()
    if a.dim() != 2 or a.shape[0] < 2:
        raise ValueError(f"need activations (N >= 2, D), got {tuple(a.shape)}")
    mu = a.mean(dim=0)
    centred = a - mu
    return mu, centred.T @ centred / (a.shape[0] - 1)


def sqrtm_psd(m: torch.Tensor) -> torch.Tensor:
    """Square root of a symmetric positive semi-definite matrix; negative round-off eigenvalues -> 0."""
    m = 0.5 * (m + m.T)  # symmetrise away round-off so eigh sees a symmetric matrix
    w, v = torch.linalg.eigh(m)
    return (v * w.clamp_min(0).sqrt()) @ v.T


def frechet_distance(mu1: torch.Tensor, sigma1: torch.Tensor, mu2: torch.Tensor,
                     sigma2: torch.Tensor) -> float:
    """d^2 = |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr(sqrt(S1 S2)), computed in float64.

    tr(sqrt(S1 S2)) = tr(sqrt(sqrt(S1) S2 sqrt(S1))): the latter matrix is symmetric PSD, so its
    root comes from ``eigh`` with eigenvalues clamped at 0: no complex parts, no singular blow-ups.
    """
    mu1, mu2 = mu1.double(), mu2.double()
    s1, s2 = sigma1.double(), sigma2.double()
    if mu1.shape != mu2.shape or s1.shape != s2.shape:
        raise ValueError(f"statistics differ in shape: {tuple(mu1.shape)}/{tuple(s1.shape)} vs "
                         f"{tuple(mu2.shape)}/{tuple(s2.shape)}")
    r1 = sqrtm_psd(s1)
    inner = r1 @ s2 @ r1
    w = torch.linalg.eigvalsh(0.5 * (inner + inner.T)).clamp_min(0)
    diff = mu1 - mu2
    return float(diff @ diff + s1.trace() + s2.trace() - 2 * w.sqrt().sum())


def fid_from_activations(acts1: torch.Tensor, acts2: torch.Tensor) -> float:
    """FID between two sets of activations (N1, D) and (N2, D)."""
    return frechet_distance(*statistics(acts1), *statistics(acts2))


def fid_model(n: int, dims: int, device: torch.device) -> tuple[torch.nn.Module | None, str | None]:
    """Inception for FID, or (None, reason). The tile count is checked first: it needs no download."""
    reason = fid_blocker(n, dims)
    if reason is None:
        try:
            return inception(dims, device), None
        except FIDUnavailable as e:
            reason = str(e)
    print(f"FID skipped: {reason}")
    return None, reason
