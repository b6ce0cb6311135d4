"""sRGB <-> CIE L*a*b* (D65) on tensors, so the conversion runs inside the training step, on the GPU.

Matches ``skimage.color.rgb2lab``/``lab2rgb`` (illuminant D65, 2 degree observer). Tensors are
(N, 3, H, W) or (3, H, W); RGB in [0, 1]; L in [0, 100], a*b roughly in [-110, 110].
Network convention (pix2pix colorization): L -> L/50 - 1 in [-1, 1], a*b -> a*b / 110.
"""

from __future__ import annotations

import torch

_RGB2XYZ = torch.tensor([[0.412453, 0.357580, 0.180423],
                         [0.212671, 0.715160, 0.072169],
                         [0.019334, 0.119193, 0.950227]])
_WHITE_D65 = torch.tensor([0.95047, 1.0, 1.08883])
AB_SCALE = 110.0


def _mix(m: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Apply a 3x3 matrix over the channel axis (dim -3)."""
    return torch.einsum("ij,...jhw->...ihw", m.to(x), x)


def _shape(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return v.to(x).view(3, 1, 1)


def rgb_to_lab(rgb: torch.Tensor) -> torch.Tensor:
    """sRGB in [0, 1] -> L*a*b*. Computed in float32 whatever the input dtype."""
    x = rgb.float().clamp(0, 1)
    lin = torch.where(x > 0.04045, ((x + 0.055) / 1.055) ** 2.4, x / 12.92)
    xyz = _mix(_RGB2XYZ, lin) / _shape(_WHITE_D65, lin)
    eps = 0.008856
    f = torch.where(xyz > eps, xyz.clamp_min(eps) ** (1 / 3), 7.787 * xyz + 16 / 116)
    fx, fy, fz = f.unbind(-3)
    L = torch.where(xyz[..., 1, :, :] > eps, 116 * fy - 16, 903.3 * xyz[..., 1, :, :])
    return torch.stack([L, 500 * (fx - fy), 200 * (fy - fz)], dim=-3)


def lab_to_rgb(lab: torch.Tensor) -> torch.Tensor:
    """L*a*b* -> sRGB in [0, 1] (out-of-gamut values clipped, as skimage does)."""
    lab = lab.float()
    L, a, b = lab.unbind(-3)
    fy = (L + 16) / 116
    # z's f is clipped at 0 as skimage does: strongly yellow a*b (b >> L) would otherwise go negative
    f = torch.stack([fy + a / 500, fy, (fy - b / 200).clamp_min(0)], dim=-3)
    xyz = torch.where(f > 0.2068966, f ** 3, (f - 16 / 116) / 7.787)
    xyz = xyz * _shape(_WHITE_D65, xyz)
    lin = _mix(torch.linalg.inv(_RGB2XYZ.double()).float(), xyz).clamp_min(0)
    rgb = torch.where(lin > 0.0031308, 1.055 * lin.clamp_min(1e-12) ** (1 / 2.4) - 0.055, 12.92 * lin)
    return rgb.clamp(0, 1)


def rgb_to_gray(rgb: torch.Tensor) -> torch.Tensor:
    """Luma (ITU-R 601-2, as PIL's ``convert('L')``), keeping a channel axis of size 1."""
    w = torch.tensor([0.299, 0.587, 0.114]).to(rgb).view(3, 1, 1)
    return (rgb * w).sum(-3, keepdim=True)


def normalize_l(L: torch.Tensor) -> torch.Tensor:
    return L / 50.0 - 1.0


def denormalize_l(x: torch.Tensor) -> torch.Tensor:
    return (x + 1.0) * 50.0


def normalize_ab(ab: torch.Tensor) -> torch.Tensor:
    return ab / AB_SCALE


def denormalize_ab(x: torch.Tensor) -> torch.Tensor:
    return x * AB_SCALE
