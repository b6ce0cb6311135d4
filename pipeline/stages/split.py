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

from pipeline.data import choose_test_images, image_hash
from pipeline.errors import AstroganError, run_main
from pipeline.fsio import read_csv, write_csv_atomic
from pipeline.params import load_params


def split_rows(rows: list[dict], test_fraction: float) -> tuple[list[dict], list[dict]]:
    """(train, test) tile rows, split by their ``image_id``; row order kept."""
    test = choose_test_images({r["image_id"] for r in rows}, test_fraction)
    return [r for r in rows if r["image_id"] not in test], [r for r in rows if r["image_id"] in test]


def choose_val_images(image_ids: set[str], test: set[str], test_fraction: float, val_fraction: float
                      ) -> set[str]:
    """The non-test image ids with hash in [test_fraction, test_fraction + val_fraction) (may be empty);
    at least one image stays in train."""
    val = {i for i in image_ids - test if test_fraction <= image_hash(i) < test_fraction + val_fraction}
    if val and val == image_ids - test:
        raise AstroganError(f"split: split.val_fraction {val_fraction} leaves no train image; lower it")
    return val


def assign_rows(rows: list[dict], test_fraction: float, val_fraction: float) -> dict[str, list[dict]]:
    """{"train", "val", "test"} tile rows by ``image_id``; test exactly as :func:`split_rows`; order kept."""
    ids = {r["image_id"] for r in rows}
    test = choose_test_images(ids, test_fraction)
    val = choose_val_images(ids, test, test_fraction, val_fraction)
    return {"train": [r for r in rows if r["image_id"] not in test | val],
            "val": [r for r in rows if r["image_id"] in val],
            "test": [r for r in rows if r["image_id"] in test]}


def count_images(rows: list[dict]) -> int:
    return len({r["image_id"] for r in rows})


def main() -> None:
    params = load_params()
    paths = params["paths"]
    tiles_csv = Path(paths["tiles"]) / "tiles.csv"
    if not tiles_csv.is_file():
        raise AstroganError(f"{tiles_csv}: missing; run `dvc repro tile` first")
    rows = read_csv(tiles_csv)
    fields = list(rows[0]) if rows else ["tile_id", "image_id", "x", "y", "size", "content", "grey"]
    sp = params["split"]
    parts = assign_rows(rows, float(sp["test_fraction"]), float(sp.get("val_fraction", 0.0)))
    out = Path(paths["split"])
    for name, part in parts.items():
        write_csv_atomic(out / f"{name}.csv", part, fields)
    print("split: " + ", ".join(f"{name} {len(part)} tiles of {count_images(part)} images"
                                for name, part in parts.items()))
    if not parts["val"] and float(sp.get("val_fraction", 0.0)) > 0:
        print(f"split: warning: no image's hash fell in the val range ({count_images(rows)} images, "
              f"split.val_fraction {sp['val_fraction']}): finetune runs without validation and keeps its "
              "last step; add images or raise split.val_fraction")


if __name__ == "__main__":
    run_main(main)
