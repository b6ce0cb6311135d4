"""Can learning carry a reference tile's colours over better than its palette? A trained test.

``scripts/reference_study.py`` shows that no non-learned use of another tile's palette reaches the
0.65x-grey bar of issue 18 on the esahubble-381 test tiles (0.68-0.71x; the target's own palette, an
oracle, 0.36x). This script asks whether *learning* the carry-over can: small models are trained on
every (tile, next tile of the same image) pair of the train split, as ``pipeline.guided_eval`` pairs
the test tiles, to predict the tile's a*b* as a correction on top of the reference palette rendered
through its L* (a zero-initialised last layer: the start is the palette). Their inputs are more than
the guided model gets: the target's L* at four scales and its local contrast, the palette at three
scales of L*, the reference's share of pixels at each L*, and the reference's and target's global
statistics (median, mean and spread of a*b*, mean and spread of L*). Everything is computed at 1/4
resolution (64 px for 256 px tiles: colour is low-frequency, and the guided model corrects there).

- ``mlp``: per pixel, two hidden layers of 64 (1x1 convolutions);
- ``cnn``: four 3x3 layers of 48, dilated 1-2-4-8 (a 31 px, i.e. 124 full-resolution px, context).

Each model trains for ``--epochs`` epochs (Adam 1e-3, batches of 32 tiles, L1); the epoch with the best
val a*b* L1 is scored on test. Reported: a*b* L1 over grey's at 1/4 resolution, for the palette alone
and for each model, on val and test, and the relative gain on test; then, at full resolution as the
evaluate stage scores (``full_resolution``), what the release paints and that plus the best
model's correction upsampled.

    python scripts/reference_learned.py data/packed --out docs/reference_learned.json

The ``--inputs guided`` MLP is now in the product: ``GuidedUNet(reference_head=64)``
(``pipeline/models/guided_unet.py``), trained alone for the release by ``python -m pipeline.release
reference-head`` (``docs/colour_study.md``, "The reference head in the product").
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from reference_study import blur  # noqa: E402  (the study this one extends)

from pipeline import color, guided_eval, hints  # noqa: E402
from pipeline.data import read_packed  # noqa: E402
from pipeline.fsio import write_json_atomic  # noqa: E402

FACTOR = 4


def features(lab: torch.Tensor, ref: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs (N, C, h, w), the palette at L* (N, 2, h, w), both a*b* / 110) for targets and
    references in L*a*b* (N, 3, h, w) at 1/4 resolution."""
    pal = hints.palette(ref)
    L = lab[:, :1]
    h, w = L.shape[-2:]
    local = [blur(L, s) for s in (1, 3, 8)]
    contrast = (blur(L ** 2, 3) - local[1] ** 2).clamp(min=0).sqrt() / 50
    at_L = hints.render(pal, L[:, 0]) / color.AB_SCALE
    rab, rL, tL = ref[:, 1:].flatten(2), ref[:, :1].flatten(2), L.flatten(2)
    stats = torch.cat([rab.median(2).values / color.AB_SCALE, rab.mean(2) / color.AB_SCALE,
                       rab.std(2) / color.AB_SCALE, rL.mean(2) / 100, rL.std(2) / 50,
                       tL.mean(2) / 100, tL.std(2) / 50], 1)
    bins = (ref[:, 0] / hints.BIN_WIDTH).round().long().clamp(0, hints.BINS - 1).flatten(1)
    share = torch.stack([torch.bincount(b, minlength=hints.BINS).float() for b in bins]) / bins.shape[1]
    share_at_L = torch.einsum("nk,nhwk->nhw", share, hints._hat(L[:, 0]))[:, None].sqrt()
    x = torch.cat([L / 100, *(v / 100 for v in local), contrast, at_L,
                   hints.render(pal, local[1][:, 0]) / color.AB_SCALE,
                   hints.render(pal, local[2][:, 0]) / color.AB_SCALE, share_at_L,
                   stats[:, :, None, None].expand(-1, -1, h, w)], 1)
    return x, at_L


PALETTE_CHANNELS = slice(5, 7)   # where ``features`` puts the palette at L*
# ``--inputs guided``: only what a model given the guided input (``pipeline.hints``: L* and the
# palette rendered at L*) can compute within its tile: L* at four scales, its contrast, the palette
# at L* and the tile's L* mean and spread (no palette table, no reference statistics).
INPUTS = {"all": list(range(22)), "guided": [0, 1, 2, 3, 4, 5, 6, 20, 21]}


def build(packed: Path, split: str, inputs: str = "all") -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, a*b* / 110 truth) of every colour tile of ``split`` that has a reference tile."""
    tiles, rows = read_packed(packed, split, colour_only=True)
    refs = guided_eval.reference_rows([r["image_id"] for r in rows])
    idx = [i for i in range(len(tiles)) if refs[i] is not None]
    xs, ys = [], []
    for n0 in tqdm(range(0, len(idx), 64), desc=f"features ({split})", unit="batch"):
        ii = idx[n0:n0 + 64]
        lab = color.rgb_to_lab(F.avg_pool2d(tiles[ii].float() / 255, FACTOR))
        ref = color.rgb_to_lab(F.avg_pool2d(tiles[[refs[i] for i in ii]].float() / 255, FACTOR))
        x, _ = features(lab, ref)
        xs.append(x[:, INPUTS[inputs]])
        ys.append(lab[:, 1:] / color.AB_SCALE)
    return torch.cat(xs), torch.cat(ys)


class OnPalette(nn.Module):
    """The palette at L* plus a learned correction (zero at the start)."""

    def __init__(self, body: nn.Sequential):
        super().__init__()
        self.body = body
        nn.init.zeros_(body[-1].weight)
        nn.init.zeros_(body[-1].bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, PALETTE_CHANNELS] + self.body(x)


def make(kind: str, c: int) -> OnPalette:
    if kind == "mlp":
        return OnPalette(nn.Sequential(nn.Conv2d(c, 64, 1), nn.ReLU(), nn.Conv2d(64, 64, 1), nn.ReLU(),
                                       nn.Conv2d(64, 2, 1)))
    w = 48
    layers: list[nn.Module] = []
    for i, d in enumerate((1, 2, 4, 8)):
        layers += [nn.Conv2d(c if i == 0 else w, w, 3, padding=d, dilation=d), nn.ReLU()]
    return OnPalette(nn.Sequential(*layers, nn.Conv2d(w, 2, 1)))


@torch.no_grad()
def ratio(model: nn.Module | None, x: torch.Tensor, y: torch.Tensor) -> float:
    """a*b* L1 over grey's (the palette alone for no model)."""
    if model is None:
        pred = x[:, PALETTE_CHANNELS]
    else:
        pred = torch.cat([model(x[i:i + 128]) for i in range(0, len(x), 128)])
    return round(float((pred - y).abs().mean() / y.abs().mean()), 4)


@torch.no_grad()
def full_resolution(model: nn.Module, packed: Path, split: str, inputs: str = "all") -> dict:
    """a*b* L1 over grey's at full resolution on ``split``'s pairs: what the release paints (the
    reference's palette, from the reference at 1/4 resolution as ``pipeline.guided_eval`` gives it,
    rendered through the full-resolution L*) and that plus the model's correction, bilinearly
    upsampled from 1/4 resolution."""
    tiles, rows = read_packed(packed, split, colour_only=True)
    refs = guided_eval.reference_rows([r["image_id"] for r in rows])
    idx = [i for i in range(len(tiles)) if refs[i] is not None]
    err = {"palette": 0.0, "palette + correction": 0.0}
    grey = 0.0
    for n0 in range(0, len(idx), 32):
        ii = idx[n0:n0 + 32]
        lab = color.rgb_to_lab(tiles[ii].float() / 255)
        ref = color.rgb_to_lab(tiles[[refs[i] for i in ii]].float() / 255)
        shipped = hints.render(hints.palette(ref[..., ::4, ::4]), lab[:, 0])
        x, at_l = features(color.rgb_to_lab(F.avg_pool2d(tiles[ii].float() / 255, FACTOR)),
                           color.rgb_to_lab(F.avg_pool2d(tiles[[refs[i] for i in ii]].float() / 255, FACTOR)))
        fix = F.interpolate(model(x[:, INPUTS[inputs]]) - at_l, scale_factor=FACTOR, mode="bilinear",
                            align_corners=False)
        ab = lab[:, 1:]
        err["palette"] += float((shipped - ab).abs().mean(dim=(1, 2, 3)).sum())
        fixed = shipped + fix * color.AB_SCALE
        err["palette + correction"] += float((fixed - ab).abs().mean(dim=(1, 2, 3)).sum())
        grey += float(ab.abs().mean(dim=(1, 2, 3)).sum())
    return {k: round(v / grey, 4) for k, v in err.items()}


def train(kind: str, data: dict, epochs: int, seed: int) -> tuple[dict, nn.Module]:
    torch.manual_seed(seed)
    (xt, yt), (xv, yv), (xs, ys) = data["train"], data["val"], data["test"]
    model = make(kind, xt.shape[1])
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    best, curve = None, []
    t0 = time.perf_counter()
    for epoch in range(epochs):
        model.train()
        for b in torch.randperm(len(xt)).split(32):
            loss = (model(xt[b]) - yt[b]).abs().mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        model.eval()
        row = {"epoch": epoch + 1, "val": ratio(model, xv, yv), "test": ratio(model, xs, ys)}
        curve.append(row)
        print(kind, row, flush=True)
        if best is None or row["val"] < best["val"]:
            best, state = row, copy.deepcopy(model.state_dict())
    model.load_state_dict(state)
    return {"best_on_val": best, "curve": curve, "seconds": round(time.perf_counter() - t0)}, model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("packed", type=Path, help="a pack stage output (train/val/test .npy and CSVs)")
    ap.add_argument("--models", nargs="+", default=["mlp", "cnn"], choices=("mlp", "cnn"))
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--inputs", choices=tuple(INPUTS), default="all", help="the features the models see")
    ap.add_argument("--out", type=Path, help="write the JSON here too")
    args = ap.parse_args()
    torch.set_num_threads(max(torch.get_num_threads(), 1))
    data = {split: build(args.packed, split, args.inputs) for split in ("train", "val", "test")}
    out = {"packed": str(args.packed), "resolution": f"1/{FACTOR}", "inputs": args.inputs,
           "pairs": {split: len(x) for split, (x, _) in data.items()},
           "palette_alone": {split: ratio(None, *data[split]) for split in ("val", "test")}, "models": {}}
    for kind in args.models:
        found, model = train(kind, data, args.epochs, args.seed)
        palette = out["palette_alone"]["test"]
        found["test_gain_over_palette"] = round(1 - found["best_on_val"]["test"] / palette, 4)
        found["full_resolution"] = {split: full_resolution(model, args.packed, split, args.inputs)
                                    for split in ("val", "test")}
        out["models"][kind] = found
    if args.out:
        write_json_atomic(args.out, out)
    print(json.dumps({k: v for k, v in out.items() if k != "models"} | {
        k: {key: v[key] for key in ("best_on_val", "test_gain_over_palette", "full_resolution")}
        for k, v in out["models"].items()}, indent=2))


if __name__ == "__main__":
    main()
