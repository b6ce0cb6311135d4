"""dedup: resized copies, re-encodes and exact copies go; distinct images and the largest stay."""

from __future__ import annotations

import io
import json
import shutil

import numpy as np
import pytest
from PIL import Image

from pipeline.errors import AstroganError
from pipeline.fsio import MANIFEST, read_jsonl
from pipeline.sources.common import store_image
from pipeline.stages import dedup


def _store(raw, source, image_id, im: Image.Image, fmt="JPEG", quality=95):
    buf = io.BytesIO()
    im.save(buf, format=fmt, **({"quality": quality} if fmt == "JPEG" else {}))
    store_image(raw / source, image_id, buf.getvalue(), {"source": source}, max_pixels=0)


@pytest.fixture
def raw(tmp_path, real_images):
    """Two sources: 5 distinct real images, a half-size PNG copy, a q=60 re-encode, an exact copy."""
    raw = tmp_path / "raw"
    ims = [Image.open(p).convert("RGB") for p in real_images[:5]]
    for i, im in enumerate(ims):
        _store(raw, "a", f"a{i}", im)
    _store(raw, "b", "b-small", ims[0].resize((384, 288), Image.Resampling.LANCZOS), fmt="PNG")
    _store(raw, "b", "b-requal", ims[1], quality=60)
    shutil.copy(raw / "a" / "a2.jpg", raw / "b" / "b-exact.jpg")
    rec = dict(read_jsonl(raw / "a" / MANIFEST)[2], id="b-exact", file="b-exact.jpg")
    (raw / "b" / MANIFEST).open("a").write(json.dumps(rec) + "\n")
    _store(raw, "c", "c-ignored", ims[0])  # not in the sources list
    return raw


def test_copies_dropped_distinct_and_largest_kept(raw):
    kept, dropped = dedup.run(raw, ["a", "b"], hash_size=8, max_distance=6)
    assert [r["id"] for r in kept] == ["a0", "a1", "a2", "a3", "a4"]
    assert all(r["path"].startswith(str(raw)) for r in kept)
    by = {d["id"]: d for d in dropped}
    assert set(by) == {"b-small", "b-requal", "b-exact"}
    assert by["b-small"]["duplicate_of"] == "a0" and by["b-small"]["reason"].startswith("near")
    assert by["b-requal"]["duplicate_of"] == "a1" and by["b-requal"]["distance"] <= 6
    assert by["b-exact"] == {"id": "b-exact", "path": str(raw / "b" / "b-exact.jpg"), "duplicate_of": "a2",
                             "distance": 0, "reason": "exact (same sha256)"}


def test_largest_of_a_group_wins_whatever_the_order(raw, real_images):
    big = Image.open(real_images[3]).convert("RGB").resize((1000, 750), Image.Resampling.LANCZOS)
    _store(raw, "b", "b-big", big)
    kept, dropped = dedup.run(raw, ["a", "b"], hash_size=8, max_distance=6)
    assert "b-big" in {r["id"] for r in kept} and "a3" not in {r["id"] for r in kept}
    assert {d["id"]: d["duplicate_of"] for d in dropped}["a3"] == "b-big"


def test_transitive_groups_and_ties_by_id():
    recs = [{"id": i, "sha256": i, "width": 10, "height": 10, "path": i} for i in "dcba"]
    bits = np.zeros((4, 64), np.uint8)
    bits[1, :3] = 1  # d-c: 3, c-b: 3 apart, d-b: 6 -> one group through c
    bits[2, :6] = 1
    bits[3, 30:] = 1  # a is far from all
    kept, dropped = dedup.dedup(recs, np.packbits(bits, axis=1), max_distance=3)
    assert sorted(r["id"] for r in kept) == ["a", "b"]
    assert {(d["id"], d["duplicate_of"], d["distance"]) for d in dropped} == {("d", "b", 6), ("c", "b", 3)}


def test_unreadable_image_is_reported_not_fatal(raw, capsys):
    (raw / "a" / "a4.jpg").write_bytes(b"\xff\xd8 broken")
    kept, dropped = dedup.run(raw, ["a"], hash_size=8, max_distance=6)
    assert len(kept) == 4 and dropped[-1]["id"] == "a4" and dropped[-1]["reason"].startswith("unreadable")
    assert "a4.jpg" in capsys.readouterr().err


def test_pool_hashes_match_serial(real_images):
    paths = real_images[:17]  # >= 16: the process pool is used
    pooled = dedup.hash_all(paths, 8)
    assert all(np.array_equal(p, dedup.phash_file((str(f), 8))) for p, f in zip(pooled, paths, strict=True))


def test_stage_writes_manifest_dropped_and_metrics(project, raw):
    project.params["paths"]["raw"] = str(raw)
    project.params["scrape"]["sources"] = ["a", "b"]
    project.save()
    dedup.main()
    unique = read_jsonl(project.path("unique") / MANIFEST)
    dropped = read_jsonl(project.path("unique") / "dropped.jsonl")
    assert len(unique) == 5 and {"path", "sha256", "credit"} <= set(unique[0])
    assert sorted(d["id"] for d in dropped) == ["b-exact", "b-requal", "b-small"]
    metrics = json.loads((project.path("metrics") / "data.dedup.json").read_text())
    assert metrics == {"images_in": 8, "images_kept": 5, "images_dropped": 3}


def test_missing_source_manifest_says_which_stage(tmp_path):
    with pytest.raises(AstroganError, match=r"scrape@nope"):
        dedup.load_records(tmp_path, ["nope"])
