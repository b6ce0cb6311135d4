"""The whole DAG, as a user runs it, on tiny params in a temporary clone of the project.

Runs `dvc repro` (every stage for real: scrape, natural, dedup, tile, split, pretrain and finetune
of the three default colorizers, evaluate, the SR stages, report), checks every metric is a finite
number (FID may be null, with a reason), that a second `dvc repro` does nothing, and that `dvc exp
run -S lr=...` changes what `dvc metrics diff` shows (summary.json).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
pytestmark = pytest.mark.slow

TINY = {
    "scrape": {"limit": 6},
    "natural": {"size": 96},
    "tile": {"size": 128, "stride": 192},
    "pretrain": {"steps": 4, "batch_size": 2, "crop": 64, "checkpoint_every": 2, "log_every": 1},
    "finetune": {"steps": 4, "batch_size": 2, "crop": 64, "checkpoint_every": 2, "log_every": 1,
                 "eval_every": 2, "patience": 1},
    # the paper's four Table 1 models: resnet18_rgb is one -S away from the default (README)
    "colorize": {"pretrain": ["resnet18_lab", "resnet18_rgb", "unet_rgb", "resnet18_lab_guided"],
                 "zoo": {"resnet18_rgb": {"pretrain": {"steps": 3}},  # a per-entry override
                         "resnet18_lab_guided": {"pretrain": {"crop": 64}, "finetune": {"crop": 128}}}},
    "evaluate": {"batch_size": 8, "grid_samples": 2, "guided_points": [0, 2, 10]},
    "sr_pretrain": {"steps": 4, "batch_size": 2, "crop": 32, "checkpoint_every": 2, "log_every": 1},
    "sr_finetune": {"steps": 4, "batch_size": 2, "crop": 32, "checkpoint_every": 2, "log_every": 1},
    "sr_evaluate": {"batch_size": 8, "grid_samples": 2, "zoom": 32},
}


def _merge(base: dict, over: dict) -> dict:
    for k, v in over.items():
        base[k] = _merge(base.get(k, {}), v) if isinstance(v, dict) else v
    return base


def _run(args: list[str], cwd: Path, columns: int | None = None) -> str:
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}", DVC_NO_ANALYTICS="1",
               GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t",
               GIT_COMMITTER_EMAIL="t@t")
    if columns:
        env["COLUMNS"] = str(columns)
    env.pop("ASTROGAN_PARAMS", None)
    res = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    if res.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({res.returncode}):\n{res.stdout[-4000:]}\n"
                             f"{res.stderr[-4000:]}")
    return res.stdout + res.stderr


def _clone(dest: Path) -> None:
    """Copy the project's source files (not data, models, venv or caches) into a fresh git repo."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.split()
    for f in files:
        src = ROOT / f
        if f.startswith(("metrics/", "dvc.lock")) or not src.is_file():
            continue  # start from a clean slate: the run must produce these itself
        (dest / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dest / f)


def _finite_numbers(obj, path=""):
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _finite_numbers(v, f"{path}.{k}" if path else k)
    elif isinstance(obj, (int, float)) and not isinstance(obj, bool):
        yield path, obj


def test_whole_dag_on_tiny_params(tmp_path):
    proj = tmp_path / "proj"
    proj.mkdir()
    _clone(proj)
    params = yaml.safe_load((proj / "params.yaml").read_text())
    (proj / "params.yaml").write_text(yaml.safe_dump(_merge(params, TINY), sort_keys=False))
    _run(["git", "init", "-q"], proj)
    _run(["git", "add", "-A"], proj)
    _run(["git", "commit", "-qm", "tiny"], proj)

    out = _run(["dvc", "repro"], proj)
    for stage in ("scrape@embedded", "natural", "dedup", "tile", "split", "pretrain@resnet18_lab",
                  "pretrain@resnet18_rgb", "pretrain@unet_rgb", "finetune@resnet18_lab", "finetune@unet_rgb",
                  "pretrain@resnet18_lab_guided", "finetune@resnet18_lab_guided",
                  "evaluate", "sr_pretrain@srresnet", "sr_pretrain@edsr",
                  "sr_pretrain@wdsr", "sr_finetune@srresnet", "sr_finetune@edsr", "sr_finetune@wdsr",
                  "sr_evaluate", "report"):
        assert f"'{stage}'" in out, f"stage {stage} did not run:\n{out[-3000:]}"

    metrics = json.loads((proj / "metrics/colorization.json").read_text())
    numbers = dict(_finite_numbers(metrics))
    for key in ("grey.ab_l1", "resnet18_lab.pretrained.rgb_l1_r", "resnet18_lab.finetuned.lab_l2_b",
                "resnet18_lab.finetuned.psnr", "resnet18_lab.finetuned.ssim",
                "resnet18_rgb.pretrained.rgb_l1", "unet_rgb.pretrained.ab_l1", "unet_rgb.finetuned.rgb_l2"):
        assert key in numbers and math.isfinite(numbers[key]), key
    assert all(math.isfinite(v) for v in numbers.values())
    fid = metrics["resnet18_lab"]["finetuned"]["fid"]
    assert fid is None or math.isfinite(fid)
    if fid is None:
        assert metrics["fid_reason"]
    sr = dict(_finite_numbers(json.loads((proj / "metrics/superres.json").read_text())))
    for key in ("bicubic.psnr_y", "nearest.ssim_rgb", "edsr.finetuned.psnr_rgb", "wdsr.pretrained.rgb_l1_g",
                "srresnet.finetuned.ssim_y"):
        assert key in sr and math.isfinite(sr[key]), key
    assert all(math.isfinite(v) for v in sr.values())
    report = (proj / "metrics/report.md").read_text()
    assert "Table 1:" in report and "Table 6" in report and report.count("|") > 40
    assert "resnet18_rgb (pretrained)" in report and "unet_rgb (finetuned)" in report
    assert "finetuned" not in metrics["resnet18_rgb"]  # the paper's pre-trained-only row
    assert (proj / "metrics/plots/val/unet_rgb.csv").read_text().startswith("step,val_l1")
    assert (proj / "metrics/figures/colorization_grid.png").stat().st_size > 1000
    card = json.loads((proj / "models/colorize/resnet18_lab/finetuned.card.json").read_text())
    assert card["encoder_weights"]["used"] in ("imagenet", "random")
    guided = metrics["guided"]["resnet18_lab_guided (finetuned)"]
    assert set(guided["points"]) == {"0", "2", "10"} and guided["points"]["10"]["nearest_vs_grey"] < 1
    assert (proj / "metrics/plots/guided.csv").read_text().startswith("points,grey,nearest_hint,")
    summary = json.loads((proj / "metrics/summary.json").read_text())
    assert set(summary) == {"colorize", "guided", "sr", "data"} and summary["data"]["test_tiles"] > 0
    assert "Guided colour" in report

    again = _run(["dvc", "repro"], proj)
    assert "up to date" in again.lower() and "Running stage" not in again

    # Repeatable outputs: forced reruns of one stage of each kind (the whole tiny DAG again would
    # double this test's time) give the same dvc.lock, byte for byte: every output hash the same.
    # evaluate, sr_evaluate and report rerun below, and the lock is compared again there.
    lock = (proj / "dvc.lock").read_bytes()
    forced = ("scrape@embedded", "natural", "dedup", "tile", "split", "pack", "pretrain@resnet18_lab",
              "finetune@resnet18_lab", "sr_pretrain@edsr", "sr_finetune@edsr")
    _run(["dvc", "repro", "-f", "-s", *forced], proj)
    assert (proj / "dvc.lock").read_bytes() == lock, "dvc repro -f changed dvc.lock"

    _run(["git", "add", "-A"], proj)
    _run(["git", "commit", "-qm", "baseline run"], proj)
    lr = params["lr"]
    _run(["dvc", "exp", "run", "-S", "lr=0.0001"], proj)
    diff = _run(["dvc", "metrics", "diff", "--json"], proj)
    rows = json.loads(diff).get("metrics/summary.json", {})
    assert any(k.startswith("sr.") for k in rows) and any(k.startswith("colorize.") for k in rows), diff
    # The README's comparison reads at 120 columns: every changed metric shown whole, no "…" (the
    # changed deps, model and metrics files named by path, are dropped by the README's --drop).
    shown = _run(["dvc", "exp", "show", "--only-changed", "--drop", ".*/", "--no-pager"], proj, columns=120)
    assert "…" not in shown and "colorize.vs_grey" in shown.replace("\n", ""), shown
    # Back to the baseline's lr: every training stage's run is in DVC's run-cache, so nothing trains
    # again (evaluate and report, whose tables are committed to git rather than cached, rerun).
    back = _run(["dvc", "exp", "run", "-S", f"lr={lr}"], proj)
    for kind in ("pretrain", "finetune", "sr_pretrain", "sr_finetune"):
        assert f"Running stage '{kind}@" not in back, back[-3000:]
        assert f"Stage '{kind}@" in back and "is cached - skipping run" in back, back[-3000:]
    assert (proj / "dvc.lock").read_bytes() == lock
