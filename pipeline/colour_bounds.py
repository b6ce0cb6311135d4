"""How far colour can come from grey alone: the a*b* L1 of simple predictors and of oracles, per split.

    python -m pipeline.colour_bounds data/packed --out bounds.json

The ``evaluate`` stage writes the same figures for the run's test tiles (``bounds`` in
``metrics/colorization.json``, a table in ``report.md``).

On the colour tiles of ``--split`` (default test) of a packed run, every ``--stride``-th pixel, in
CIE a*b* (the mean over a and b of |prediction - truth|, as ``ab_l1``; computed on the a*b* of the
tiles directly, without the RGB round trip of the evaluate stage), each against grey (a*b* = 0):

- ``lookup``: a model with no context: the median a*b* of the *train* split's pixels in each L* bin
  (``--bin`` L* units), applied to the test pixels' L*. What a colorizer learns first.
- ``retrieval``: an exemplar colorizer: for each test tile, the ``--k`` train tiles whose grey looks
  most alike (L* histogram, L* quantiles, mean gradient), and their median a*b* per L* bin (the
  ``lookup`` where they have no pixel of that L*). It asks whether the grey tile tells which train
  palette to borrow.
- ``oracle_image_constant``: each test image's own median a*b* painted over all its tiles. It knows
  the answer (per image); no colorizer can know it.
- ``oracle_image_lookup``: each test image's own median a*b* per L* bin: knowing each image's
  palette, as a function of L*, exactly.
- ``oracle_palette_choice``: the train images' palettes (median a*b* per L* bin of each) grouped
  into ``--palettes`` types (k-medians), and each test image painted with the type that suits it
  best. It knows which type to pick; a colorizer would have to recognise it from grey.
- ``oracle_tile_constant``: each tile's own median a*b*.
- ``oracle_tile_lookup``: each tile's own median a*b* per L* bin.

The medians minimise L1, so each oracle is the best a predictor of its form can do. A colorizer of
grey tiles must beat ``oracle_image_constant`` to do better than knowing each image's overall colour.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from pipeline import color
from pipeline.data import read_packed
from pipeline.errors import AstroganError, run_main
from pipeline.fsio import write_json_atomic


def lab_pixels(packed: Path, split: str, stride: int) -> tuple[torch.Tensor, list[str]]:
    """L*a*b* (N, 3, h, w) of the split's colour tiles, every ``stride``-th pixel, and their image ids."""
    tiles, rows = read_packed(packed, split, colour_only=True)
    if not rows:
        raise AstroganError(f"{packed}: the {split} split has no colour tiles")
    out = [color.rgb_to_lab(tiles[i:i + 64, :, ::stride, ::stride].float().div(255.0))
           for i in range(0, len(rows), 64)]
    return torch.cat(out), [r["image_id"] for r in rows]


def l_bins(L: torch.Tensor, width: float) -> torch.Tensor:
    return (L / width).floor().long().clamp(0, int(100 / width))


def binned_median(ab: torch.Tensor, bins: torch.Tensor, n_bins: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Median a*b* (2, n_bins) of the pixels in each bin (ab (2, P), bins (P,)); and which bins had any."""
    table, seen = torch.zeros(2, n_bins), torch.zeros(n_bins, dtype=torch.bool)
    for k in bins.unique().tolist():
        table[:, k] = ab[:, bins == k].median(dim=1).values
        seen[k] = True
    return table, seen


def palette(lab: torch.Tensor, width: float, n_bins: int, fallback: torch.Tensor | None = None
            ) -> torch.Tensor:
    """(2, n_bins): the median a*b* per L* bin of these L*a*b* pixels (N, 3, h, w); ``fallback``'s
    (grey without one) in the bins they have no pixel of."""
    table, seen = binned_median(lab[:, 1:].permute(1, 0, 2, 3).flatten(1), l_bins(lab[:, 0], width).flatten(),
                                n_bins)
    table[:, ~seen] = 0.0 if fallback is None else fallback[:, ~seen]
    return table


def by_image(images: list[str]) -> list[torch.Tensor]:
    """The indices of each image's tiles, images in order of first appearance."""
    rows: dict[str, list[int]] = {}
    for i, image in enumerate(images):
        rows.setdefault(image, []).append(i)
    return [torch.tensor(v) for v in rows.values()]


def l1_of_groups(ab: torch.Tensor, groups: list[torch.Tensor], by_bin: torch.Tensor | None, n_bins: int
                 ) -> float:
    """Sum of |truth - each group's own median| (per L* bin when ``by_bin`` is given) over all pixels."""
    total = 0.0
    for idx in groups:
        a = ab[idx].permute(1, 0, 2, 3).flatten(1)                    # (2, P)
        if by_bin is None:
            pred = a.median(dim=1).values[:, None]
        else:
            b = by_bin[idx].flatten()
            table, _ = binned_median(a, b, n_bins)
            pred = table[:, b]
        total += float((a - pred).abs().sum())
    return total


def grey_descriptor(L: torch.Tensor) -> torch.Tensor:
    """(N, 26) what a tile's L* (N, h, w) looks like, for retrieval: the square root of its 20-bin L*
    histogram, five L* quantiles and its mean absolute gradient, each scaled to about [0, 1]."""
    hist = torch.stack([torch.histc(tile, 20, 0, 100) for tile in L])
    hist = hist / hist.sum(1, keepdim=True)
    quantiles = torch.quantile(L.flatten(1), torch.tensor([0.05, 0.25, 0.5, 0.75, 0.95]), dim=1).T / 100
    grad = (L[:, :, 1:] - L[:, :, :-1]).abs().mean((1, 2)) + (L[:, 1:] - L[:, :-1]).abs().mean((1, 2))
    return torch.cat([hist.sqrt(), quantiles, grad[:, None] / 20], 1)


def retrieval_l1(test: torch.Tensor, train: torch.Tensor, k: int, width: float, fallback: torch.Tensor
                 ) -> float:
    """Sum of |truth - prediction| of the ``retrieval`` predictor over all test pixels."""
    n_bins = fallback.shape[1]
    nearest = torch.cdist(grey_descriptor(test[:, 0]), grey_descriptor(train[:, 0]))
    nearest = nearest.topk(min(k, len(train)), largest=False).indices
    total = 0.0
    for i, idx in enumerate(nearest):
        table = palette(train[idx], width, n_bins, fallback)
        total += float((test[i, 1:] - table[:, l_bins(test[i, 0], width)]).abs().sum())
    return total


def palettes(train: torch.Tensor, train_images: list[str], width: float, n_palettes: int,
             fallback: torch.Tensor) -> torch.Tensor:
    """(n_palettes, 2, n_bins): the train images' palettes (each image's median a*b* per L* bin, the
    ``fallback`` table where it has no pixel) grouped by k-medians in L1, seeded, 50 rounds."""
    n_bins = fallback.shape[1]
    x = torch.stack([palette(train[idx], width, n_bins, fallback).flatten()
                     for idx in by_image(train_images)])
    centres = x[torch.randperm(len(x), generator=torch.Generator().manual_seed(0))[:n_palettes]].clone()
    for _ in range(50):
        members = torch.cdist(x, centres, p=1).argmin(1)
        for c in range(len(centres)):
            if (members == c).any():
                centres[c] = x[members == c].median(0).values
    return centres.view(-1, 2, n_bins)


def bounds(packed: Path, split: str = "test", stride: int = 4, width: float = 2.0, k: int = 20,
           n_palettes: int = 4) -> dict:
    if k < 1 or n_palettes < 1:
        raise AstroganError(f"--k {k} --palettes {n_palettes}: each needs 1 or more")
    test, images = lab_pixels(packed, split, stride)
    train, train_images = lab_pixels(packed, "train", stride * 2)
    n_bins = int(100 / width) + 1
    ab, count = test[:, 1:], test[:, 1:].numel()
    grey = float(ab.abs().sum()) / count
    table = palette(train, width, n_bins)                               # L* never seen in train: grey
    bins = l_bins(test[:, 0], width)
    lookup = float((ab - table[:, bins].permute(1, 0, 2, 3)).abs().sum()) / count
    image_groups = by_image(images)
    types = palettes(train, train_images, width, n_palettes, table)
    tile_groups = [torch.tensor([i]) for i in range(len(test))]
    found = {
        "grey": grey,
        "lookup": lookup,
        "retrieval": retrieval_l1(test, train, k, width, table) / count,
        "oracle_image_constant": l1_of_groups(ab, image_groups, None, n_bins) / count,
        "oracle_image_lookup": l1_of_groups(ab, image_groups, bins, n_bins) / count,
        "oracle_palette_choice": sum(
            min(float((ab[idx] - p[:, bins[idx]].permute(1, 0, 2, 3)).abs().sum()) for p in types)
            for idx in image_groups) / count,
        "oracle_tile_constant": l1_of_groups(ab, tile_groups, None, n_bins) / count,
        "oracle_tile_lookup": l1_of_groups(ab, tile_groups, bins, n_bins) / count,
    }
    return {"split": split, "tiles": len(test), "images": len(image_groups), "stride": stride, "l_bin": width,
            "retrieval_k": k, "palettes": len(types),
            "ab_l1": {name: round(v, 4) for name, v in found.items()},
            "ratio_to_grey": {name: round(v / grey, 4) for name, v in found.items()}}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("packed", type=Path, help="a packed run folder (paths.packed)")
    ap.add_argument("--split", default="test")
    ap.add_argument("--stride", type=int, default=4, help="every n-th pixel (rows and columns)")
    ap.add_argument("--bin", type=float, default=2.0, help="L* bin width of the lookup predictors")
    ap.add_argument("--k", type=int, default=20, help="train tiles the retrieval predictor borrows from")
    ap.add_argument("--palettes", type=int, default=4, help="palette types of oracle_palette_choice")
    ap.add_argument("--out", type=Path, help="write the JSON here too")
    args = ap.parse_args(argv)
    found = bounds(args.packed, args.split, args.stride, args.bin, args.k, args.palettes)
    print(json.dumps(found, indent=2))
    if args.out:
        write_json_atomic(args.out, found)


if __name__ == "__main__":
    run_main(main)
