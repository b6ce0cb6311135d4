"""split: by image hash, deterministic, no straddling, new images move no old ones."""

from __future__ import annotations

import csv

import pytest

from pipeline.data import choose_test_images, image_hash
from pipeline.errors import AstroganError
from pipeline.fsio import write_csv_atomic
from pipeline.stages import split
from pipeline.stages.split import assign_rows, split_rows

FIELDS = ["tile_id", "image_id", "x", "y", "size", "content", "grey"]


def rows_for(n_images: int, tiles_per_image: int = 3, prefix: str = "img") -> list[dict]:
    return [{"tile_id": f"{prefix}{i}_0_{t}", "image_id": f"{prefix}{i}", "x": str(t * 256), "y": "0",
             "size": "256", "content": "0.5", "grey": "0"}
            for i in range(n_images) for t in range(tiles_per_image)]


def test_hash_is_sha256_fraction():
    h = image_hash("esahubble-heic0101a")
    assert 0 <= h < 1 and h == image_hash("esahubble-heic0101a") and h != image_hash("esahubble-heic0101b")


def test_deterministic_and_no_image_straddles():
    rows = rows_for(200)
    train, test = split_rows(rows, 0.1)
    assert (train, test) == split_rows(list(rows), 0.1)
    tr, te = {r["image_id"] for r in train}, {r["image_id"] for r in test}
    assert not tr & te and len(tr | te) == 200 and len(train) + len(test) == 600
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
        split_rows(rows_for(n), 0.1)


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
    rows = rows_for(300)
    train, test = split_rows(rows, 0.1)
    parts = assign_rows(rows, 0.1, 0.1)
    assert parts["test"] == test  # val changes nothing on the test side
    tr, va = {r["image_id"] for r in parts["train"]}, {r["image_id"] for r in parts["val"]}
    assert tr | va == {r["image_id"] for r in train} and not tr & va
    assert va == {i for i in tr | va if 0.1 <= image_hash(i) < 0.2} and 10 <= len(va) <= 55
    assert assign_rows(list(rows), 0.1, 0.1) == parts  # stable
    # adding images moves no existing image between train, val and test
    more = assign_rows(rows_for(400), 0.1, 0.1)
    for name in parts:
        old = {r["image_id"] for r in parts[name]}
        assert {r["image_id"] for r in more[name]} & {f"img{i}" for i in range(300)} == old
    assert assign_rows(rows, 0.1, 0.0)["val"] == []
    with pytest.raises(AstroganError, match="val_fraction"):
        assign_rows(rows_for(5), 0.1, 0.95)
