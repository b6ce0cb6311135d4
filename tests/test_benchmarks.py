"""The training-throughput benchmark runs end to end at tiny size on the CPU (timings not asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow  # trains seven models for a few steps each
def test_train_throughput_quick_writes_every_model(tmp_path):
    out = tmp_path / "tt.json"
    done = subprocess.run([sys.executable, "-m", "benchmarks.train_throughput", "--quick", "--packed",
                           str(tmp_path / "none"), "--max-tiles", "16", "--out", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    res = json.loads(out.read_text())
    assert res["quick"] and res["data"].startswith("16 tiles of") and res["torch"]
    names = [r["model"] for r in res["results"]]
    assert names == ["resnet18_lab", "resnet18_rgb", "unet_rgb", "srresnet", "edsr", "wdsr", "edsr_gan"]
    for r in res["results"]:
        assert r["real_img_per_s"] > 0 and r["synthetic_img_per_s"] > 0 and r["gflop_per_image"] > 0
        assert abs(r["feed_ratio"] - r["real_img_per_s"] / r["synthetic_img_per_s"]) < 0.01
    # FLOPs grow with the work: a GAN step of EDSR costs more than its pixel-loss step
    by = {r["model"]: r for r in res["results"]}
    assert by["edsr_gan"]["gflop_per_image"] > by["edsr"]["gflop_per_image"]
    assert res["fid_features"]["img_per_s"] > 0 and res["epoch_resnet18_lab"]["train_tiles"] == 16
