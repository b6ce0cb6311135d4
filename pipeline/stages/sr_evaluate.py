"""Stage ``sr_evaluate``: score the 4x SR models on the test tiles (paper section 4.2, Tables 6-7, Fig. 10).

Every test tile (grey ones too) is the HR truth; its LR input comes from ``pipeline.superres.degrade``
(noise, if any, from a generator seeded by ``seed``, drawn batch by batch in tile-id order).
Bicubic and nearest-neighbour upscaling are the baselines; every model of ``superres.models`` is
scored pretrained and fine-tuned. Writes ``{paths.metrics}/superres.json`` (FID ``null`` with
``fid_reason`` when it cannot be estimated), and ``figures/superres_grid.png`` (the
``report`` stage renders them into ``report.md``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm import tqdm

from pipeline import fid, superres
from pipeline.data import load_tiles, read_split
from pipeline.errors import AstroganError, run_main
from pipeline.fsio import write_json_atomic
from pipeline.metrics import mean_over_tiles, round_sig
from pipeline.models import load_generator
from pipeline.params import load_params, resolve_device, seed_everything
from pipeline.paths import PHASES, checkpoint, figure, metrics_file
from pipeline.report import GRID_CELL, NOT_MODELS, save_grid

Key = tuple[str, str | None]  # (model, stage) or (baseline, None)


@dataclass(frozen=True)
class SREvalConfig:
    """``sr_evaluate`` params: inference batch, tiles in the figure, zoomed-crop size, Inception dims."""

    batch_size: int = 8
    grid_samples: int = 3
    zoom: int = 64
    fid_dims: int = 2048

    @classmethod
    def from_params(cls, params: dict) -> SREvalConfig:
        e = params["sr_evaluate"]
        return cls(int(e["batch_size"]), int(e["grid_samples"]), int(e["zoom"]), int(e["fid_dims"]))


def load_predictors(params: dict, scale: int, device: torch.device) -> dict[Key, Callable]:
    """Baselines, then each model's pretrained and finetuned generator: LR (N, 3, h, w) in [0, 1] ->
    (N, 3, scale h, scale w) in [0, 1]."""
    preds: dict[Key, Callable] = {("bicubic", None): functools.partial(superres.bicubic, scale=scale),
                                  ("nearest", None): functools.partial(superres.nearest, scale=scale)}
    for name in params["superres"]["models"]:
        if name in NOT_MODELS["superres"]:
            raise AstroganError(f"params.yaml: SR model name {name!r} clashes with a metrics key; rename it")
        for stage in PHASES:
            path = checkpoint(params["paths"], "superres", name, stage)
            model, meta = load_generator(path, device)
            if meta.get("card", {}).get("task") != "superres" or meta["card"].get("scale") != scale:
                raise AstroganError(f"{path}: not a x{scale} SR checkpoint; rerun "
                                    "sr_pretrain")
            preds[(name, stage)] = functools.partial(superres.upscale, model)
    return preds


def zoom_panel(hr: torch.Tensor, zoom: int) -> torch.Tensor:
    """Full tiles downsized to GRID_CELL (2x2 area mean) interleaved with their centre ``zoom`` px crops
    enlarged to GRID_CELL (nearest): (2N, 3, cell, cell)."""
    h, w = hr.shape[-2:]
    y0, x0 = (h - zoom) // 2, (w - zoom) // 2
    full = F.interpolate(hr, size=(GRID_CELL, GRID_CELL), mode="area")
    crop = F.interpolate(hr[..., y0:y0 + zoom, x0:x0 + zoom], size=(GRID_CELL, GRID_CELL), mode="nearest")
    return torch.stack([full, crop], 1).flatten(0, 1)


@torch.no_grad()
def score(tiles: torch.Tensor, predictors: dict[Key, Callable], deg: superres.Degradation, seed: int,
          cfg: SREvalConfig, device: torch.device, inception: torch.nn.Module | None):
    """Metrics per predictor (border = scale), and figure panels per column (first grid_samples tiles)."""
    gen = torch.Generator().manual_seed(seed)
    per_tile = {k: [] for k in predictors}
    acts: dict = {k: [] for k in [*predictors, "truth"]}
    panels: dict = {k: [] for k in [*predictors, "input", "truth"]}
    for i in tqdm(range(0, len(tiles), cfg.batch_size), desc="sr_evaluate", unit="batch"):
        hr = tiles[i:i + cfg.batch_size].to(device).float().div_(255.0)
        lr, _ = superres.make_pair(hr, deg, gen)
        keep = max(cfg.grid_samples - i, 0)
        panels["input"].append(zoom_panel(superres.nearest(lr[:keep], deg.scale), cfg.zoom).cpu())
        panels["truth"].append(zoom_panel(hr[:keep], cfg.zoom).cpu())
        if inception is not None:
            acts["truth"].append(fid.activations(inception, hr))
        for key, fn in predictors.items():
            pred = (fn(lr) * 255).round() / 255  # 8-bit, as a saved SR image (the SR benchmark convention)
            per_tile[key].append(superres.sr_tile_metrics(pred, hr, deg.scale))
            if inception is not None:
                acts[key].append(fid.activations(inception, pred))
            panels[key].append(zoom_panel(pred[:keep], cfg.zoom).cpu())
    results = {}
    for key in predictors:
        results[key] = mean_over_tiles(per_tile[key])
        results[key]["fid"] = (fid.fid_from_activations(torch.cat(acts[key]), torch.cat(acts["truth"]))
                               if inception is not None else None)
    return results, {k: torch.cat(v) for k, v in panels.items()}


def main() -> None:
    params = load_params()
    seed_everything(params["seed"])
    torch.backends.cudnn.benchmark = False  # same inputs, same kernels: a byte-identical figure
    torch.backends.cudnn.deterministic = True
    cfg, paths, device = SREvalConfig.from_params(params), params["paths"], resolve_device(params["device"])
    deg = superres.Degradation.from_params(params)
    rows = sorted(read_split(paths["split"], "test"), key=lambda r: r["tile_id"])
    if not rows:
        raise AstroganError(f"{paths['split']}/test.csv: no test tiles; add images or raise "
                            "split.test_fraction")
    print(f"sr_evaluate: {len(rows)} test tiles, x{deg.scale}, device {device}")
    tiles = load_tiles(paths["tiles"], [r["tile_id"] for r in rows])
    if tiles.shape[-1] % deg.scale or tiles.shape[-2] % deg.scale or min(tiles.shape[-2:]) < cfg.zoom:
        raise AstroganError(f"{paths['tiles']}: {tiles.shape[-1]} px tiles must be a multiple of the scale "
                            f"{deg.scale} and >= sr_evaluate.zoom {cfg.zoom}")
    predictors = load_predictors(params, deg.scale, device)
    inception, reason = fid.fid_model(len(rows), cfg.fid_dims, device)
    results, panels = score(tiles, predictors, deg, int(params["seed"]), cfg, device, inception)

    metrics: dict = {"test_tiles": len(rows), "test_images": len({r["image_id"] for r in rows}),
                     "scale": deg.scale, "border": deg.scale, "fid_reason": reason}
    for (name, stage), m in results.items():
        if stage is None:
            metrics[name] = m
        else:
            metrics.setdefault(name, {})[stage] = m
    metrics = round_sig(metrics)
    write_json_atomic(metrics_file(paths, "superres"), metrics)
    columns = [("input (LR,\nnearest)", panels["input"]), ("truth", panels["truth"]),
               ("bicubic", panels[("bicubic", None)])]
    columns += [(f"{name}\n{stage}", panels[(name, stage)]) for name, stage in predictors if stage]
    size = save_grid(figure(paths, "superres_grid.png"), columns)
    print(f"sr_evaluate: wrote {metrics_file(paths, 'superres')}, figures/superres_grid.png "
          f"({size / 1e6:.2f} MB)")


if __name__ == "__main__":
    run_main(main)
