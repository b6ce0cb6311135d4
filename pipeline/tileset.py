"""The data set's tiles: how images are cut (``tile`` params), which tiles are kept, which are grey.

Shared by the ``tile`` stage, ``natural`` (grey photos) and the release re-evaluation, which cuts the
default run's test tiles from the repository alone. Content score (:func:`content_score`): the
fraction of the tile's pixels whose luminance is above its own background (10th percentile) plus
10/255; noise on black sky scores near 0, a galaxy or nebula well above.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

FIELDS = ["tile_id", "image_id", "x", "y", "size", "content", "grey"]
NOISE_MARGIN = 10 / 255  # above the background by more than JPEG/read noise of dark sky
LUMA = np.array([0.299, 0.587, 0.114])  # ITU-R BT.601


@dataclass(frozen=True)
class TileConfig:
    """``tile`` section: tile side and stride in px, minimum content score in [0, 1]."""

    size: int = 256
    stride: int = 256
    min_content: float = 0.05

    @classmethod
    def from_params(cls, params: dict) -> TileConfig:
        t = params["tile"]
        return cls(int(t["size"]), int(t["stride"]), float(t["min_content"]))


def content_score(tile: np.ndarray) -> float:
    """Fraction in [0, 1] of pixels of a uint8 RGB tile (H, W, 3) brighter than background + 10/255.

    The background is the tile's own 10th luminance percentile, so a tile of uniform sky
    (black or grey, with noise) scores near 0 whatever its level.
    """
    y = tile.astype(np.float32) @ LUMA.astype(np.float32) / 255.0
    return float((y > np.percentile(y, 10) + NOISE_MARGIN).mean())


def is_grey(rgb: np.ndarray) -> bool:
    """No colour: max |R-G| and |G-B| over the image are <= 2 (JPEG chroma noise)."""
    a = rgb.astype(np.int16)
    return int(np.abs(a[..., 0] - a[..., 1]).max()) <= 2 and int(np.abs(a[..., 1] - a[..., 2]).max()) <= 2


def tile_positions(h: int, w: int, size: int, stride: int) -> list[tuple[int, int]]:
    """(y, x) of full tiles, row-major; empty when the image is smaller than a tile."""
    return [(y, x) for y in range(0, h - size + 1, stride) for x in range(0, w - size + 1, stride)]


def scored_tiles(rgb: np.ndarray, cfg: TileConfig) -> Iterator[tuple[int, int, np.ndarray, float]]:
    """(y, x, tile, content score) of every full tile of ``rgb``, row-major, kept or not."""
    for y, x in tile_positions(rgb.shape[0], rgb.shape[1], cfg.size, cfg.stride):
        tile = rgb[y:y + cfg.size, x:x + cfg.size]
        yield y, x, tile, content_score(tile)
