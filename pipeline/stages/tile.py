"""Stage ``tile``: cut each kept image into ``tile.size`` squares and drop near-empty black sky.

    python -m pipeline.stages.tile

Tiles start every ``tile.stride`` px, row-major, full tiles only; an image smaller than one tile
on either side is skipped (``images_too_small``). Content score: ``pipeline.tileset``. Tiles scoring below
``tile.min_content`` are dropped. Writes ``<paths.tiles>/<image_id>_<y>_<x>.png`` (8-bit RGB),
``<paths.tiles>/tiles.csv`` (tile_id, image_id, x, y, size, content, grey) and
``<paths.metrics>/data.tile.json``. Images are read with ``pipeline.data.load_rgb`` (the project's
one decoder: RGBA on black, 16-bit over its full range, float stretched, grey repeated) on all cores.
"""

from __future__ import annotations

import os
import shutil
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from pipeline.data import load_rgb
from pipeline.decode import InputError
from pipeline.errors import AstroganError, run_main
from pipeline.fsio import MANIFEST, read_jsonl, write_csv_atomic, write_json_atomic
from pipeline.params import load_params
from pipeline.tileset import FIELDS, TileConfig, is_grey, scored_tiles


def tile_image(job: tuple[str, str, str, TileConfig]) -> dict:
    """Cut one image, write its kept tiles; return {rows, dropped, too_small, error}."""
    path, image_id, out_dir, cfg = job
    try:
        rgb = load_rgb(path)
    except Exception as e:  # one line that names the file; the other images go on
        error = str(e) if isinstance(e, InputError) else f"{path}: {type(e).__name__}: {e}"
        return {"rows": [], "dropped": 0, "too_small": False, "error": error}
    h, w = rgb.shape[:2]
    grey = int(is_grey(rgb))
    rows, dropped = [], 0
    for y, x, tile, score in scored_tiles(rgb, cfg):
        if score < cfg.min_content:
            dropped += 1
            continue
        tile_id = f"{image_id}_{y}_{x}"
        tmp = Path(out_dir) / f".{tile_id}.png.part"
        # Level 1: ~20% faster to write than 3 for ~8% more bytes; PNG encoding is this stage's cost.
        Image.fromarray(np.ascontiguousarray(tile)).save(tmp, format="PNG", compress_level=1)
        tmp.replace(Path(out_dir) / f"{tile_id}.png")
        rows.append({"tile_id": tile_id, "image_id": image_id, "x": x, "y": y, "size": cfg.size,
                     "content": round(score, 4), "grey": grey})
    too_small = h < cfg.size or w < cfg.size
    return {"rows": rows, "dropped": dropped, "too_small": too_small, "error": None}


def tile_all(records: list[dict], out_dir: Path, cfg: TileConfig, workers: int | None = None) -> dict:
    """Tile every record (``id``, ``path``) into ``out_dir`` (emptied first); return rows and counts."""
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    jobs = [(r["path"], r["id"], str(out_dir), cfg) for r in records]
    n = workers or (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
    n = max(1, min(n, len(jobs)))
    with ProcessPoolExecutor(max_workers=n) as ex:
        results = list(tqdm(ex.map(tile_image, jobs, chunksize=1), total=len(jobs), desc="tile", unit="img"))
    rows = [row for res in results for row in res["rows"]]
    for res in results:
        if res["error"]:
            tqdm.write(f"{res['error']}; skipped (rerun dedup after fixing or deleting the file)",
                       file=sys.stderr)
    metrics = {"images": len(records), "tiles_kept": len(rows),
               "tiles_dropped_empty": sum(r["dropped"] for r in results),
               "images_too_small": sum(r["too_small"] for r in results),
               "grey_tiles": sum(r["grey"] for r in rows)}
    failed = sum(1 for r in results if r["error"])
    if failed:
        metrics["images_unreadable"] = failed
    return {"rows": rows, "metrics": metrics}


def main() -> None:
    params = load_params()
    paths, cfg = params["paths"], TileConfig.from_params(params)
    manifest = Path(paths["unique"]) / MANIFEST
    records = read_jsonl(manifest)
    if not records:
        raise AstroganError(f"{manifest}: missing or empty; run `dvc repro dedup` first")
    out = Path(paths["tiles"])
    res = tile_all(records, out, cfg)
    write_csv_atomic(out / "tiles.csv", res["rows"], FIELDS)
    write_json_atomic(Path(paths["metrics"]) / "data.tile.json", res["metrics"])
    m = res["metrics"]
    print(f"tile: {m['images']} images -> {m['tiles_kept']} tiles kept, {m['tiles_dropped_empty']} empty "
          f"dropped, {m['images_too_small']} images too small, {m['grey_tiles']} grey tiles")


if __name__ == "__main__":
    run_main(main)
