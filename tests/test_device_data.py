"""scripts/device_data.py (a run's packed tiles in parts that fit the GPU machine's transfer cap),
scripts/sr_compare.py and scripts/gpu_release.sh, at tiny sizes on the CPU."""

from __future__ import annotations

import csv
import importlib.util
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.data import PACKED_COLUMNS

ROOT = Path(__file__).resolve().parents[1]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / f"scripts/{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


dd = _load("device_data")
TILE = 64


def _texture(seed: int, size: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    img = np.stack([np.sin((3 + c + seed) * np.pi * xx * yy) ** 2 for c in range(3)], -1)
    return (np.clip(img * 0.8 + rng.normal(0, 0.05, img.shape), 0, 1) * 255).astype(np.uint8)


def _run(tmp_path: Path) -> Path:
    """A run folder as dedup + tile + pack leave it: a JPEG source and a PNG source, their 64 px tiles
    (from the decoded sources, on the tile grid) packed as train (5 JPEG + 4 PNG tiles) and val."""
    run = tmp_path / "run"
    (run / "data/raw").mkdir(parents=True)
    (run / "data/packed").mkdir(parents=True)
    (run / "data/unique").mkdir(parents=True)
    Image.fromarray(_texture(0, 192)).save(run / "data/raw/a.jpg", quality=92, subsampling=0)
    Image.fromarray(_texture(1, 128)).save(run / "data/raw/b.png")
    manifest = [{"id": "a", "path": "data/raw/a.jpg"}, {"id": "b", "path": "data/raw/b.png"}]
    (run / "data/unique/manifest.jsonl").write_text("".join(json.dumps(m) + "\n" for m in manifest))
    tiles, rows = [], []
    for iid, path in (("a", "data/raw/a.jpg"), ("b", "data/raw/b.png")):
        img = np.asarray(Image.open(run / path).convert("RGB"))
        for y in range(0, img.shape[0] - TILE + 1, TILE):
            for x in range(0, img.shape[1] - TILE + 1, TILE):
                tiles.append(img[y:y + TILE, x:x + TILE].transpose(2, 0, 1))
                rows.append({"tile_id": f"{iid}_{y}_{x}", "image_id": iid, "grey": "0"})
    splits = {"train": list(range(0, 9)) + [9, 10, 11, 12], "val": [4]}
    splits["train"].remove(4)  # 12 train tiles (8 of a, 4 of b), 1 val tile
    for split, idx in splits.items():
        np.save(run / f"data/packed/{split}.npy", np.stack([tiles[i] for i in idx]))
        with open(run / f"data/packed/{split}.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=PACKED_COLUMNS)
            w.writeheader()
            for n, i in enumerate(idx):
                w.writerow({"row": n, **rows[i]})
    return run


def test_pack_keeps_the_source_jpeg_tables_png_otherwise_and_unpack_restores_the_split(tmp_path):
    run = _run(tmp_path)
    rec = dd.pack(run, tmp_path / "dev", ["train", "val"], part_mib=0.02, min_psnr=45.0,
                  packed="data/packed", manifest="data/unique/manifest.jsonl", workers=2)
    train = rec["splits"]["train"]
    assert train["tiles"] == 12 and train["png_tiles"] == 4 and train["psnr_y_min"] >= 45.0
    assert len(train["parts"]) >= 3 and sum(p["tiles"] for p in train["parts"]) == 12
    # the JPEG tiles were encoded with a.jpg's own tables: near-lossless, not a generic quality
    with np.load(tmp_path / "dev/train-p1.npz") as z:
        meta = json.loads(z["meta"].tobytes())
        first = z["data"][z["offsets"][0]:z["offsets"][1]].tobytes()
    if meta["rows"][0]["codec"] == "jpeg":
        assert Image.open(io.BytesIO(first)).quantization == Image.open(run / "data/raw/a.jpg").quantization
    out = tmp_path / "device/data/packed"
    got = dd.unpack(tmp_path / "dev", out, ["train", "val"], workers=2)
    assert got["splits"]["train"]["parts_missing"] == [] and got["splits"]["train"]["tiles"] == 12
    assert (out / "train.csv").read_text() == (run / "data/packed/train.csv").read_text()
    a, b = np.load(out / "train.npy"), np.load(run / "data/packed/train.npy")
    assert a.shape == b.shape and a.dtype == np.uint8
    grey_rows = [i for i, r in enumerate(csv.DictReader(open(out / "train.csv"))) if r["image_id"] == "b"]
    assert np.array_equal(a[grey_rows], b[grey_rows])  # PNG: lossless
    assert np.abs(a.astype(int) - b).mean() < 1.0  # JPEG with the source's tables: within a level
    assert json.loads((out / "device_data.json").read_text())["splits"]["val"]["tiles"] == 1


def test_unpack_takes_the_parts_that_arrived_and_says_which_did_not(tmp_path):
    run = _run(tmp_path)
    dd.pack(run, tmp_path / "dev", ["train"], 0.02, 45.0, "data/packed", "data/unique/manifest.jsonl", 1)
    parts = sorted((tmp_path / "dev").glob("train-p*.npz"))
    parts[1].unlink()
    out = tmp_path / "p"
    got = dd.unpack(tmp_path / "dev", out, ["train"], workers=1)["splits"]["train"]
    assert got["parts_missing"] == [2] and 0 < got["tiles"] < 12
    rows = list(csv.DictReader(open(out / "train.csv")))
    assert [int(r["row"]) for r in rows] == list(range(len(rows)))  # renumbered, original order kept
    ids = [r["tile_id"] for r in rows]
    original = [r["tile_id"] for r in csv.DictReader(open(run / "data/packed/train.csv"))]
    assert ids == [t for t in original if t in ids]
    assert len(np.load(out / "train.npy")) == len(rows)


def test_bad_inputs_stop_with_one_line_naming_the_file(tmp_path):
    run = _run(tmp_path)
    script = [sys.executable, str(ROOT / "scripts/device_data.py")]
    res = subprocess.run([*script, "pack", "--run", str(tmp_path), "--out", str(tmp_path / "d")],
                         capture_output=True, text=True)
    assert res.returncode == 2 and "manifest.jsonl" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    dd.pack(run, tmp_path / "dev", ["train"], 1.0, 45.0, "data/packed", "data/unique/manifest.jsonl", 1)
    part = tmp_path / "dev/train-p1.npz"
    part.write_bytes(part.read_bytes()[:1000])  # a cut transfer
    res = subprocess.run([*script, "unpack", "--src", str(tmp_path / "dev"), "--packed", str(tmp_path / "o"),
                          "--splits", "train"], capture_output=True, text=True)
    assert res.returncode == 2 and "train-p1.npz" in res.stderr and "again" in res.stderr
    none = ["--src", str(tmp_path / "none"), "--packed", str(tmp_path / "o")]
    res = subprocess.run([*script, "unpack", *none],
                         capture_output=True, text=True)
    assert res.returncode == 2 and "no train-p*.npz parts" in res.stderr


def test_min_psnr_sends_a_tile_as_png_when_its_jpeg_would_lose_too_much():
    tile = _texture(3, 64)
    settings = {"qtables": {0: [99] * 64, 1: [99] * 64}, "subsampling": 0}  # a coarse table
    data, codec, score = dd.encode_tile(tile, settings, min_psnr=45.0)
    assert codec == "png" and score == 99.0
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(data)).convert("RGB")), tile)
    data, codec, score = dd.encode_tile(tile, settings, min_psnr=10.0)
    assert codec == "jpeg" and 10.0 <= score < 45.0


@pytest.mark.slow
def test_gpu_release_sr_phase_trains_both_candidates_and_ranks_them_on_val(tmp_path):
    """scripts/gpu_release.sh sr on the CPU at tiny sizes: unpack, EDSR and RCAN for 2 s each through
    release_run.py, then sr_compare.py on val."""
    run = _run(tmp_path)
    dd.pack(run, tmp_path / "dev", ["train", "val"], 1.0, 45.0, "data/packed", "data/unique/manifest.jsonl",
            1)
    out = tmp_path / "out"
    env = {**os.environ, "DEVDATA": str(tmp_path / "dev"), "WORK": str(tmp_path / "work"),
           "PYTHON": sys.executable, "BATCH": "2", "CROP": "32",
           "SR_KWARGS_EDSR": "{num_feat: 8, num_block: 1, res_scale: 1.0, global_skip: true}",
           "SR_KWARGS_RCAN": "{num_feat: 8, num_group: 1, num_block: 1, reduction: 4, global_skip: true}"}
    script = ["bash", str(ROOT / "scripts/gpu_release.sh"), str(out)]
    # calls 1 and 2 of the plan carry train parts only: `data` unpacks them and leaves val for later
    val = tmp_path / "dev/val-p1.npz"
    val.rename(tmp_path / "val-p1.npz")
    res = subprocess.run([*script, "data"], env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    record = json.loads((out / "device_data.json").read_text())["splits"]
    assert record["train"]["tiles"] == 12
    assert record["val"] == {"tiles": 0, "parts": [], "parts_missing": "all"}
    res = subprocess.run([*script, "sr", "2"], env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 2 and "no val-p*.npz parts" in res.stderr  # training needs val: one line
    res = subprocess.run([*script, "nonsense"], env=env, capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and "unknown phase nonsense" in res.stderr
    (tmp_path / "val-p1.npz").rename(val)  # call 3 brings val
    res = subprocess.run([*script, "sr", "2"], env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    compare = json.loads((out / "sr_compare.json").read_text())
    assert compare["split"] == "val" and compare["tiles"] == 1
    assert sorted(m["arch"] for m in compare["models"]) == ["edsr", "rcan"]
    gains = [m["gain_psnr_y"] for m in compare["models"]]
    assert gains == sorted(gains, reverse=True) and compare["best"] == compare["models"][0]["checkpoint"]
    for m in ("edsr", "rcan"):
        blob = torch.load(out / m / f"superres_{m}_pretrained.pt", map_location="cpu", weights_only=True)
        assert blob["arch"] == m and blob["card"]["crop"] == 32 and blob["card"]["data"]["tiles"] == 12
    assert json.loads((out / "device_data.json").read_text())["splits"]["train"]["tiles"] == 12
    # what a device call returns: at most 8 files of at most 16 MiB, two folders down, plain names
    files = [f for f in out.rglob("*") if f.is_file()]
    assert len(files) <= 8 and all(f.stat().st_size <= 16 * 2 ** 20 for f in files)
    assert all(len(f.relative_to(out).parts) <= 3 for f in files)
    assert all(re.fullmatch(r"[A-Za-z0-9._-]+", part) for f in files for part in f.relative_to(out).parts)


def test_auto_parts_leave_room_for_the_checkout_in_each_call(tmp_path):
    tree = dd.tree_mib(ROOT)
    assert 1 < tree < 60  # the tracked files of this checkout
    assert dd.auto_part_mib(ROOT) == round(dd.CAP_MIB - tree - 1.5, 1)
    assert dd.tree_mib(tmp_path) == 0.0  # not a checkout: nothing travels beside the parts
    script = [sys.executable, str(ROOT / "scripts/device_data.py")]
    args = ["pack", "--run", str(tmp_path), "--out", str(tmp_path / "d"), "--part-mib", "lots"]
    res = subprocess.run([*script, *args], capture_output=True, text=True)
    assert res.returncode == 2 and "--part-mib 'lots'" in res.stderr


def test_plan_puts_every_part_in_one_call_within_the_cap_and_val_last(tmp_path, monkeypatch):
    run = _run(tmp_path)
    dd.pack(run, tmp_path / "dev", ["train", "val"], 0.02, 45.0, "data/packed", "data/unique/manifest.jsonl",
            1)
    parts = sorted(p.as_posix() for p in (tmp_path / "dev").glob("*.npz"))
    biggest = max(Path(p).stat().st_size for p in parts) / 2 ** 20
    room = 1.5 * biggest
    monkeypatch.setattr(dd, "CAP_MIB", 0.5 + room)  # beside a non-checkout: one or two parts per call
    calls = dd.plan(tmp_path / "dev", ["train", "val"], root=tmp_path)
    carried = [p for c in calls for p in c["carry"]]
    assert sorted(carried) == parts and len(carried) == len(set(carried))
    assert all(c["mib"] <= room + 0.001 for c in calls) and len(calls) >= len(parts) / 2
    assert carried[-1].endswith("val-p1.npz") and carried[0].endswith("train-p1.npz")
    monkeypatch.setattr(dd, "CAP_MIB", 0.5 + biggest / 2)  # now a part is larger than a call's room
    with pytest.raises(dd.DeviceDataError, match="no longer fits beside the checkout"):
        dd.plan(tmp_path / "dev", ["train", "val"], root=tmp_path)


def test_qscale_coarsens_the_source_tables_for_the_size_study(tmp_path):
    run = _run(tmp_path)
    fine = dd.source_jpeg_settings(run / "data/raw/a.jpg")
    coarse = dd.source_jpeg_settings(run / "data/raw/a.jpg", qscale=3.0)
    assert all(c == min(255, max(1, round(f * 3))) for k in fine["qtables"]
               for f, c in zip(fine["qtables"][k], coarse["qtables"][k], strict=True))
    a = dd.pack(run, tmp_path / "a", ["train"], 1.0, 0.0, "data/packed", "data/unique/manifest.jsonl", 1)
    b = dd.pack(run, tmp_path / "b", ["train"], 1.0, 0.0, "data/packed", "data/unique/manifest.jsonl", 1, 3.0)
    assert b["qscale"] == 3.0 and b["splits"]["train"]["psnr_y_min"] < a["splits"]["train"]["psnr_y_min"]
    assert dd.source_jpeg_settings(run / "data/raw/b.png", qscale=3.0) is None


def test_sr_compare_scores_release_weights_as_the_cli_names_them(tmp_path):
    """``release:NAME`` is scored as a checkpoint is, with the registry's measurement."""
    run = _run(tmp_path)
    sc = _load("sr_compare")
    result = sc.compare(run / "data/packed", "val", ["release:edsr_x4_esahubble"], torch.device("cpu"))
    row = result["models"][0]
    assert result["best"] == "release:edsr_x4_esahubble" and row["arch"] == "edsr" and row["steps"] == 12800
    assert row["tiles"] == 1
    assert row["gain_psnr_y"] == pytest.approx(row["psnr_y"] - row["bicubic_psnr_y"], abs=2e-4)
