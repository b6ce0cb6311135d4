"""The colour-space contract between images and colorization generators.

``lab``: input = L normalised to [-1, 1] (1 channel), target/output = a*b / 110 (2 channels).
``rgb``: input = L normalised to [-1, 1] (1 channel), target/output = RGB * 2 - 1 (3 channels).
Both take the same grey input (CIE L), so models in either space see identical inputs.
"""

from __future__ import annotations

import torch

from pipeline import color


def make_pair(rgb: torch.Tensor, color_space: str) -> tuple[torch.Tensor, torch.Tensor]:
    """RGB batch in [0, 1] (N, 3, H, W) -> (network input, network target), float32."""
    lab = color.rgb_to_lab(rgb)
    x = color.normalize_l(lab[:, :1])
    if color_space == "lab":
        return x, color.normalize_ab(lab[:, 1:])
    if color_space == "rgb":
        return x, rgb.float() * 2 - 1
    raise ValueError(f"unknown color_space {color_space!r}")


def to_rgb(x: torch.Tensor, out: torch.Tensor, color_space: str) -> torch.Tensor:
    """(network input, network output) -> RGB in [0, 1]."""
    out = out.float()
    if color_space == "lab":
        lab = torch.cat([color.denormalize_l(x.float()), color.denormalize_ab(out)], dim=1)
        return color.lab_to_rgb(lab)
    if color_space == "rgb":
        return ((out + 1) / 2).clamp(0, 1)
    raise ValueError(f"unknown color_space {color_space!r}")


@torch.no_grad()
def colorize_batch(model: torch.nn.Module, rgb: torch.Tensor, color_space: str) -> torch.Tensor:
    """Colorize the grey version of an RGB batch in [0, 1]; returns RGB in [0, 1] on the same device."""
    x, _ = make_pair(rgb, color_space)
    return to_rgb(x, model(x), color_space)


def grey_baseline(rgb: torch.Tensor) -> torch.Tensor:
    """The do-nothing colorizer: keep L, set a*b = 0 (the grey input shown as RGB)."""
    lab = color.rgb_to_lab(rgb)
    lab[:, 1:] = 0
    return color.lab_to_rgb(lab)
