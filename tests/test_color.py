"""pipeline.color against scikit-image (the reference), and the colorizer's pair contract."""

import warnings

import numpy as np
import pytest
import torch
from skimage import color as skcolor

from pipeline import color, colorizer


def _random_rgb(seed: int, shape=(4, 3, 24, 20)) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    rgb = torch.rand(shape, generator=g)
    rgb[0, :, :4] = 0.0           # pure black rows, and values near the sRGB/Lab knees
    rgb[0, :, 4:8] = 1.0
    rgb[1, :, :4] = 0.04045
    rgb[1, :, 4:8] = torch.rand(3, 4, rgb.shape[-1], generator=g) * 0.01
    return rgb


def _sk(fn, t: torch.Tensor) -> np.ndarray:
    """Apply a skimage channel-last colour function to (N, 3, H, W) float64, back to channel-first."""
    out = fn(t.double().permute(0, 2, 3, 1).numpy())
    return np.moveaxis(out, -1, 1)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_rgb_to_lab_matches_skimage(seed):
    rgb = _random_rgb(seed)
    ours = color.rgb_to_lab(rgb).numpy()
    ref = _sk(skcolor.rgb2lab, rgb)
    assert np.abs(ours - ref).max() < 1e-3


def test_rgb_to_lab_unbatched_and_dtype():
    rgb = _random_rgb(3)[0]
    lab = color.rgb_to_lab(rgb.half())
    assert lab.shape == (3, 24, 20) and lab.dtype == torch.float32
    assert np.abs(color.rgb_to_lab(rgb).numpy() - _sk(skcolor.rgb2lab, rgb[None])[0]).max() < 1e-3


@pytest.mark.parametrize("seed", [0, 1])
def test_lab_to_rgb_matches_skimage_including_out_of_gamut(seed):
    g = torch.Generator().manual_seed(seed)
    lab = torch.empty(3, 3, 16, 16)
    lab[:, 0] = torch.rand(3, 16, 16, generator=g) * 100
    lab[:, 1:] = (torch.rand(3, 2, 16, 16, generator=g) * 2 - 1) * 110   # the whole network range
    ours = color.lab_to_rgb(lab).numpy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # skimage warns about the clipped negative Z values
        ref = _sk(skcolor.lab2rgb, lab)
    assert np.abs(ours - ref).max() < 1e-3
    assert ours.min() >= 0 and ours.max() <= 1


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_rgb_lab_round_trip(seed):
    rgb = _random_rgb(seed)
    back = color.lab_to_rgb(color.rgb_to_lab(rgb))
    assert (back - rgb).abs().max() < 1e-4


def test_grey_has_zero_ab_and_normalisation_range():
    grey = torch.linspace(0, 1, 50).view(1, 1, 1, 50).expand(1, 3, 2, 50)
    lab = color.rgb_to_lab(grey)
    # Not exactly 0: the rounded sRGB matrix and D65 white disagree in the 4th digit (so does skimage).
    assert lab[:, 1:].abs().max() < 1e-2
    x = color.normalize_l(lab[:, :1])
    assert x.min() >= -1 - 1e-6 and x.max() <= 1 + 1e-6
    assert torch.allclose(color.denormalize_l(x), lab[:, :1], atol=1e-5)


@pytest.mark.parametrize("space,channels", [("lab", 2), ("rgb", 3)])
def test_make_pair_and_to_rgb_invert(space, channels):
    rgb = _random_rgb(4)
    x, y = colorizer.make_pair(rgb, space)
    assert x.shape == (4, 1, 24, 20) and y.shape == (4, channels, 24, 20)
    assert x.abs().max() <= 1 + 1e-6 and y.abs().max() <= 1 + 1e-6
    assert (colorizer.to_rgb(x, y, space) - rgb).abs().max() < 1e-4
