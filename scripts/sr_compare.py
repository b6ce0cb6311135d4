"""Score SR checkpoints side by side on a packed split: PSNR/SSIM on Y and RGB, and the gain over bicubic.

    python scripts/sr_compare.py RUN/data/packed val a/pretrained.pt b/pretrained.pt --out compare.json
    python scripts/sr_compare.py RUN/data/packed val release:edsr_x4_esahubble      # a release, as --model

The same measurement as the registry's (``pipeline.release.evaluate_superres``: LR by the training
degradation, 4 px border), on the GPU when there is one. Each row adds what the checkpoint's card
says of its training (architecture, parameters, steps, batch, crop, time limit, device), so a
longer schedule and a bigger model are compared at the cost they took. The best gain on Y is
listed first and named in ``best``; the JSON is written atomically.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline import weights  # noqa: E402
from pipeline.data import read_packed  # noqa: E402
from pipeline.errors import AstroganError, run_main  # noqa: E402
from pipeline.fsio import write_json_atomic  # noqa: E402
from pipeline.inference import release_spec  # noqa: E402
from pipeline.models import load_generator  # noqa: E402
from pipeline.release import evaluate_superres  # noqa: E402


def compare(packed: Path, split: str, checkpoints: list[str], device: torch.device, max_tiles: int = 0
            ) -> dict:
    """Each of ``checkpoints`` (a .pt file, or release weights as ``astrogan --model`` names them) scored
    on ``split``, best gain on Y first."""
    tiles, _ = read_packed(packed, split)
    if max_tiles and len(tiles) > max_tiles:  # evenly spread, as the evaluate stage's val subset
        tiles = tiles[torch.linspace(0, len(tiles) - 1, max_tiles).long()]
    tiles = tiles.to(device)
    rows = []
    for ckpt in checkpoints:
        load = weights.load_release if release_spec(ckpt) else load_generator
        model, meta = load(ckpt, device)
        card = meta.get("card", {})
        if card.get("task", "superres") != "superres":
            raise AstroganError(f"{ckpt}: a {card.get('task')} model, not super-resolution; "
                                "pass SR checkpoints")
        t0 = time.perf_counter()
        scores = evaluate_superres(model, tiles, scale=int(card.get("scale", 4)), batch=16)
        rows.append({"checkpoint": str(ckpt), "arch": meta["arch"], "arch_kwargs": meta["arch_kwargs"],
                     "parameters": sum(p.numel() for p in model.parameters()), "steps": meta.get("step"),
                     **{k: card.get(k) for k in ("batch_size", "crop", "time_limit_s", "device",
                                                 "precision")},
                     "eval_seconds": round(time.perf_counter() - t0, 1), **scores})
        print(f"{ckpt}: {meta['arch']} {rows[-1]['parameters']:,} params, step {meta.get('step')}: "
              f"PSNR-Y {scores['psnr_y']:.3f} dB, +{scores['gain_psnr_y']:.3f} over bicubic")
    rows.sort(key=lambda r: -r["gain_psnr_y"])
    return {"split": split, "packed": str(packed), "tiles": len(tiles), "device": str(device),
            "best": rows[0]["checkpoint"] if rows else None, "models": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("packed", type=Path, help="a pack stage output folder (<split>.npy, <split>.csv)")
    ap.add_argument("split", help="val to choose, test to report")
    ap.add_argument("checkpoints", nargs="+", help=".pt checkpoints, or release weights (release:NAME)")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--max-tiles", type=int, default=0, help="score at most this many tiles (0: all)")
    ap.add_argument("--device", default="auto", help="auto (cuda when available) | cpu | cuda")
    args = ap.parse_args()
    auto = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(auto if args.device == "auto" else args.device)
    for ckpt in args.checkpoints:
        if not release_spec(ckpt) and not Path(ckpt).is_file():
            raise AstroganError(f"{ckpt}: checkpoint not found; check the path (a phase that did not finish "
                                "writes none)")
    result = compare(args.packed, args.split, args.checkpoints, device, args.max_tiles)
    if args.out:
        os.makedirs(args.out.parent, exist_ok=True)
        write_json_atomic(args.out, result)
    print(json.dumps({"best": result["best"], "gains_psnr_y": [(r["arch"], r["gain_psnr_y"])
                                                              for r in result["models"]]}))


if __name__ == "__main__":
    run_main(main)
