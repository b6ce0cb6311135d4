"""Run a fully-convolutional network on an image of any size: overlapping tiles, blended seams.

Tiles of ``tile`` px step by ``tile - overlap``; the last tile of a row/column is aligned to the
image's end, so every tile has the same size and tiles batch. An axis shorter than ``tile`` is one
tile, reflect-padded up to the network's ``multiple`` (16 for the ResNet U-Net) and cropped back.

Blending: each tile's output is weighted by a separable Tukey (tapered cosine) window that is 1 in
the middle and ramps as sin^2 over ``overlap`` px on every side that has a neighbour (image borders
are not tapered). On a regular overlap the two ramps sum to exactly 1 (sin^2 + cos^2), so every
output pixel is a convex combination of the tiles covering it and the weights vary smoothly: no
seam, and a network's border artefacts (zero padding) get weights near 0. Because the windows are
separable and the tiles form a grid, the total weight is the outer product of two 1-D sums.

Memory is bounded: tiles run ``batch`` at a time, and output rows are handed back as finished
strips (a row of tiles plus the rows still awaiting the next row's overlap), never a whole-image
accumulator. Works for any integer ``scale`` (4 for super-resolution).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

Net = Callable[[torch.Tensor], torch.Tensor]  # (B, C, t, t) -> (B, C_out, t*scale, t*scale)


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of ``tile`` px covering ``length`` px; the last one ends at ``length``."""
    if length <= tile:
        return [0]
    stride = tile - overlap
    n = math.ceil((length - tile) / stride) + 1
    return [i * stride for i in range(n - 1)] + [length - tile]


def taper(n: int, overlap: int, ramp_start: bool, ramp_end: bool) -> torch.Tensor:
    """1-D Tukey window of ``n`` samples: sin^2 ramps over ``overlap`` samples at the chosen ends."""
    w = torch.ones(n, dtype=torch.float64)
    if overlap > 0:
        ramp = torch.sin(math.pi / 2 * (torch.arange(overlap, dtype=torch.float64) + 0.5) / overlap) ** 2
        if ramp_start:
            w[:overlap] = ramp
        if ramp_end:
            w[n - overlap:] = torch.minimum(w[n - overlap:], ramp.flip(0))
    return w.float()


@dataclass(frozen=True)
class Axis:
    """Tiling of one axis: input length, padded length, tile size, starts; windows at output scale."""

    length: int
    padded: int
    tile: int
    starts: list[int]
    windows: list[torch.Tensor]  # one per start, tile*scale samples
    total: torch.Tensor          # sum of the windows placed at their starts, padded*scale samples

    @classmethod
    def plan(cls, length: int, tile: int, overlap: int, multiple: int, scale: int) -> Axis:
        t = math.ceil(tile / multiple) * multiple
        if length < t:  # one tile, padded to the network's multiple
            t = math.ceil(length / multiple) * multiple
        padded = max(length, t)
        starts = tile_starts(padded, t, min(overlap, t // 2))
        ov = min(overlap, t // 2) * scale
        windows = [taper(t * scale, ov, i > 0, i < len(starts) - 1) for i in range(len(starts))]
        total = torch.zeros(padded * scale)
        for s, w in zip(starts, windows, strict=True):
            total[s * scale:(s + t) * scale] += w
        return cls(length, padded, t, starts, windows, total)


def _pad(image: np.ndarray, h: int, w: int) -> np.ndarray:
    """Reflect-pad (C, H, W) at the bottom/right to (C, h, w); edge-pad axes of length 1."""
    ph, pw = h - image.shape[1], w - image.shape[2]
    if ph == 0 and pw == 0:
        return image
    mode = "reflect" if min(image.shape[1:]) > 1 else "edge"
    return np.pad(image, ((0, 0), (0, ph), (0, pw)), mode=mode)


def count_tiles(h: int, w: int, *, tile: int, overlap: int, multiple: int = 1) -> int:
    """How many tiles :func:`tiled` runs for an ``h`` x ``w`` input (for progress bars)."""
    ay, ax = (Axis.plan(n, tile, overlap, multiple, 1) for n in (h, w))
    return len(ay.starts) * len(ax.starts)


@torch.no_grad()
def tiled(image: np.ndarray, net: Net, *, tile: int, overlap: int, multiple: int = 1, scale: int = 1,
          batch: int = 4, device: torch.device | str = "cpu", progress: Callable[[int], object] | None = None
          ) -> Iterator[tuple[int, torch.Tensor]]:
    """Run ``net`` over ``image`` (C, H, W) float32 in overlapping tiles; yield finished strips.

    Yields ``(y0, strip)``: ``strip`` is a CPU float32 tensor (C_out, rows, W*scale) holding output
    rows ``y0 .. y0+rows`` (output pixel units), top to bottom, covering H*scale rows in all.
    ``progress(n)`` is called after each batch with the number of tiles it held.
    """
    if not 0 <= overlap < tile:
        raise ValueError(f"overlap {overlap} must be in [0, tile={tile})")
    c, h, w = image.shape
    ay, ax = (Axis.plan(n, tile, overlap, multiple, scale) for n in (h, w))
    padded = torch.from_numpy(_pad(np.asarray(image, dtype=np.float32), ay.padded, ax.padded))
    ty, tx, s = ay.tile, ax.tile, scale
    pending, p0 = None, 0  # accumulator of output rows p0 .. p0 + len(pending) not yet final
    for i, sy in enumerate(ay.starts):
        if pending is not None and sy * s > p0:  # rows above this tile row are final
            yield from _emit(pending[:, :sy * s - p0], p0, ay, ax, h * s, w * s)
            pending, p0 = pending[:, sy * s - p0:], sy * s
        row = torch.zeros(0)
        for j0 in range(0, len(ax.starts), batch):
            xs = ax.starts[j0:j0 + batch]
            x = torch.stack([padded[:, sy:sy + ty, sx:sx + tx] for sx in xs]).to(device)
            out = net(x).float().cpu()
            if out.shape[-2:] != (ty * s, tx * s):
                raise ValueError(f"the network turned {tx}x{ty} tiles into {out.shape[-1]}x{out.shape[-2]}, "
                                 f"not {tx * s}x{ty * s} (scale {s})")
            wins = torch.stack([ax.windows[j0 + k] for k in range(len(xs))])  # (b, tx*s)
            out = out * (ay.windows[i][:, None] * wins[:, None, :])[:, None]  # (b, C, ty*s, tx*s)
            if row.numel() == 0:
                row = torch.zeros(out.shape[1], ty * s, ax.padded * s)
            for k, sx in enumerate(xs):
                row[:, :, sx * s:(sx + tx) * s] += out[k]
            if progress is not None:
                progress(len(xs))
        if pending is None:
            pending, p0 = row, sy * s
        else:
            need = sy * s + ty * s - p0
            if need > pending.shape[1]:
                grow = torch.zeros(pending.shape[0], need - pending.shape[1], pending.shape[2])
                pending = torch.cat([pending, grow], dim=1)
            pending[:, sy * s - p0:need] += row
    yield from _emit(pending, p0, ay, ax, h * s, w * s)


def _emit(acc: torch.Tensor, y0: int, ay: Axis, ax: Axis, out_h: int, out_w: int
          ) -> Iterator[tuple[int, torch.Tensor]]:
    """Normalise accumulated rows by the total window weight; crop the padding; yield if non-empty."""
    rows = min(acc.shape[1], out_h - y0)
    if rows <= 0:
        return
    norm = ay.total[y0:y0 + rows, None] * ax.total[None, :out_w]
    yield y0, acc[:, :rows, :out_w] / norm
