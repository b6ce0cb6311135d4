"""FID: our Fréchet distance against pytorch-fid, the feature path with random weights, offline path."""

from __future__ import annotations

import urllib.error

import numpy as np
import pytest
import torch
from pytorch_fid import inception as pf_inception
from pytorch_fid.fid_score import calculate_frechet_distance

from pipeline import fid


def _random_stats(d: int, n: int, seed: int, shift: float = 0.0):
    g = np.random.default_rng(seed)
    x = g.normal(size=(n, d)) @ g.normal(size=(d, d)) + shift
    return x.mean(axis=0), np.cov(x, rowvar=False)


def random_fid_state_dict(*_args, **_kwargs) -> dict[str, torch.Tensor]:
    """A randomly initialised state dict of pytorch-fid 0.3.0's FID Inception (its fid_inception_v3)."""
    inc = pf_inception
    net = inc._inception_v3(num_classes=1008, aux_logits=False, weights=None)
    net.Mixed_5b = inc.FIDInceptionA(192, pool_features=32)
    net.Mixed_5c = inc.FIDInceptionA(256, pool_features=64)
    net.Mixed_5d = inc.FIDInceptionA(288, pool_features=64)
    net.Mixed_6b = inc.FIDInceptionC(768, channels_7x7=128)
    net.Mixed_6c = inc.FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6d = inc.FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6e = inc.FIDInceptionC(768, channels_7x7=192)
    net.Mixed_7b = inc.FIDInceptionE_1(1280)
    net.Mixed_7c = inc.FIDInceptionE_2(2048)
    return net.state_dict()


@pytest.fixture(scope="module")
def inception64():
    """pytorch-fid's InceptionV3 (64-d first block) built by its own code, weights random, offline."""
    torch.manual_seed(0)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(pf_inception, "load_state_dict_from_url", random_fid_state_dict)
        return fid.inception(64, "cpu")


@pytest.mark.filterwarnings("ignore:The `disp` argument is deprecated:DeprecationWarning")  # pytorch-fid's
@pytest.mark.parametrize("d,n,shift", [(8, 50, 0.0), (16, 100, 0.7), (32, 20, 2.0)])  # last: rank-deficient
def test_frechet_distance_matches_pytorch_fid(d, n, shift):
    mu1, s1 = _random_stats(d, n, 1)
    mu2, s2 = _random_stats(d, n, 2, shift)
    ref = calculate_frechet_distance(mu1, s1, mu2, s2)
    ours = fid.frechet_distance(*(torch.from_numpy(a) for a in (mu1, s1, mu2, s2)))
    assert ours == pytest.approx(ref, rel=1e-6)
    assert ours > 0


def test_frechet_distance_of_identical_statistics_is_zero():
    mu, s = _random_stats(16, 40, 3)
    t = torch.from_numpy(mu), torch.from_numpy(s)
    assert abs(fid.frechet_distance(*t, *t)) < 1e-8 * float(t[1].trace())


def test_statistics_match_numpy_and_sqrtm_squares_back():
    x = torch.randn(30, 5, dtype=torch.float64)
    mu, sigma = fid.statistics(x)
    assert np.allclose(mu.numpy(), x.numpy().mean(axis=0))
    assert np.allclose(sigma.numpy(), np.cov(x.numpy(), rowvar=False))
    r = fid.sqrtm_psd(sigma)
    assert torch.allclose(r @ r, sigma, atol=1e-10)
    with pytest.raises(ValueError, match="N >= 2"):
        fid.statistics(torch.zeros(1, 5))


def test_fid_blocker_reasons():
    assert fid.fid_blocker(2049, 2048) is None
    reason = fid.fid_blocker(40, 2048)
    assert reason.startswith("40 tiles <= 2048 dims") and "64, 192 or 768" in reason
    assert "not an Inception block size" in fid.fid_blocker(5000, 100)


def test_offline_weights_give_one_line_reason(monkeypatch):
    def offline(*_a, **_k):
        raise urllib.error.URLError("[Errno -2] Name or\nservice not known")

    monkeypatch.setattr(pf_inception, "load_state_dict_from_url", offline)
    with pytest.raises(fid.FIDUnavailable) as err:
        fid.inception(64)
    msg = str(err.value)
    assert msg.startswith("Inception weights unavailable offline: ") and "\n" not in msg
    assert "Name or service not known" in msg


def test_feature_path_with_random_weights(inception64):
    g = torch.Generator().manual_seed(0)
    a = torch.rand(8, 3, 32, 32, generator=g)
    b = (a * 0.3 + 0.6).clamp(0, 1)           # a different image set
    acts_a = fid.activations(inception64, a)
    assert acts_a.shape == (8, 64) and acts_a.dtype == torch.float64
    same = fid.fid_from_activations(acts_a, fid.activations(inception64, a.clone()))
    diff = fid.fid_from_activations(acts_a, fid.activations(inception64, b))
    assert abs(same) < 1e-6 * diff
    assert diff > 0


def test_stage_score_computes_fid_per_predictor(inception64):
    from pipeline.colorizer import grey_baseline
    from pipeline.stages.evaluate import GREY, EvalConfig, score

    g = torch.Generator().manual_seed(1)
    tiles = (torch.rand(6, 3, 32, 32, generator=g) * 255).to(torch.uint8)
    predictors = {GREY: grey_baseline, ("copy", "pretrained"): lambda rgb: rgb.clone()}
    cfg = EvalConfig(batch_size=4, grid_samples=2, fid_dims=64)
    results, grid, truth_colour = score(tiles, predictors, cfg, torch.device("cpu"), inception64)
    assert results[GREY]["fid"] > 0
    assert abs(results[("copy", "pretrained")]["fid"]) < 1e-6 * results[GREY]["fid"]
    assert results[("copy", "pretrained")]["ssim"] == pytest.approx(1.0)
    assert grid[GREY].shape == (2, 3, 32, 32) and truth_colour > 0
