"""How far can a reference tile's colours go? Bounds for guided colour with a reference.

The evaluate stage scores a reference taken from another tile of the same image
(``pipeline.guided_eval``): the model paints the reference's palette (median a*b* per L* bin,
``pipeline.hints.palette``) through the target's L*. This script scores that palette and its
variants against the truth, with no model, on the colour tiles of a packed split, as a*b* L1 over
grey's (lower is better):

- ``own palette (oracle)``: the target tile's own palette, the best any per-L* palette can do;
- ``shipped``: what the guided model is given (the reference at 1/4 resolution, bins of >= 8 px);
- ``full resolution``, ``robust bins``, ``smoothed``: the palette estimated other ways;
- ``shrunk x0.9``: the palette scaled towards grey (helps only if the reference misleads);
- ``L* x local L*``: a 2-D palette over L* and L* blurred at 16 px (context: a star or a cloud);
- ``global median``: one colour for the whole tile.

    python scripts/reference_study.py data/packed test --out docs/reference_study_test.json

The variants land within a few hundredths of each other, far above the oracle: what limits a
reference from elsewhere in the image is that the regions differ, not how its palette is estimated.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from torch.nn import functional as F
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline import color, guided_eval, hints  # noqa: E402
from pipeline.data import read_packed  # noqa: E402
from pipeline.fsio import write_json_atomic  # noqa: E402


def blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian blur of (N, 1, H, W), reflect padding."""
    k = int(3 * sigma) * 2 + 1
    t = torch.arange(k, dtype=torch.float32) - k // 2
    g = torch.exp(-t ** 2 / (2 * sigma ** 2))
    g = g / g.sum()
    y = F.conv2d(F.pad(x, (k // 2,) * 4, mode="reflect"), g.view(1, 1, 1, k))
    return F.conv2d(y, g.view(1, 1, k, 1))


def smooth(pal: torch.Tensor, k: int) -> torch.Tensor:
    """A palette (2, BINS) median-filtered along L* over 2k + 1 bins."""
    p = F.pad(pal[None], (k, k), mode="replicate")[0]
    return p.unfold(-1, 2 * k + 1, 1).median(-1).values


def palette_2d(lab: torch.Tensor, ctx: torch.Tensor, n_ctx: int = 6) -> torch.Tensor:
    """Median a*b* (2, BINS, n_ctx) per (L* bin, bin of ``ctx`` in [0, 100]); empty cells take the
    L*-only palette."""
    L, ab = lab[0, 0].flatten(), lab[0, 1:].flatten(1)
    lb = (L / hints.BIN_WIDTH).round().long().clamp(0, hints.BINS - 1)
    cb = (ctx.flatten() / 100 * n_ctx).floor().long().clamp(0, n_ctx - 1)
    table = hints.palette(lab)[0][:, :, None].repeat(1, 1, n_ctx)
    key = lb * n_ctx + cb
    for k in torch.unique(key).tolist():
        m = key == k
        if int(m.sum()) >= 8:
            table[:, k // n_ctx, k % n_ctx] = ab[:, m].median(dim=1).values
    return table


def render_2d(table: torch.Tensor, L: torch.Tensor, ctx: torch.Tensor, n_ctx: int = 6) -> torch.Tensor:
    cb = (ctx[0, 0] / 100 * n_ctx).floor().long().clamp(0, n_ctx - 1)
    return torch.einsum("ckhw,hwk->chw", table[:, :, cb], hints._hat(L[0, 0]))[None]


def study(packed: Path, split: str) -> dict:
    tiles, rows = read_packed(packed, split, colour_only=True)
    refs = guided_eval.reference_rows([r["image_id"] for r in rows])
    total: dict[str, float] = {}
    grey, n = 0.0, 0
    for i in tqdm(range(len(tiles)), desc=f"reference study ({split})", unit="tile"):
        j = refs[i]
        if j is None:
            continue
        lab = color.rgb_to_lab(tiles[i:i + 1].float() / 255)
        ref = color.rgb_to_lab(tiles[j:j + 1].float() / 255)
        L, ab = lab[:, :1], lab[:, 1:]
        grey += float(ab.abs().mean())
        n += 1

        def paint(pal: torch.Tensor, L: torch.Tensor = L) -> torch.Tensor:
            return hints.render(pal[None], L[:, 0])

        full = hints.palette(ref)[0]
        robust = hints.palette(ref, min_count=int(0.005 * ref[0, 0].numel()))[0]
        out = {
            "own palette (oracle)": paint(hints.palette(lab)[0]),
            "shipped (1/4 resolution, bins >= 8 px)": paint(hints.palette(ref[..., ::4, ::4])[0]),
            "full resolution, bins >= 8 px": paint(full),
            "robust bins (>= 0.5 % of the pixels)": paint(robust),
            "robust bins, smoothed over 5 bins": paint(smooth(robust, 2)),
            "shipped, shrunk x0.9": 0.9 * paint(hints.palette(ref[..., ::4, ::4])[0]),
            "L* x local L* (16 px)": render_2d(palette_2d(ref, blur(ref[:, :1], 16)), L, blur(L, 16)),
            "global median": ref[:, 1:].flatten(2).median(2).values[..., None, None].expand_as(ab),
        }
        for name, pred in out.items():
            total[name] = total.get(name, 0.0) + float((pred - ab).abs().mean())
    return {"packed": str(packed), "split": split, "tiles_with_a_reference": n,
            "ab_l1_vs_grey": {k: round(v / grey, 4) for k, v in total.items()}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("packed", type=Path, help="a pack stage output (val.npy/test.npy and their CSVs)")
    ap.add_argument("split", choices=("val", "test"))
    ap.add_argument("--out", type=Path, help="write the JSON here too")
    args = ap.parse_args()
    result = study(args.packed, args.split)
    if args.out:
        write_json_atomic(args.out, result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
