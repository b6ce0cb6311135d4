"""A reference as a user gives one: each image's left half guides its right half, with and without
the guided release's reference head (issue 18; ``docs/design.md``'s guided colour reference scores
the left half's palette on the right half at 0.73x grey).

For every image of a folder (or only those of a packed split's CSV, ``--split``), the right half is
made grey and colorized through ``astrogan colorize``'s path (``inference.colorize_image``, the
release's default tiling, ``--reference`` = the left half), once with the head and once with it
switched off (the palette through L*, what the release painted before it had one). Reported: a*b*
L1 of each against the truth, grey's, the ratio of the sums over grey's, and on how many images
the head helps or hurts, and by how much. Images whose left half is grey (a refused reference) are
left out.

    python scripts/reference_halves.py ../shared/data/esahubble-381 --split run/data/packed/test.csv \\
        --out docs/reference_halves.json
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline import color, hints, inference, weights  # noqa: E402
from pipeline.data import load_rgb  # noqa: E402
from pipeline.decode import is_image_name  # noqa: E402
from pipeline.fsio import write_json_atomic  # noqa: E402


def ab_l1(rgb: np.ndarray, truth_ab: torch.Tensor) -> float:
    t = torch.from_numpy(rgb.astype(np.float32) / 255).permute(2, 0, 1)[None]
    return float((color.rgb_to_lab(t)[0, 1:] - truth_ab).abs().mean())


def halves(images: list[Path], model: str) -> dict:
    lm, _ = inference.load_release_model(model, "colorize", torch.device("cpu"))
    head = getattr(lm.model, "reference_head", None)
    if head is None:
        raise SystemExit(f"{model}: this release has no reference head; nothing to compare")
    tile, overlap = inference.default_tiling(lm)
    rows = []
    for path in tqdm(images, desc="reference halves", unit="image"):
        rgb = load_rgb(path).astype(np.float32) / 255
        w = rgb.shape[1]
        left, right = rgb[:, : w // 2], rgb[:, w // 2:]
        try:
            pal = hints.reference_palette(left, f"{path.name} (left half)")
        except hints.HintError:
            continue
        truth = color.rgb_to_lab(torch.from_numpy(np.ascontiguousarray(right)).permute(2, 0, 1)[None])[0, 1:]
        row = {"image": path.stem, "grey": float(truth.abs().mean())}
        for label, with_head in (("head", True), ("palette", False)):
            lm.model.reference_head = head if with_head else None
            row[label] = ab_l1(inference.colorize_image(lm, right, tile=tile, overlap=overlap, reference=pal),
                               truth)
        lm.model.reference_head = head
        rows.append(row)
    if not rows:
        raise SystemExit("no colour image to score")
    diff = np.array([r["head"] - r["palette"] for r in rows])
    grey = sum(r["grey"] for r in rows)
    return {"model": model, "images": len(rows),
            "vs_grey": {k: round(sum(r[k] for r in rows) / grey, 4) for k in ("head", "palette")},
            "head_minus_palette": {"better": int((diff < 0).sum()), "worse": int((diff > 0).sum()),
                                   "median": round(float(np.median(diff)), 4),
                                   "best": round(float(diff.min()), 4), "worst": round(float(diff.max()), 4)},
            "per_image": [{k: round(v, 4) if isinstance(v, float) else v for k, v in r.items()}
                          for r in rows]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder", type=Path, help="colour images (PNG, JPEG, TIFF, FITS)")
    ap.add_argument("--split", type=Path, help="a packed split's CSV: only its images (image_id = a stem, "
                    "maybe prefixed by the source, 'esahubble-')")
    ap.add_argument("--model", default=None, help="a guided release (default: the default colorize release)")
    ap.add_argument("--out", type=Path, help="write the JSON here too")
    args = ap.parse_args()
    images = sorted(p for p in args.folder.iterdir() if is_image_name(p))
    if args.split:
        with open(args.split, newline="") as f:
            ids = {r["image_id"] for r in csv.DictReader(f)}
        images = [p for p in images if p.stem in ids or any(i.endswith("-" + p.stem) for i in ids)]
    model = args.model or f"release:{weights.default_release('colorize')}"
    result = halves(images, model if model.startswith("release:") else f"release:{model}")
    if args.out:
        write_json_atomic(args.out, result)
    print(json.dumps({k: v for k, v in result.items() if k != "per_image"}, indent=2))


if __name__ == "__main__":
    main()
