"""scripts/release_run.py: the release preset applied to params.yaml, and a whole (tiny) release run
from a folder of images to the generators, cards and summary in --out, without DVC."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from pipeline.errors import AstroganError

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("release_run", ROOT / "scripts/release_run.py")
release_run = importlib.util.module_from_spec(spec)
spec.loader.exec_module(release_run)


def test_the_preset_names_only_keys_of_params_yaml_and_plans_the_dag_in_order():
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    preset = yaml.safe_load((ROOT / "params.release.yaml").read_text())
    for key, value in preset.items():
        release_run.set_dotted(params, key, value)
    assert params["superres"]["zoo"]["edsr"]["generator_kwargs"]["num_feat"] == 64
    assert params["sr_pretrain"]["time_limit_s"] > 0 and params["pretrain"]["data"] == "both"
    plan = [(stage, args) for stage, args, _ in release_run.stage_plan(params)]
    assert plan == [("scrape", ["folder"]), ("natural", []), ("dedup", []), ("tile", []), ("split", []),
                    ("pack", []), ("pretrain", ["resnet18_lab_cls_colour"]),
                    ("finetune", ["resnet18_lab_cls_colour"]), ("sr_pretrain", ["edsr"])]
    with pytest.raises(AstroganError, match="params.yaml has no 'sr_pretrain.stepz' \\(at 'stepz'\\)"):
        release_run.set_dotted(params, "sr_pretrain.stepz", 1)
    with pytest.raises(AstroganError, match="params.yaml has no 'lr.x' \\(at 'x'\\)"):
        release_run.set_dotted(params, "lr.x", 1)
    cmd = release_run.dvc_command({"superres.models": ["edsr"], "sr_pretrain.steps": 12800})
    assert cmd == "dvc exp run -S 'superres.models=[\"edsr\"]' -S sr_pretrain.steps=12800"


def _images(folder: Path, n: int = 4) -> None:
    rng = np.random.default_rng(0)
    folder.mkdir()
    yy, xx = np.mgrid[0:192, 0:192] / 192
    for i in range(n):
        c = rng.uniform(0.2, 1, (3, 3))
        img = np.stack([c[k, 0] * xx + c[k, 1] * yy + c[k, 2] * np.sin(9 * (i + 1) * xx * yy) ** 2
                        for k in range(3)], -1)
        noise = rng.normal(0, 0.03, img.shape)
        Image.fromarray((np.clip(img / img.max() + noise, 0, 1) * 255).astype(np.uint8)).save(
            folder / f"im{i}.png")


@pytest.mark.slow
def test_a_tiny_release_run_trains_sr_within_its_time_limit_and_collects_the_results(tmp_path):
    _images(tmp_path / "images")
    work, out = tmp_path / "work", tmp_path / "out"
    sets = ["tile.size=64", "tile.stride=64", "sr_pretrain.batch_size=2", "sr_pretrain.crop=32",
            "sr_pretrain.log_every=2", "sr_pretrain.time_limit_s=2", "superres.zoo.edsr.generator_kwargs="
            "{num_feat: 8, num_block: 1, res_scale: 1.0, global_skip: true}"]
    cmd = [sys.executable, str(ROOT / "scripts/release_run.py"), "--images", str(tmp_path / "images"),
           "--work", str(work), "--out", str(out), "--grace", "120",
           "--only", "scrape", "dedup", "tile", "split", "pack", "sr_pretrain",
           *[a for s in sets for a in ("--set", s)]]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    stages = ["scrape", "dedup", "tile", "split", "pack", "sr_pretrain"]
    assert [s["stage"] for s in summary["stages"]] == stages
    assert all(s["exit"] == 0 for s in summary["stages"]), summary["stages"]
    assert "-S sr_pretrain.time_limit_s=2" in summary["dvc_command"]
    blob = torch.load(out / "superres_edsr_pretrained.pt", map_location="cpu", weights_only=True)
    card = blob["card"]
    assert card["time_limited"] is True and 0 < card["steps_run"] < card["steps"] == 100000
    assert card["arch_kwargs"]["num_feat"] == 8 and card["data"]["tiles"] > 0
    with tarfile.open(out / "run.tar.gz") as tar:
        names = tar.getnames()
    assert "params.yaml" in names and "run.log" in names
    assert "models/superres/edsr/pretrained.card.json" in names and not any(n.endswith(".pt") for n in names)
