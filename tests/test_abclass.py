"""Zhang et al. 2016 a*b classification against hand-computed values; colourfulness against metrics."""

from __future__ import annotations

import math

import pytest
import torch

from pipeline import abclass, color, metrics

# 1-D-like centres on the a axis, 10 apart: distances, and so the weights below, work out by hand.
LINE = torch.tensor([[0.0, 0.0], [10.0, 0.0], [20.0, 0.0]])


def _ab(*points: tuple[float, float]) -> torch.Tensor:
    """a*b points as a (1, 2, 1, P) image, one pixel per point."""
    return torch.tensor(points, dtype=torch.float32).T.reshape(1, 2, 1, -1)


def _centre_set(centres: torch.Tensor) -> set[tuple[int, int]]:
    return {(int(a), int(b)) for a, b in centres.tolist()}


def test_ab_bins_grid_and_gamut():
    c = abclass.ab_bins()
    assert c.shape[1] == 2 and c.dtype == torch.float32
    # 261 with this sRGB -> Lab (Zhang's 313 add 52 border cells no 8-bit sRGB colour reaches). Exact on
    # purpose: the bins define a classifier's output layer, so any change must be seen.
    assert len(c) == 261
    assert torch.equal(c, (c / 10).round() * 10)                  # centres at multiples of 10
    assert len(_centre_set(c)) == len(c)
    assert c.abs().max() <= 110
    assert c[:, 0].min() == -90 and c[:, 0].max() == 100          # green ... magenta
    assert c[:, 1].min() == -110 and c[:, 1].max() == 90          # blue ... yellow
    kept = _centre_set(c)
    assert (0, 0) in kept
    assert (80, 70) in kept                                       # pure red: a*b = (80.1, 67.2)
    assert (-90, 80) in kept                                      # pure green: (-86.2, 83.2)
    assert (80, -110) in kept                                     # pure blue: (79.2, -107.9)
    for far in [(-110, -110), (110, -110), (110, 110), (-110, 110), (100, 50), (-90, -50)]:
        assert far not in kept


def test_ab_bins_cover_every_srgb_colour_and_are_cached():
    c = abclass.ab_bins()
    rgb = torch.rand(1, 3, 50, 40, generator=torch.Generator().manual_seed(0))
    ab = color.rgb_to_lab(rgb)[:, 1:]
    near = c[abclass.nearest_bin(ab, c)].permute(0, 3, 1, 2)
    assert (ab - near).abs().max() <= 5.0                        # each colour's own cell is kept
    c[0] = 1e6                                                    # a copy: the cache is untouched
    assert abclass.ab_bins()[0, 0] != 1e6
    coarse = abclass.ab_bins(grid=20.0)
    assert torch.equal(coarse, (coarse / 20).round() * 20) and len(coarse) < len(c)


def test_nearest_bin_hand_points():
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    ab = _ab((1, 1), (7, 1), (2, 8), (-50, -50), (30, 2))
    idx = abclass.nearest_bin(ab, centres)
    assert idx.shape == (1, 1, 5) and idx.dtype == torch.int64
    assert idx.flatten().tolist() == [0, 1, 2, 0, 1]


def test_soft_encode_hand_weights():
    idx, w = abclass.soft_encode(_ab((5, 0), (0, 0), (12, 0)), LINE, k=2, sigma=5.0)
    assert idx.shape == w.shape == (1, 2, 1, 3)
    # (5, 0) is midway between centres 0 and 1: equal distances, weights 1/2 each.
    assert set(idx[0, :, 0, 0].tolist()) == {0, 1}
    assert torch.allclose(w[0, :, 0, 0], torch.tensor([0.5, 0.5]))
    # (0, 0): d^2 = 0 and 100, 2 sigma^2 = 50 -> weights 1 : e^-2 -> 1 / (1 + e^-2) = 0.88079708.
    assert idx[0, :, 0, 1].tolist() == [0, 1]
    assert torch.allclose(w[0, :, 0, 1], torch.tensor([0.88079708, 0.11920292]))
    # (12, 0): d^2 = 4 to centre 1, 64 to centre 2 -> e^-0.08 : e^-1.28 -> 1 / (1 + e^-1.2) = 0.76852478.
    assert idx[0, :, 0, 2].tolist() == [1, 2]
    assert torch.allclose(w[0, :, 0, 2], torch.tensor([0.76852478, 0.23147522]))


def test_soft_encode_default_k_sums_to_one_and_caps_k():
    c = abclass.ab_bins()
    ab = (torch.rand(2, 2, 4, 5, generator=torch.Generator().manual_seed(1)) - 0.5) * 120
    idx, w = abclass.soft_encode(ab, c)
    assert idx.shape == (2, 5, 4, 5)
    assert torch.allclose(w.sum(dim=1), torch.ones(2, 4, 5))
    assert torch.equal(idx[:, 0], abclass.nearest_bin(ab, c))
    assert (w[:, :-1] >= w[:, 1:]).all()                          # sorted nearest first
    assert abclass.soft_encode(ab, LINE, k=5)[0].shape[1] == 3    # k capped at Q


def test_empirical_prior_hand_counts_and_streaming():
    # Pixels nearest centre 0: (1, 0), (-2, 1), (3, -1); nearest centre 1: (11, 2). Histogram 3 : 1 : 0.
    ab = _ab((1, 0), (-2, 1), (3, -1), (11, 2))
    p = abclass.empirical_prior(ab, LINE, sigma=1e-3)            # exp(-100 / 2e-6) = 0: no smoothing
    assert torch.allclose(p, torch.tensor([0.75, 0.25, 0.0], dtype=torch.float64))
    streamed = abclass.empirical_prior(iter([ab[..., :1], ab[..., 1:]]), LINE, sigma=0.0)
    assert torch.allclose(streamed, p)
    with pytest.raises(ValueError):
        abclass.empirical_prior([], LINE)


def test_empirical_prior_smoothing_moves_mass_by_hand():
    # Two centres 10 apart, sigma 10: kernel e^(-100 / 200) = e^-0.5 = 0.60653066 between them.
    # All pixels on centre 0: p_smooth ∝ (1, 0.60653066) -> (0.62245933, 0.37754067).
    two = torch.tensor([[0.0, 0.0], [10.0, 0.0]])
    p = abclass.empirical_prior(_ab((0, 0), (1, 0)), two, sigma=10.0)
    assert torch.allclose(p, torch.tensor([0.62245933, 0.37754067], dtype=torch.float64))


def test_rebalance_weights_hand_values():
    # p = (1/2, 1/2, 0), lam = 1/2, Q = 3: mix = p / 2 + 1/6 = (5/12, 5/12, 2/12); 1 / mix = (12/5, 12/5, 6);
    # sum p / mix = 12/5, so w = (1, 1, 6 * 5/12) = (1, 1, 2.5).
    p = torch.tensor([0.5, 0.5, 0.0], dtype=torch.float64)
    w = abclass.rebalance_weights(p, lam=0.5)
    assert torch.allclose(w, torch.tensor([1.0, 1.0, 2.5], dtype=torch.float64))
    assert math.isclose(float((p * w).sum()), 1.0)
    assert torch.allclose(abclass.rebalance_weights(torch.full((7,), 1 / 7)), torch.ones(7))
    with pytest.raises(ValueError):
        abclass.rebalance_weights(p, lam=0.0)                     # 1 / 0 for the empty bin


def test_class_loss_hand_values():
    two = torch.tensor([[0.0, 0.0], [10.0, 0.0]])
    logits = torch.tensor([0.0, math.log(3.0)]).view(1, 2, 1, 1)  # softmax = (1/4, 3/4)
    # Midway (5, 0): target (1/2, 1/2), CE = (ln 4 + ln 4/3) / 2 = (1.38629436 + 0.28768207) / 2.
    loss = abclass.class_loss(logits, _ab((5, 0)), two, k=2)
    assert math.isclose(float(loss), 0.83698822, rel_tol=1e-6)
    # On centre 0: target (0.88079708, 0.11920292), CE = 0.88079708 ln 4 + 0.11920292 ln 4/3 = 1.25533657;
    # the weight of its nearest bin, 2, doubles it.
    on0 = _ab((0, 0))
    assert math.isclose(float(abclass.class_loss(logits, on0, two, k=2)), 1.25533657, rel_tol=1e-6)
    weighted = abclass.class_loss(logits, on0, two, torch.tensor([2.0, 4.0]), k=2)
    assert math.isclose(float(weighted), 2 * 1.25533657, rel_tol=1e-6)


def test_class_loss_weights_per_pixel_and_plain_mean():
    # Uniform logits: CE = ln 2 whatever the target. Pixels on centres 0 and 1 get weights 2 and 4:
    # mean(2 ln 2, 4 ln 2) = 3 ln 2.
    two = torch.tensor([[0.0, 0.0], [10.0, 0.0]])
    loss = abclass.class_loss(torch.zeros(1, 2, 1, 2), _ab((0, 0), (10, 0)), two, torch.tensor([2.0, 4.0]))
    assert math.isclose(float(loss), 3 * math.log(2.0), rel_tol=1e-6)


def test_class_loss_peaked_is_near_zero_and_differentiable():
    c = abclass.ab_bins()
    ab = (torch.rand(2, 2, 3, 4, generator=torch.Generator().manual_seed(2)) - 0.5) * 100
    peaked = 50.0 * torch.nn.functional.one_hot(abclass.nearest_bin(ab, c), len(c)).permute(0, 3, 1, 2)
    assert float(abclass.class_loss(peaked.float(), ab, c, k=1)) < 1e-6
    # With the soft target (k = 5) the same logits are far from optimal: the other 4 bins get ~e^-50.
    assert float(abclass.class_loss(peaked.float(), ab, c)) > 1.0
    logits = torch.randn(2, len(c), 3, 4, generator=torch.Generator().manual_seed(3), requires_grad=True)
    loss = abclass.class_loss(logits.bfloat16(), ab, c, torch.rand(len(c)) + 0.5)
    assert loss.dtype == torch.float32
    loss.backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0
    with pytest.raises(ValueError):
        abclass.class_loss(logits[:, :-1], ab, c)


def test_annealed_mean_hand_values():
    two = torch.tensor([[0.0, 0.0], [10.0, 20.0]])
    logits = torch.tensor([math.log(0.25), math.log(0.75)]).view(1, 2, 1, 1).repeat(2, 1, 3, 4)
    mean = abclass.annealed_mean(logits, two, T=1.0)
    assert mean.shape == (2, 2, 3, 4)
    assert torch.allclose(mean[0, :, 0, 0], torch.tensor([7.5, 15.0]))      # 0.25 c0 + 0.75 c1
    # T = 1/2: z^2 / sum z^2 = (1/16, 9/16) / (10/16) = (0.1, 0.9) -> 0.9 c1 = (9, 18).
    assert torch.allclose(abclass.annealed_mean(logits, two, T=0.5)[0, :, 0, 0], torch.tensor([9.0, 18.0]))
    mode = abclass.annealed_mean(logits, two, T=0.0)
    assert mode.shape == (2, 2, 3, 4) and torch.equal(mode[1, :, 2, 3], torch.tensor([10.0, 20.0]))
    # T = 0.01: (1/3)^100 ~ 2e-48 of the mass left on c0.
    assert torch.allclose(abclass.annealed_mean(logits, two, T=0.01), mode, atol=1e-4)
    assert abclass.annealed_mean(logits, two).dtype == torch.float32         # default T = 0.38
    with pytest.raises(ValueError):
        abclass.annealed_mean(logits, two, T=-1.0)


def test_colourfulness_loss_hand_value_and_metric_agreement():
    grey = torch.full((1, 3, 1, 2), 0.5)
    assert float(abclass.colourfulness_loss(grey, grey)) == 0.0
    # Red and black pixels: rg = (255, 0), yb = (127.5, 0): std = mean = (127.5, 63.75) -> both
    # norms 63.75 sqrt 5; M = 1.3 * 63.75 sqrt 5 = 185.31; grey scores 0 -> loss 1.8531413.
    red_black = torch.tensor([[1.0, 0.0], [0.0, 0.0], [0.0, 0.0]]).view(1, 3, 1, 2)
    assert math.isclose(float(abclass.colourfulness_loss(red_black, grey)), 1.8531413, rel_tol=1e-5)

    g = torch.Generator().manual_seed(4)
    a, b = torch.rand(3, 3, 16, 12, generator=g), torch.rand(3, 3, 16, 12, generator=g)
    a[:, 0] *= 0.3                                               # make the two differ in colourfulness
    expect = (metrics.colourfulness(a * 255) - metrics.colourfulness(b * 255)).abs().mean() / 100
    pred = a.clone().requires_grad_(True)
    loss = abclass.colourfulness_loss(pred, b)
    assert math.isclose(loss.item(), float(expect), rel_tol=1e-4) and float(expect) > 0.05
    loss.backward()
    assert torch.isfinite(pred.grad).all() and pred.grad.abs().sum() > 0
    same = a.clone().requires_grad_(True)
    abclass.colourfulness_loss(same, a).backward()
    assert abclass.colourfulness_loss(same, a).item() == 0.0 and torch.isfinite(same.grad).all()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_chain_on_cuda_matches_cpu():
    c = abclass.ab_bins()
    g = torch.Generator().manual_seed(5)
    ab, logits = (torch.rand(2, 2, 8, 8, generator=g) - 0.5) * 150, torch.randn(2, len(c), 8, 8, generator=g)
    p = abclass.empirical_prior(ab, c)
    w = abclass.rebalance_weights(p)
    cpu = abclass.class_loss(logits, ab, c, w.float()), abclass.annealed_mean(logits, c)
    dev = torch.device("cuda")
    cc = c.to(dev)
    gpu = (abclass.class_loss(logits.to(dev).half(), ab.to(dev), cc, w.float().to(dev)),
           abclass.annealed_mean(logits.to(dev), cc))
    assert torch.allclose(p, abclass.empirical_prior(ab.to(dev), cc).cpu())
    assert torch.allclose(cpu[0], gpu[0].cpu(), rtol=1e-2) and torch.allclose(cpu[1], gpu[1].cpu(), atol=1e-3)


def test_annealed_mean_of_logits_without_grad_is_decoded_in_row_blocks_with_the_same_result(monkeypatch):
    logits = torch.randn(2, 261, 9, 5)
    c = abclass.ab_bins()
    whole = abclass.annealed_mean(logits.clone().requires_grad_(), c).detach()  # one block: needs grad
    monkeypatch.setattr(abclass, "CHUNK_ELEMENTS", 2 * 261 * 5 * 2)  # two rows at a time
    blocks = abclass.annealed_mean(logits, c)
    assert blocks.shape == (2, 2, 9, 5) and torch.allclose(blocks, whole, atol=1e-5)
