"""Stage ``evaluate``: score the colorizers on the test tiles (paper section 4.1, Tables 1-5, Fig. 7).

Reads the test split, skips grey tiles (no colour to predict), colorizes every remaining tile with
the grey baseline and each pre-trained / fine-tuned generator, and writes
``{paths.metrics}/colorization.json`` (floats to 6 significant digits, FID ``null`` with
``fid_reason`` when it cannot be estimated), and ``figures/colorization_grid.png`` (the
``report`` stage renders them into ``report.md``).
With ``evaluate.strengths``, each model's a*b scale (``astrogan colorize --strength``) is chosen on
the packed val colour tiles (lowest a*b L1 among the strengths that do no harm on faint images:
``evaluate.no_harm_faint``, ``colorizer.choose_strength``) and the model is scored on test at that scale too
(``<name>.<stage>_val_strength``: strength, val a*b L1 per strength, the test metrics).
``bounds``: how far colour can come from grey on these tiles (``pipeline.colour_bounds``: a
luminance lookup from the train split, retrieval, and oracles, each against grey).
``guided``: each guided model (generator ``guided_unet``) with ``evaluate.guided_points`` colour
points revealed from the truth, and with a reference tile of the same image, beside the non-learned
baselines (``pipeline.guided_eval``); the curve goes to ``plots/guided.csv``.
Run from the project root: ``python -m pipeline.stages.evaluate``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from pipeline import colour_bounds, fid, guided_eval
from pipeline.colorizer import choose_strength, colorize_batch, grey_baseline, is_guided, scale_ab, spread_val
from pipeline.data import load_tiles, read_packed, read_split
from pipeline.errors import AstroganError, run_main
from pipeline.fsio import write_csv_atomic, write_json_atomic
from pipeline.metrics import colorization_tile_metrics, colourfulness, mean_over_tiles, round_sig
from pipeline.models import load_generator
from pipeline.params import load_params, resolve_device, seed_everything
from pipeline.paths import PHASES, checkpoint, figure, metrics_file
from pipeline.report import NOT_MODELS, save_grid

Key = tuple[str, str | None]  # (model name, stage); ("grey", None) is the baseline
GREY: Key = ("grey", None)


@dataclass(frozen=True)
class EvalConfig:
    """``evaluate`` params: batch size at inference, tiles in the figure, Inception feature size."""

    batch_size: int = 16
    grid_samples: int = 6
    fid_dims: int = 2048
    strengths: tuple[float, ...] = ()   # a*b scales tried on the val tiles ("--strength" chosen there)
    val_max_tiles: int = 256            # at most this many val tiles (evenly spread) choose it
    faint: float = 0.2                  # no harm: the strength must not lose to grey on truth a*b * faint
    confidence: float = 0.0             # ... at this bootstrap confidence over the val images

    @classmethod
    def from_params(cls, params: dict) -> EvalConfig:
        e = params["evaluate"]
        return cls(int(e["batch_size"]), int(e["grid_samples"]), int(e["fid_dims"]),
                   tuple(float(v) for v in e.get("strengths") or ()), int(e.get("val_max_tiles", 256)),
                   float(e.get("no_harm_faint", 0.0)), float(e.get("no_harm_confidence", 0.0)))


def colour_rows(rows: list[dict[str, str]]) -> tuple[list[dict[str, str]], int]:
    """Test rows without grey tiles (``grey == "1"``), sorted by tile_id; and how many were skipped."""
    kept = sorted((r for r in rows if r.get("grey") != "1"), key=lambda r: r["tile_id"])
    return kept, len(rows) - len(kept)


def load_predictors(params: dict, device: torch.device) -> dict[Key, Callable]:
    """The grey baseline, then each model of ``colorize.pretrain`` / ``finetune`` (per name: pretrained,
    finetuned), as functions RGB (N, 3, H, W) in [0, 1] -> RGB in [0, 1] on ``device``."""
    preds: dict[Key, Callable] = {GREY: grey_baseline}
    lists = {"pretrained": params["colorize"]["pretrain"], "finetuned": params["colorize"]["finetune"]}
    for name in dict.fromkeys([*lists["pretrained"], *lists["finetuned"]]):
        if name in NOT_MODELS["colorize"]:
            raise AstroganError(f"params.yaml: model name {name!r} clashes with a metrics key; rename it")
        for stage in (s for s in PHASES if name in lists[s]):
            model, meta = load_generator(checkpoint(params["paths"], "colorize", name, stage), device)
            preds[(name, stage)] = functools.partial(colorize_batch, model, color_space=meta["color_space"])
    return preds


@torch.no_grad()
def score(tiles: torch.Tensor, predictors: dict[Key, Callable], cfg: EvalConfig, device: torch.device,
          inception: torch.nn.Module | None, derived: dict[Key, tuple[Key, float]] | None = None
          ) -> tuple[dict[Key, dict], dict[Key, torch.Tensor], float]:
    """Metrics per predictor, its first ``grid_samples`` predictions (CPU, [0, 1]), truth colourfulness.

    ``derived``: key -> (a predictor's key, strength): that predictor's output with its a*b scaled
    (``colorizer.scale_ab``), scored too without another forward pass.

    ``tiles``: uint8 (N, 3, H, W). Batches stream through every predictor, so memory holds one batch
    of predictions plus Inception features, never all predictions. FID is None without ``inception``.
    """
    derived = derived or {}
    keys = [*predictors, *derived]
    per_tile = {k: [] for k in keys}
    acts: dict = {k: [] for k in [*keys, "truth"]}
    grid = {k: [] for k in keys}
    truth_colour = []
    for i in tqdm(range(0, len(tiles), cfg.batch_size), desc="evaluate", unit="batch"):
        rgb = tiles[i:i + cfg.batch_size].to(device).float().div_(255.0)
        truth_colour.append(colourfulness(rgb * 255.0).cpu())
        if inception is not None:
            acts["truth"].append(fid.activations(inception, rgb))
        preds = {key: fn(rgb) for key, fn in predictors.items()}
        preds |= {key: scale_ab(preds[base], rgb, s) for key, (base, s) in derived.items()}
        for key, pred in preds.items():
            per_tile[key].append(colorization_tile_metrics(pred, rgb))
            if inception is not None:
                acts[key].append(fid.activations(inception, pred))
            grid[key].append(pred[:max(cfg.grid_samples - i, 0)].cpu())
    results = {}
    for key in keys:
        results[key] = mean_over_tiles(per_tile[key])
        results[key]["fid"] = (fid.fid_from_activations(torch.cat(acts[key]), torch.cat(acts["truth"]))
                               if inception is not None else None)
    return results, {k: torch.cat(v) for k, v in grid.items()}, float(torch.cat(truth_colour).mean())


def score_guided(params: dict, tiles: torch.Tensor, image_ids: list[str], device: torch.device,
                 strengths: dict | None = None) -> dict:
    """Guided colour (``pipeline.guided_eval``) of each guided model and phase, keyed "name (phase)";
    with no guided model in the run, the non-learned baselines alone, keyed "baselines". ``strengths``:
    (name, phase) -> the val-chosen strength that the no-hint path is scored at."""
    e, lists = params["evaluate"], {"pretrained": params["colorize"]["pretrain"],
                                    "finetuned": params["colorize"]["finetune"]}
    models = {}
    for stage, names in lists.items():
        for name in names:
            if is_guided(params["colorize"]["zoo"][name]):
                model, _ = load_generator(checkpoint(params["paths"], "colorize", name, stage), device)
                models[f"{name} ({stage})"] = (model, (strengths or {}).get((name, stage), 1.0))
    counts = [int(n) for n in e.get("guided_points", guided_eval.COUNTS)]
    with tqdm(total=len(tiles), desc=f"guided {', '.join(models) or 'baselines'}", unit="tile") as bar:
        return guided_eval.score_models(models, tiles, image_ids, counts=counts, seed=int(params["seed"]),
                                        patch=int(e.get("guided_patch", 3)), device=device,
                                        progress=bar.update)


def write_guided_plot(metrics_dir: Path, guided: dict) -> None:
    """``plots/guided.csv``: a*b* L1 against the number of points, per guided model, with the nearest-
    hint baseline and grey (``dvc plots`` draws it)."""
    first = next(iter(guided.values()))["points"]
    models = [key for key, r in guided.items() if "model" in r["points"][next(iter(first))]]
    rows = [{"points": int(n), "grey": first[n]["grey"], "nearest_hint": first[n]["nearest"],
             **{key: guided[key]["points"][n]["model"] for key in models}} for n in first]
    write_csv_atomic(metrics_dir / "plots" / "guided.csv", rows, ["points", "grey", "nearest_hint", *models])


def main() -> None:
    params = load_params()
    seed_everything(params["seed"])
    torch.backends.cudnn.benchmark = False  # same inputs, same kernels: a byte-identical figure
    torch.backends.cudnn.deterministic = True
    cfg, paths, device = EvalConfig.from_params(params), params["paths"], resolve_device(params["device"])
    rows, skipped = colour_rows(read_split(paths["split"], "test"))
    if not rows:
        raise AstroganError(f"{paths['split']}/test.csv: no colour test tiles ({skipped} grey skipped); "
                            "add images or raise split.test_fraction")
    print(f"evaluate: {len(rows)} test tiles, {skipped} grey tiles skipped, device {device}")
    tiles = load_tiles(paths["tiles"], [r["tile_id"] for r in rows])
    predictors = load_predictors(params, device)
    chosen, derived = {}, {}
    val, val_rows = read_packed(paths["packed"], "val", colour_only=True) if cfg.strengths else ([], [])
    val, val_images = spread_val(val, val_rows, cfg.val_max_tiles)
    for key in [k for k in predictors if k != GREY and len(val)]:
        chosen[key] = choose_strength(predictors[key], val, cfg.strengths, cfg.batch_size, device, cfg.faint,
                                      val_images, cfg.confidence, int(params["seed"]))
        derived[(key[0], f"{key[1]}_val_strength")] = (key, chosen[key][0])
    inception, reason = fid.fid_model(len(rows), cfg.fid_dims, device)
    results, grid, truth_colour = score(tiles, predictors, cfg, device, inception, derived)

    metrics: dict = {"test_tiles": len(rows), "test_images": len({r["image_id"] for r in rows}),
                     "grey_tiles_skipped": skipped, "fid_reason": reason,
                     "colourfulness_truth": truth_colour, "grey": results[GREY]}
    for (name, stage), m in results.items():
        if (name, stage) != GREY:
            base = (name, stage.removesuffix("_val_strength"))
            if base in chosen and stage != base[1]:
                m = {"strength": chosen[base][0], "val_ab_l1_by_strength": chosen[base][1], **m}
            metrics.setdefault(name, {})[stage] = m
    if paths.get("packed"):
        metrics["bounds"] = colour_bounds.bounds(Path(paths["packed"]), "test")
    # always written: a run without a guided model gets the non-learned baselines
    metrics["guided"] = score_guided(params, tiles, [r["image_id"] for r in rows], device,
                                     {key: value[0] for key, value in chosen.items()})
    write_guided_plot(Path(paths["metrics"]), metrics["guided"])
    print(f"evaluate: wrote {paths['metrics']}/plots/guided.csv")
    metrics = round_sig(metrics)
    write_json_atomic(metrics_file(paths, "colorize"), metrics)
    columns = [("input (grey)", grid[GREY])]
    columns += [(f"{name}\n{stage}", grid[(name, stage)]) for name, stage in grid
                if (name, stage) != GREY and not stage.endswith("_val_strength")]
    columns.append(("truth", tiles[:cfg.grid_samples].float() / 255.0))
    size = save_grid(figure(paths, "colorization_grid.png"), columns)
    print(f"evaluate: wrote {metrics_file(paths, 'colorize')}, figures/colorization_grid.png "
          f"({size / 1e6:.2f} MB)")


if __name__ == "__main__":
    run_main(main)
