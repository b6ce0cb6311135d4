"""Stage ``pack``: each split's tiles decoded once into one uint8 array file for training.

    python -m pipeline.stages.pack

For ``train``, ``val`` and ``test`` of ``<paths.split>``: ``<paths.packed>/<split>.npy`` (uint8,
(N, 3, S, S), NumPy's .npy format, memory-mappable) and ``<split>.csv`` (row, tile_id, image_id,
grey: row i of the csv is array row i, in the split's order). Tiles are decoded by a thread pool
(PIL releases the GIL while decoding) straight into the memory-mapped output, which is renamed into
place when complete. Training reads these arrays instead of decoding PNGs per step or per run.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from tqdm import tqdm

from pipeline.data import PACKED_COLUMNS, load_rgb, packed_paths, read_split
from pipeline.decode import InputError
from pipeline.errors import AstroganError, run_main
from pipeline.fsio import write_csv_atomic, write_json_atomic
from pipeline.params import load_params

SPLITS = ("train", "val", "test")


def pack_split(tiles_dir: Path, rows: list[dict], npy: Path, side: int) -> None:
    """Decode the ``side`` px tiles of ``rows`` into ``npy`` (written as ``<npy>.part``, then renamed);
    a tile of another size or an unreadable one stops with one line."""
    part = npy.with_name(npy.name + ".part")
    if not rows:  # NumPy cannot memory-map an empty array: write it plainly
        np.save(part, np.zeros((0, 3, side, side), np.uint8))
        os.replace(part.with_name(part.name + ".npy"), npy)
        return
    out = np.lib.format.open_memmap(part, mode="w+", dtype=np.uint8, shape=(len(rows), 3, side, side))

    def put(i: int) -> None:
        path = tiles_dir / f"{rows[i]['tile_id']}.png"
        try:
            rgb = load_rgb(path)
        except InputError as e:  # it names the file
            raise AstroganError(f"unreadable tile {e}; rerun `dvc repro tile`") from None
        if rgb.shape[:2] != (side, side):
            raise AstroganError(f"{path}: {rgb.shape[1]}x{rgb.shape[0]}, not {side}x{side} like the others; "
                                "rerun `dvc repro tile`")
        out[i] = rgb.transpose(2, 0, 1)

    try:
        with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
            list(tqdm(pool.map(put, range(len(rows))), total=len(rows), desc=f"pack {npy.stem}"))
        out.flush()
        with open(part, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(part, npy)
    finally:
        part.unlink(missing_ok=True)


def pack_all(tiles_dir: Path, split_dir: Path, packed_dir: Path, side: int) -> dict:
    """Pack train, val and test of ``split_dir``; returns {split: {tiles, bytes, size}}."""
    packed_dir.mkdir(parents=True, exist_ok=True)
    summary = {}
    for split in SPLITS:
        rows = read_split(split_dir, split)
        npy, csv_path = packed_paths(packed_dir, split)
        pack_split(tiles_dir, rows, npy, side)
        index = [{"row": i, "tile_id": r["tile_id"], "image_id": r["image_id"], "grey": r.get("grey") or "0"}
                 for i, r in enumerate(rows)]
        write_csv_atomic(csv_path, index, PACKED_COLUMNS)
        summary[split] = {"tiles": len(rows), "bytes": os.path.getsize(npy), "size": side}
    write_json_atomic(packed_dir / "summary.json", summary)
    return summary


def main() -> None:
    params = load_params()
    paths = params["paths"]
    summary = pack_all(Path(paths["tiles"]), Path(paths["split"]), Path(paths["packed"]),
                       int(params["tile"]["size"]))
    print(", ".join(f"{k}: {v['tiles']} tiles ({v['bytes'] / 2**20:.1f} MiB)" for k, v in summary.items()))


if __name__ == "__main__":
    run_main(main)
