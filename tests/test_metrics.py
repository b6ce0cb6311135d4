"""Metric maths against hand-computed values and scikit-image."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from skimage.color import rgb2lab
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from pipeline import metrics
from pipeline.colorizer import grey_baseline

COLOUR_KEYS = {"rgb_l1", "rgb_l1_r", "rgb_l1_g", "rgb_l1_b", "rgb_l2", "rgb_l2_r", "rgb_l2_g", "rgb_l2_b",
               "lab_l1_l", "lab_l1_a", "lab_l1_b", "lab_l2_l", "lab_l2_a", "lab_l2_b", "ab_l1", "ab_l2",
               "psnr", "ssim", "colourfulness"}


def _pair(n=3, h=32, w=40, noise=40.0, seed=0):
    """Truth: smooth random images on 0-255; prediction: truth plus noise, clipped."""
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(n, 3, h // 8, w // 8, generator=g)
    truth = torch.nn.functional.interpolate(base, size=(h, w), mode="bilinear") * 255.0
    pred = (truth + noise * torch.randn(n, 3, h, w, generator=g)).clamp(0, 255)
    return pred.double(), truth.double()


def test_l1_l2_per_channel_hand_values():
    target = torch.zeros(2, 3, 4, 4)
    pred = torch.zeros(2, 3, 4, 4)
    pred[:, 0] = 2.0                 # R off by 2 everywhere
    pred[:, 1, :2] = -4.0            # G off by 4 on half the pixels
    l1, l2 = metrics.l1_per_channel(pred, target), metrics.l2_per_channel(pred, target)
    assert l1.shape == (2, 3) and l1.dtype == torch.float64
    assert torch.allclose(l1[0], torch.tensor([2.0, 2.0, 0.0], dtype=torch.float64))
    assert torch.allclose(l2[0], torch.tensor([4.0, 8.0, 0.0], dtype=torch.float64))


def test_shape_mismatch_is_rejected():
    with pytest.raises(ValueError, match="one shape"):
        metrics.l1_per_channel(torch.zeros(1, 3, 4, 4), torch.zeros(1, 3, 4, 5))


def test_psnr_hand_value_and_skimage():
    target = torch.zeros(1, 3, 8, 8)
    assert metrics.psnr(target + 1.0, target).item() == pytest.approx(10 * math.log10(255**2))
    pred, truth = _pair()
    ours = metrics.psnr(pred, truth, 255.0)
    for i in range(len(pred)):
        ref = peak_signal_noise_ratio(truth[i].numpy(), pred[i].numpy(), data_range=255)
        assert ours[i].item() == pytest.approx(ref, abs=1e-6)


def test_psnr_identical_is_inf_unless_floored():
    x = torch.rand(2, 3, 8, 8) * 255
    assert torch.isinf(metrics.psnr(x, x)).all()
    floored = metrics.psnr(x, x, 255.0, metrics.MIN_MSE)
    assert torch.allclose(floored, torch.full((2,), 10 * math.log10(255**2 / 1e-10), dtype=torch.float64))


@pytest.mark.parametrize("shape,noise", [((2, 32, 32), 40.0), ((1, 48, 40), 10.0), ((2, 11, 13), 80.0)])
def test_ssim_matches_skimage(shape, noise):
    n, h, w = shape
    pred, truth = _pair(n, h, w, noise, seed=h)
    ours = metrics.ssim(pred, truth, 255.0)
    for i in range(n):
        ref = structural_similarity(truth[i].numpy(), pred[i].numpy(), gaussian_weights=True, sigma=1.5,
                                    use_sample_covariance=False, data_range=255, channel_axis=0)
        assert abs(ours[i].item() - ref) < 1e-3
        assert abs(ours[i].item() - ref) < 1e-9  # in fact exact up to round-off


def test_ssim_identical_is_one_and_small_images_rejected():
    x = torch.rand(2, 3, 16, 16) * 255
    assert torch.allclose(metrics.ssim(x, x), torch.ones(2, dtype=torch.float64))
    with pytest.raises(ValueError, match="at least 11 px"):
        metrics.ssim(torch.zeros(1, 3, 10, 32), torch.zeros(1, 3, 10, 32))


def test_gaussian_kernel_is_scipys_11_tap_window():
    from scipy.ndimage import gaussian_filter1d

    k = metrics.gaussian_kernel1d(1.5)
    impulse = np.zeros(21)
    impulse[10] = 1.0
    ref = gaussian_filter1d(impulse, 1.5, truncate=3.5)[5:16]
    assert k.numel() == 11 and np.allclose(k.numpy(), ref, atol=1e-12)


def test_colourfulness_hand_value_and_grey():
    img = torch.zeros(1, 3, 2, 2)
    img[0, 0, 0, :] = 255.0           # top row pure red, bottom row black
    # rg = [255, 255, 0, 0]: mean 127.5, std 127.5; yb = [127.5, 127.5, 0, 0]: mean 63.75, std 63.75
    expected = 1.3 * math.hypot(127.5, 63.75)
    assert metrics.colourfulness(img).item() == pytest.approx(expected)
    grey = torch.full((2, 3, 4, 4), 77.0)
    assert torch.allclose(metrics.colourfulness(grey), torch.zeros(2, dtype=torch.float64))


def test_colorization_tile_metrics_of_grey_baseline_against_skimage_lab():
    g = torch.Generator().manual_seed(3)
    truth = torch.rand(2, 3, 16, 16, generator=g)
    truth = (truth * 255).round() / 255
    pred = grey_baseline(truth)
    m = metrics.colorization_tile_metrics(pred, truth)
    assert set(m) == COLOUR_KEYS and all(v.shape == (2,) for v in m.values())
    lab_t = np.stack([rgb2lab(t.permute(1, 2, 0).numpy()) for t in truth])          # (N, H, W, 3)
    lab_p = np.stack([rgb2lab(p.permute(1, 2, 0).numpy()) for p in pred])
    ref_ab_l1 = np.abs(lab_p[..., 1:] - lab_t[..., 1:]).mean(axis=(1, 2, 3))
    assert np.allclose(m["ab_l1"].numpy(), ref_ab_l1, rtol=1e-3)
    ref_rgb_l1 = (np.abs(pred.double().numpy() - truth.double().numpy()) * 255).mean(axis=(1, 2, 3))
    assert np.allclose(m["rgb_l1"].numpy(), ref_rgb_l1, rtol=1e-9)
    assert torch.allclose(m["rgb_l2"], (m["rgb_l2_r"] + m["rgb_l2_g"] + m["rgb_l2_b"]) / 3)
    assert torch.allclose(m["ab_l2"], (m["lab_l2_a"] + m["lab_l2_b"]) / 2)
    assert (m["lab_l1_l"] < 0.05).all()                     # the grey baseline keeps L
    assert (m["colourfulness"] < 0.05).all()                 # and no colour (float32 round-off)


def test_perfect_prediction_scores_perfectly():
    truth = torch.rand(2, 3, 16, 16)
    m = metrics.colorization_tile_metrics(truth.clone(), truth)
    assert all(m[k].abs().max() < 1e-9 for k in COLOUR_KEYS if "_l1" in k or "_l2" in k)
    assert torch.allclose(m["ssim"], torch.ones(2, dtype=torch.float64))
    assert (m["psnr"] > 140).all()


def test_mean_over_tiles_and_non_finite():
    a = {"x": torch.tensor([1.0, 2.0], dtype=torch.float64)}
    b = {"x": torch.tensor([6.0], dtype=torch.float64)}
    assert metrics.mean_over_tiles([a, b]) == {"x": 3.0}
    with pytest.raises(ValueError, match="non-finite"):
        metrics.mean_over_tiles([{"x": torch.tensor([float("nan")])}])
