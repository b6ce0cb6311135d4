"""Stage ``split``: train/val/test by source image, from a hash of its id (no seed, stable forever).

    python -m pipeline.stages.split

An image goes to test when ``int(sha256(image_id)) / 2**256 < split.test_fraction``; its tiles
follow it, so no image straddles the split, and adding images never moves an existing one. If
that leaves test empty while there are >= 2 images, the image with the smallest hash goes to
test (deterministic: the one that would enter first as the fraction grows). Fewer than 2 images
is an error. Of the other images, those with ``test_fraction <= hash < test_fraction +
split.val_fraction`` go to val (early stopping and best-checkpoint choice in ``finetune``), the rest
to train: val is carved out of the train side only, so test membership never depends on it.
Writes ``<paths.split>/train.csv``, ``val.csv`` and ``test.csv`` (the columns of tiles.csv).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from pipeline.data import choose_test_images, image_hash
from pipeline.errors import AstroganError, run_main
from pipeline.fsio import read_csv_frame, write_frame_atomic
from pipeline.params import load_params

PARTS = ("train", "val", "test")


def choose_val_images(image_ids: set[str], test: set[str], test_fraction: float, val_fraction: float
                      ) -> set[str]:
    """The non-test image ids with hash in [test_fraction, test_fraction + val_fraction) (may be empty);
    at least one image stays in train."""
    val = {i for i in image_ids - test if test_fraction <= image_hash(i) < test_fraction + val_fraction}
    if val and val == image_ids - test:
        raise AstroganError(f"split: split.val_fraction {val_fraction} leaves no train image; lower it")
    return val


def assign_images(image_ids: set[str], test_fraction: float, val_fraction: float) -> dict[str, str]:
    """{image_id: "train", "val" or "test"}: test by ``choose_test_images``, val from the rest."""
    test = choose_test_images(image_ids, test_fraction)
    val = choose_val_images(image_ids, test, test_fraction, val_fraction)
    return {i: "test" if i in test else "val" if i in val else "train" for i in image_ids}


def assign_rows(tiles: pd.DataFrame, test_fraction: float, val_fraction: float) -> dict[str, pd.DataFrame]:
    """{"train", "val", "test"}: the tiles (rows of tiles.csv) of each part's images; order kept."""
    image_ids = tiles.get("image_id", pd.Series(dtype=str))  # no column: an empty tiles.csv
    part = image_ids.map(assign_images(set(image_ids), test_fraction, val_fraction))
    return {name: tiles[part == name] for name in PARTS}


def main() -> None:
    params = load_params()
    paths = params["paths"]
    tiles_csv = Path(paths["tiles"]) / "tiles.csv"
    if not tiles_csv.is_file():
        raise AstroganError(f"{tiles_csv}: missing; run `dvc repro tile` first")
    tiles = read_csv_frame(tiles_csv)
    sp = params["split"]
    parts = assign_rows(tiles, float(sp["test_fraction"]), float(sp.get("val_fraction", 0.0)))
    out = Path(paths["split"])
    for name, part in parts.items():
        write_frame_atomic(out / f"{name}.csv", part)
    print("split: " + ", ".join(f"{name} {len(part)} tiles of {part['image_id'].nunique()} images"
                                for name, part in parts.items()))
    if parts["val"].empty and float(sp.get("val_fraction", 0.0)) > 0:
        print(f"split: warning: no image's hash fell in the val range ({tiles['image_id'].nunique()} images, "
              f"split.val_fraction {sp['val_fraction']}): finetune runs without validation and keeps its "
              "last step; add images or raise split.val_fraction")


if __name__ == "__main__":
    run_main(main)
