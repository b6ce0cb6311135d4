"""Stage ``evaluate``: score the colorizers on the test tiles (paper section 4.1, Tables 1-5, Fig. 7).

Reads the test split, skips grey tiles (no colour to predict), colorizes every remaining tile with
the grey baseline and each pre-trained / fine-tuned generator, and writes
``{paths.metrics}/colorization.json`` (floats to 6 significant digits, FID ``null`` with
``fid_reason`` when it cannot be estimated), and ``figures/colorization_grid.png`` (the
``report`` stage renders them into ``report.md``).
Run from the project root: ``python -m pipeline.stages.evaluate``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from pipeline import fid
from pipeline.colorizer import colorize_batch, grey_baseline
from pipeline.data import load_tiles, read_split
from pipeline.fsio import write_json_atomic
from pipeline.metrics import colorization_tile_metrics, colourfulness, mean_over_tiles
from pipeline.models import load_generator
from pipeline.params import load_params, resolve_device, seed_everything
from pipeline.report import STAGES, TOP_LEVEL, save_grid

Key = tuple[str, str | None]  # (model name, stage); ("grey", None) is the baseline
GREY: Key = ("grey", None)


@dataclass(frozen=True)
class EvalConfig:
    """``evaluate`` params: batch size at inference, tiles in the figure, Inception feature size."""

    batch_size: int = 16
    grid_samples: int = 6
    fid_dims: int = 2048

    @classmethod
    def from_params(cls, params: dict) -> EvalConfig:
        e = params["evaluate"]
        return cls(int(e["batch_size"]), int(e["grid_samples"]), int(e["fid_dims"]))


def colour_rows(rows: list[dict[str, str]]) -> tuple[list[dict[str, str]], int]:
    """Test rows without grey tiles (``grey == "1"``), sorted by tile_id; and how many were skipped."""
    kept = sorted((r for r in rows if r.get("grey") != "1"), key=lambda r: r["tile_id"])
    return kept, len(rows) - len(kept)


def load_predictors(params: dict, device: torch.device) -> dict[Key, Callable]:
    """The grey baseline, then each model of ``colorize.pretrain`` / ``finetune`` (per name: pretrained,
    finetuned), as functions RGB (N, 3, H, W) in [0, 1] -> RGB in [0, 1] on ``device``."""
    preds: dict[Key, Callable] = {GREY: grey_baseline}
    root = Path(params["paths"]["colorize_models"])
    lists = {"pretrained": params["colorize"]["pretrain"], "finetuned": params["colorize"]["finetune"]}
    for name in dict.fromkeys([*lists["pretrained"], *lists["finetuned"]]):
        if name in TOP_LEVEL:
            raise SystemExit(f"params.yaml: model name {name!r} clashes with a metrics key; rename it")
        for stage in (s for s in STAGES if name in lists[s]):
            model, meta = load_generator(root / name / f"{stage}.pt", device)
            preds[(name, stage)] = functools.partial(colorize_batch, model, color_space=meta["color_space"])
    return preds


@torch.no_grad()
def score(tiles: torch.Tensor, predictors: dict[Key, Callable], cfg: EvalConfig, device: torch.device,
          inception: torch.nn.Module | None) -> tuple[dict[Key, dict], dict[Key, torch.Tensor], float]:
    """Metrics per predictor, its first ``grid_samples`` predictions (CPU, [0, 1]), truth colourfulness.

    ``tiles``: uint8 (N, 3, H, W). Batches stream through every predictor, so memory holds one batch
    of predictions plus Inception features, never all predictions. FID is None without ``inception``.
    """
    per_tile = {k: [] for k in predictors}
    acts: dict = {k: [] for k in [*predictors, "truth"]}
    grid = {k: [] for k in predictors}
    truth_colour = []
    for i in tqdm(range(0, len(tiles), cfg.batch_size), desc="evaluate", unit="batch"):
        rgb = tiles[i:i + cfg.batch_size].to(device).float().div_(255.0)
        truth_colour.append(colourfulness(rgb * 255.0).cpu())
        if inception is not None:
            acts["truth"].append(fid.activations(inception, rgb))
        for key, fn in predictors.items():
            pred = fn(rgb)
            per_tile[key].append(colorization_tile_metrics(pred, rgb))
            if inception is not None:
                acts[key].append(fid.activations(inception, pred))
            grid[key].append(pred[:max(cfg.grid_samples - i, 0)].cpu())
    results = {}
    for key in predictors:
        results[key] = mean_over_tiles(per_tile[key])
        results[key]["fid"] = (fid.fid_from_activations(torch.cat(acts[key]), torch.cat(acts["truth"]))
                               if inception is not None else None)
    return results, {k: torch.cat(v) for k, v in grid.items()}, float(torch.cat(truth_colour).mean())


def round_sig(obj, digits: int = 6):
    """Round every float in a nested dict/list to ``digits`` significant digits (ints, str, None kept)."""
    if isinstance(obj, dict):
        return {k: round_sig(v, digits) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [round_sig(v, digits) for v in obj]
    return float(f"{obj:.{digits}g}") if isinstance(obj, float) else obj


def fid_model(n: int, dims: int, device: torch.device) -> tuple[torch.nn.Module | None, str | None]:
    """Inception for FID, or (None, reason). The tile count is checked first: it needs no download."""
    reason = fid.fid_blocker(n, dims)
    if reason is None:
        try:
            return fid.inception(dims, device), None
        except fid.FIDUnavailable as e:
            reason = str(e)
    print(f"FID skipped: {reason}")
    return None, reason


def main() -> None:
    params = load_params()
    seed_everything(params["seed"])
    torch.backends.cudnn.benchmark = False  # same inputs, same kernels: a byte-identical figure
    torch.backends.cudnn.deterministic = True
    cfg, paths, device = EvalConfig.from_params(params), params["paths"], resolve_device(params["device"])
    rows, skipped = colour_rows(read_split(paths["split"], "test"))
    if not rows:
        raise SystemExit(f"{paths['split']}/test.csv: no colour test tiles ({skipped} grey skipped); "
                         "add images or raise split.test_fraction")
    print(f"evaluate: {len(rows)} test tiles, {skipped} grey tiles skipped, device {device}")
    tiles = load_tiles(paths["tiles"], [r["tile_id"] for r in rows])
    predictors = load_predictors(params, device)
    inception, reason = fid_model(len(rows), cfg.fid_dims, device)
    results, grid, truth_colour = score(tiles, predictors, cfg, device, inception)

    metrics: dict = {"test_tiles": len(rows), "test_images": len({r["image_id"] for r in rows}),
                     "grey_tiles_skipped": skipped, "fid_reason": reason,
                     "colourfulness_truth": truth_colour, "grey": results[GREY]}
    for (name, stage), m in results.items():
        if (name, stage) != GREY:
            metrics.setdefault(name, {})[stage] = m
    metrics = round_sig(metrics)
    out = Path(paths["metrics"])
    write_json_atomic(out / "colorization.json", metrics)
    columns = [("input (grey)", grid[GREY])]
    columns += [(f"{name}\n{stage}", grid[(name, stage)]) for name, stage in grid if (name, stage) != GREY]
    columns.append(("truth", tiles[:cfg.grid_samples].float() / 255.0))
    size = save_grid(out / "figures" / "colorization_grid.png", columns)
    print(f"evaluate: wrote {out}/colorization.json, figures/colorization_grid.png "
          f"({size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
