"""split: by image hash, deterministic, no straddling, new images move no old ones."""

from __future__ import annotations

import csv

import pandas as pd
import pytest

from pipeline.data import choose_test_images, image_hash
from pipeline.errors import AstroganError
from pipeline.fsio import read_csv_frame, write_csv_atomic, write_frame_atomic
from pipeline.stages import split
from pipeline.stages.split import assign_rows

FIELDS = ["tile_id", "image_id", "x", "y", "size", "content", "grey"]


def rows_for(n_images: int, tiles_per_image: int = 3, prefix: str = "img") -> list[dict]:
    return [{"tile_id": f"{prefix}{i}_0_{t}", "image_id": f"{prefix}{i}", "x": str(t * 256), "y": "0",
             "size": "256", "content": "0.5", "grey": "0"}
            for i in range(n_images) for t in range(tiles_per_image)]


def tiles_for(n_images: int) -> pd.DataFrame:
    return pd.DataFrame(rows_for(n_images), columns=FIELDS)


def split_ids(tiles: pd.DataFrame, test_fraction: float, val_fraction: float = 0.0) -> dict[str, list[str]]:
    """Each part's tile ids, in order."""
    return {name: list(part["tile_id"])
            for name, part in assign_rows(tiles, test_fraction, val_fraction).items()}


def images(part: pd.DataFrame) -> set[str]:
    return set(part["image_id"])


def test_hash_is_sha256_fraction():
    h = image_hash("esahubble-heic0101a")
    assert 0 <= h < 1 and h == image_hash("esahubble-heic0101a") and h != image_hash("esahubble-heic0101b")


def test_deterministic_and_no_image_straddles():
    tiles = tiles_for(200)
    parts = assign_rows(tiles, 0.1, 0.0)
    assert split_ids(tiles, 0.1) == split_ids(tiles_for(200), 0.1)
    tr, te = images(parts["train"]), images(parts["test"])
    assert parts["val"].empty and parts["train"].columns.tolist() == FIELDS
    assert not tr & te and len(tr | te) == 200 and len(parts["train"]) + len(parts["test"]) == 600
    assert list(parts["train"]["tile_id"]) == [t for t in tiles["tile_id"] if t.split("_")[0] in tr]  # order
    assert 8 <= len(te) <= 35  # ~10% of 200 images
    assert te == {i for i in tr | te if image_hash(i) < 0.1}


def test_adding_images_moves_no_existing_image():
    before = choose_test_images({f"img{i}" for i in range(100)}, 0.1)
    after = choose_test_images({f"img{i}" for i in range(150)}, 0.1)
    assert after & {f"img{i}" for i in range(100)} == before


def test_empty_test_gets_the_smallest_hash():
    ids = {"a", "b", "c"}
    assert choose_test_images(ids, 0.0) == {min(ids, key=image_hash)}


@pytest.mark.parametrize("n", [0, 1])
def test_fewer_than_two_images_is_an_error(n):
    with pytest.raises(AstroganError, match="at least 2"):
        assign_rows(tiles_for(n), 0.1, 0.0)


def test_stage_writes_train_and_test_csv(project, capsys):
    write_csv_atomic(project.path("tiles") / "tiles.csv", rows_for(30), FIELDS)
    split.main()
    out = {}
    for name in ("train", "val", "test"):
        with open(project.path("split") / f"{name}.csv", newline="") as f:
            out[name] = list(csv.DictReader(f))
        assert list(out[name][0]) == FIELDS
    assert len(out["train"]) + len(out["val"]) + len(out["test"]) == 90 and out["test"] and out["val"]
    assert "split: train" in capsys.readouterr().out


def test_val_is_carved_from_train_and_test_never_moves():
    tiles = tiles_for(300)
    no_val = split_ids(tiles, 0.1)
    parts = assign_rows(tiles, 0.1, 0.1)
    assert list(parts["test"]["tile_id"]) == no_val["test"]  # val changes nothing on the test side
    tr, va = images(parts["train"]), images(parts["val"])
    assert tr | va == {t.split("_")[0] for t in no_val["train"]} and not tr & va
    assert va == {i for i in tr | va if 0.1 <= image_hash(i) < 0.2} and 10 <= len(va) <= 55
    assert split_ids(tiles_for(300), 0.1, 0.1) == split_ids(tiles, 0.1, 0.1)  # stable
    # adding images moves no existing image between train, val and test
    more = assign_rows(tiles_for(400), 0.1, 0.1)
    for name in parts:
        assert images(more[name]) & {f"img{i}" for i in range(300)} == images(parts[name])
    assert no_val["val"] == []
    with pytest.raises(AstroganError, match="val_fraction"):
        assign_rows(tiles_for(5), 0.1, 0.95)


def test_frames_round_trip_csv_byte_for_byte(tmp_path):
    rows = [{"tile_id": 'a,"b"', "image_id": " x ", "x": "NA", "y": "", "size": "0256", "content": "1e-4",
             "grey": "0.50"}, *rows_for(2)]
    write_csv_atomic(tmp_path / "a.csv", rows, FIELDS)
    write_frame_atomic(tmp_path / "b.csv", read_csv_frame(tmp_path / "a.csv"))
    assert (tmp_path / "b.csv").read_bytes() == (tmp_path / "a.csv").read_bytes()
    write_csv_atomic(tmp_path / "c.csv", [], FIELDS)  # header only, as an empty split
    write_frame_atomic(tmp_path / "d.csv", read_csv_frame(tmp_path / "a.csv").iloc[:0])
    assert (tmp_path / "d.csv").read_bytes() == (tmp_path / "c.csv").read_bytes()
