"""Tiled inference: exact for pointwise networks, seamless for networks with border artefacts, bounded."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pipeline.tiling import taper, tile_starts, tiled


def run(image: np.ndarray, net, **kw) -> np.ndarray:
    """Assemble the yielded strips, checking they are contiguous and in order."""
    strips, expect = [], 0
    for y0, strip in tiled(image, net, **kw):
        assert y0 == expect, "strips must arrive top to bottom without gaps"
        strips.append(strip)
        expect += strip.shape[1]
    return torch.cat(strips, dim=1).numpy()


def pointwise(x: torch.Tensor) -> torch.Tensor:
    """A 1x1 'network' mixing channels: its output at a pixel depends on that pixel only."""
    m = torch.tensor([[0.5, -0.2], [0.1, 0.9], [0.3, 0.3]])
    return torch.einsum("oc,bchw->bohw", m, x) + 0.05


def box_blur(x: torch.Tensor) -> torch.Tensor:
    """A 9x9 mean filter with zero padding: it darkens every tile's border, as real CNNs do."""
    k = torch.ones(x.shape[1], 1, 9, 9) / 81
    return F.conv2d(x, k, padding=4, groups=x.shape[1])


@pytest.mark.parametrize("length,tile,overlap", [(200, 64, 16), (64, 64, 16), (65, 64, 16), (30, 64, 8),
                                                 (1000, 256, 32), (100, 32, 0)])
def test_tile_starts_cover_the_axis_with_equal_tiles(length, tile, overlap):
    starts = tile_starts(length, tile, overlap)
    assert starts[0] == 0 and starts == sorted(set(starts))
    if length > tile:
        assert starts[-1] + tile == length
        steps = np.diff(starts)
        assert steps.max() <= tile - overlap and steps.min() > 0  # no gaps, at least `overlap` shared


def test_taper_ramps_sum_to_one_on_a_regular_overlap():
    a, b = taper(64, 16, False, True), taper(64, 16, True, False)
    shared = a[48:] + b[:16]  # tile b starts 48 px after tile a
    assert torch.allclose(shared, torch.ones(16), atol=1e-6)
    assert a[0] == 1 and b[-1] == 1 and a[:48].eq(1).all(), "only sides with a neighbour are tapered"


@pytest.mark.parametrize("h,w,tile,overlap,multiple", [(100, 130, 32, 8, 16), (45, 70, 64, 16, 16),
                                                        (1, 37, 16, 4, 1), (96, 96, 32, 0, 16)])
def test_tiling_equals_whole_image_for_a_pointwise_network(rng, h, w, tile, overlap, multiple):
    image = rng.random((2, h, w), dtype=np.float32)
    whole = pointwise(torch.from_numpy(image)[None])[0].numpy()
    got = run(image, pointwise, tile=tile, overlap=overlap, multiple=multiple, batch=3)
    assert got.shape == (3, h, w)
    np.testing.assert_allclose(got, whole, atol=1e-5)


def test_tiling_at_4x_equals_whole_image_for_a_pointwise_upscaler(rng):
    image = rng.random((3, 37, 50), dtype=np.float32)

    def up4(x):
        return F.interpolate(x, scale_factor=4, mode="nearest") * 0.8 + 0.1

    whole = up4(torch.from_numpy(image)[None])[0].numpy()
    got = run(image, up4, tile=16, overlap=4, scale=4, batch=5)
    assert got.shape == (3, 148, 200)
    np.testing.assert_allclose(got, whole, atol=1e-5)


def tile_mean_shift(x: torch.Tensor) -> torch.Tensor:
    """Output depends on the whole tile (its mean), as a CNN's depends on context: tiles disagree."""
    return x - x.mean(dim=(-2, -1), keepdim=True) + 0.5


def steps_at(out: np.ndarray, cuts: list[int]) -> float:
    """Largest |difference| between the columns either side of each cut (a tile's first column)."""
    return float(np.abs(out[..., cuts] - out[..., [c - 1 for c in cuts]]).max())


def ramp_image(h: int = 64, w: int = 256) -> tuple[np.ndarray, float]:
    ramp = np.linspace(0.2, 0.8, w, dtype=np.float32)
    return np.broadcast_to(ramp, (1, h, w)).copy(), 0.6 / (w - 1)


def test_blended_tiles_show_no_step_at_tile_borders_on_a_smooth_gradient():
    image, slope = ramp_image()
    tile, overlap = 64, 16
    starts = tile_starts(image.shape[-1], tile, overlap)
    cuts = sorted(set(starts[1:]) | {s + tile for s in starts[:-1]})
    blended = run(image, tile_mean_shift, tile=tile, overlap=overlap, batch=2)
    assert steps_at(blended, cuts) < 2 * slope, "a step at a tile border on a smooth ramp"
    # The measure does see seams: plain tiling (no overlap) of the same network leaves steps.
    plain = run(image, tile_mean_shift, tile=tile, overlap=0, batch=2)
    assert steps_at(plain, list(range(tile, image.shape[-1], tile))) > 20 * slope


def test_blending_hides_zero_padding_artefacts_at_tile_borders():
    image, _ = ramp_image()
    whole = box_blur(torch.from_numpy(image)[None])[0].numpy()[..., 8:-8, 8:-8]  # away from image edges
    blended = run(image, box_blur, tile=64, overlap=16, batch=2)[..., 8:-8, 8:-8]
    plain = run(image, box_blur, tile=64, overlap=0, batch=2)[..., 8:-8, 8:-8]
    # A border pixel's error is its artefact times its tile's ramp weight (< 0.11 within 4 px of
    # the edge, where a 9x9 kernel reaches the padding): blending removes over 95% of it.
    artefact, left = np.abs(plain - whole).max(), np.abs(blended - whole).max()
    assert artefact > 0.1, "the artefact exists without blending"
    assert left < 0.05 * artefact and left < 5 / 255


def test_memory_is_bounded_batches_and_strips(rng):
    image = rng.random((1, 300, 300), dtype=np.float32)
    seen = []

    def net(x):
        seen.append(x.shape)
        return x

    heights = [s.shape[1] for _, s in tiled(image, net, tile=64, overlap=16, batch=3)]
    assert max(b for b, *_ in seen) <= 3 and all(s[-2:] == (64, 64) for s in seen)
    assert sum(heights) == 300 and max(heights) <= 2 * 64, "strips, not the whole image, at once"


def test_small_inputs_are_padded_to_the_network_multiple_and_cropped_back(rng):
    image = rng.random((1, 21, 9), dtype=np.float32)
    shapes = []

    def net(x):
        shapes.append(tuple(x.shape[-2:]))
        return x * 2

    got = run(image, net, tile=256, overlap=32, multiple=16)
    assert shapes == [(32, 16)]
    np.testing.assert_allclose(got, image * 2, atol=1e-6)


def test_a_network_that_changes_the_size_is_refused(rng):
    with pytest.raises(ValueError, match="not 64x64"):
        run(rng.random((1, 40, 40), dtype=np.float32), lambda x: x, tile=16, overlap=4, scale=4)
