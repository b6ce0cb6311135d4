"""Scoring guided colour on held-out tiles, beside the non-learned baselines (Zhang, Zhu et al. 2017's
protocol: a fixed number of points revealed from the truth, with a fixed seed).

For each tile and each count n in ``counts``, n points are drawn from the truth (seed ``seed`` +
tile index; uniform over the tile; square patches of ``patch`` px carrying the patch's mean a*b*).
Scored, in CIE a*b* (mean over a and b of |prediction - truth|, on the tiles' a*b* directly) and as
PSNR on RGB (truth L* with the predicted a*b*, 8-bit range):

- ``model``: the guided generator given those points;
- ``nearest``: each pixel takes the colour of the nearest point in (L*/10, x, y), positions in
  units of a quarter of the tile diagonal (docs/design.md's reference; grey with no point);
- ``grey``: a*b* = 0.

With a reference (``reference``): for each tile, another tile of the same image (the next one of
that image, in order; images with one tile are left out) gives its palette; ``model`` gets it as its
global hint, and ``palette`` paints the reference's median a*b* per L* bin (``PALETTE_BIN`` L*
units; bins the reference lacks take its overall median).

``low_colour``: the automatic path (no hints) on the same tiles with the truth's a*b* scaled by
1/5, against grey there: a model unsure of colour should leave it out.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from pipeline import color, colour_bounds, hints
from pipeline.data import siblings_of
from pipeline.metrics import MIN_MSE, psnr

COUNTS = (0, 1, 2, 5, 10, 20, 50)
PALETTE_BIN = 5.0


def _psnr_rgb(L: torch.Tensor, ab: torch.Tensor, truth_rgb: torch.Tensor) -> torch.Tensor:
    rgb = color.lab_to_rgb(torch.cat([L, ab], dim=1)).clamp(0, 1)
    return psnr(rgb * 255, truth_rgb * 255, 255.0, MIN_MSE)


def reference_rows(image_ids: Sequence[str]) -> list[int | None]:
    """For each tile, the index of the next tile of the same image (cyclic), or None if it is alone."""
    groups = siblings_of(image_ids)
    return [None if len(g) == 1 else g[(g.index(i) + 1) % len(g)] for i, g in enumerate(groups)]


def palette_baseline(ref_lab: torch.Tensor, L: torch.Tensor) -> torch.Tensor:
    """The reference's median a*b* per L* bin (1, 3, h, w) painted on L* (1, 1, H, W): (1, 2, H, W)."""
    n_bins = int(100 / PALETTE_BIN) + 1
    overall = ref_lab[:, 1:].flatten(2).median(dim=2).values[0]          # (2,)
    table = colour_bounds.palette(ref_lab, PALETTE_BIN, n_bins, overall[:, None].expand(2, n_bins))
    return table[:, colour_bounds.l_bins(L[0, 0], PALETTE_BIN)][None]


class _Sum:
    def __init__(self):
        self.total: dict[str, float] = {}
        self.n = 0

    def add(self, **values: float) -> None:
        for k, v in values.items():
            self.total[k] = self.total.get(k, 0.0) + v
        self.n += 1

    def mean(self) -> dict[str, float]:
        return {k: round(v / max(self.n, 1), 4) for k, v in self.total.items()}


@torch.no_grad()
def score(model: torch.nn.Module | None, tiles: torch.Tensor, image_ids: Sequence[str], *,
          counts: Sequence[int] = COUNTS, seed: int = 0, patch: int = 3, reference: bool = True,
          auto_strength: float = 1.0, device: torch.device | str = "cpu", progress=None) -> dict:
    """Guided-colour scores of ``model`` on uint8 tiles (N, 3, S, S) (module docstring); with no
    model, the baselines alone. ``auto_strength`` scales the model's a*b* with no hint (0 points and
    ``low_colour``), as ``astrogan colorize`` does with no hints (its default strength)."""
    models = {} if model is None else {"model": (model, auto_strength)}
    found = score_models(models, tiles, image_ids, counts=counts, seed=seed, patch=patch,
                         reference=reference, device=device, progress=progress)
    return next(iter(found.values()))


@torch.no_grad()
def score_models(models: dict[str, tuple[torch.nn.Module, float]], tiles: torch.Tensor,
                 image_ids: Sequence[str], *, counts: Sequence[int] = COUNTS, seed: int = 0, patch: int = 3,
                 reference: bool = True, device: torch.device | str = "cpu", progress=None
                 ) -> dict[str, dict]:
    """:func:`score` of several models, name -> (model, auto_strength), in one pass over the tiles:
    name -> what :func:`score` returns for it. The points, the references and the baselines are made
    once, and each model colours a tile's guides in one batch. With no model: {"baselines": the
    baselines alone}."""
    for model, _ in models.values():
        model.eval()
    base = {n: _Sum() for n in counts}
    mine = {name: {n: _Sum() for n in counts} for name in models}
    ref_base, ref_mine = _Sum(), {name: _Sum() for name in models}
    low = {name: _Sum() for name in models}
    refs = reference_rows(image_ids) if reference else [None] * len(tiles)
    for i in range(len(tiles)):
        rgb = tiles[i:i + 1].float().div(255.0)
        lab = color.rgb_to_lab(rgb)
        L, ab = lab[:, :1], lab[:, 1:]
        h, w = L.shape[-2:]
        unit = hints.unit_of(h, w)
        grey = float(ab.abs().mean())
        grey_psnr = float(_psnr_rgb(L, torch.zeros_like(ab), rgb))
        guides = []
        for n in counts:
            gen = torch.Generator().manual_seed(seed + i)
            pts = hints.sample_points(lab[0], n, gen, where="uniform", patch=(patch, patch))
            guides.append(hints.Guide(pts, hints.point_lightness(pts, L[0, 0]), None, unit))
            near, _ = hints.nearest(pts, guides[-1].point_L, L[0, 0], (0, 0), unit)
            base[n].add(nearest=float((near[None] - ab).abs().mean()), grey=grey,
                        nearest_psnr=float(_psnr_rgb(L, near[None], rgb)), grey_psnr=grey_psnr)
        j = refs[i]
        if j is not None:
            ref_lab = color.rgb_to_lab(tiles[j:j + 1].float().div(255.0))
            pal = hints.palette(ref_lab[..., ::4, ::4])[0]
            guides.append(hints.Guide(torch.zeros(0, 5), torch.zeros(0), pal, unit))
            palette = palette_baseline(ref_lab, L)
            ref_base.add(palette=float((palette - ab).abs().mean()), grey=grey,
                         palette_psnr=float(_psnr_rgb(L, palette, rgb)))
        if models:
            x = torch.stack([hints.encode(L[0, 0], g) for g in guides]).to(device)
        for name, (model, strength) in models.items():
            preds = color.denormalize_ab(model(x).float().cpu())
            for k, n in enumerate(counts):
                pred = preds[k:k + 1] * strength if n == 0 else preds[k:k + 1]
                mine[name][n].add(model=float((pred - ab).abs().mean()),
                                  model_psnr=float(_psnr_rgb(L, pred, rgb)))
                if n == 0:
                    low[name].add(model=float((pred - ab / 5).abs().mean()), grey=grey / 5)
            if j is not None:
                pred = preds[-1:]
                ref_mine[name].add(model=float((pred - ab).abs().mean()),
                                   model_psnr=float(_psnr_rgb(L, pred, rgb)))
        if progress is not None:
            progress(1)
    found = {}
    for name in models or ["baselines"]:
        strength = models[name][1] if models else 1.0
        out = {"tiles": len(tiles), "patch": patch, "seed": seed, "auto_strength": strength, "points": {}}
        for n in counts:
            m = {**(mine[name][n].mean() if models else {}), **base[n].mean()}
            ours = {"model_vs_grey": _ratio(m["model"], m["grey"])} if "model" in m else {}
            out["points"][str(n)] = {**m, **ours, "nearest_vs_grey": _ratio(m["nearest"], m["grey"])}
        if ref_base.n:
            m = {**(ref_mine[name].mean() if models else {}), **ref_base.mean()}
            out["reference"] = {**m, "tiles": ref_base.n, "palette_vs_grey": _ratio(m["palette"], m["grey"]),
                                **({"model_vs_grey": _ratio(m["model"], m["grey"])} if "model" in m else {})}
        if models and low[name].n:
            m = low[name].mean()
            out["low_colour"] = {**m, "model_vs_grey": _ratio(m["model"], m["grey"])}
        found[name] = out
    return found


def _ratio(a: float, b: float) -> float | None:
    return round(a / b, 4) if b > 0 and math.isfinite(a) else None
