"""torchrun + DDP on CPU (gloo): 2 processes train as 1 does, only rank 0 writes, kill -9 resumes.

Tolerance: the 2-process loss curves equal the 1-process ones within 1e-4 relative. Each rank gets
its half of the same global batch and DDP averages the gradients, so only float rounding differs
(the sums run in another order); the models here have no BatchNorm, which PyTorch can synchronise
across processes on GPUs only (SyncBatchNorm), so on CPU each rank would normalise its own half.
"""

from __future__ import annotations

import copy
import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from pipeline import distributed
from pipeline.data import CropPlan, Feeder, plan_crops
from tests.test_superres import PARAMS as SR_PARAMS
from tests.test_superres import write_project

ROOT = Path(__file__).resolve().parents[1]
GUARD = ROOT / "tests" / "helpers" / "rank_guard.py"
REL = 1e-4


def _params(nproc: int, steps: int = 6, checkpoint_every: int = 3) -> dict:
    p = copy.deepcopy(SR_PARAMS)
    p["superres"]["models"] = ["ed"]
    ed = p["superres"]["zoo"]["ed"]
    d_kwargs = {**ed["discriminator_kwargs"], "batch_norm": False}
    p["superres"]["zoo"] = {"ed": {**ed, "discriminator_kwargs": d_kwargs}}
    p["superres"]["perceptual_weight"] = 0  # the VGG term needs ImageNet weights: not offline
    p["train"]["nproc"] = nproc
    for phase in ("sr_pretrain", "sr_finetune"):
        p[phase].update(steps=steps, batch_size=4, checkpoint_every=checkpoint_every, log_every=1)
    return p


def _env(root: Path) -> dict:
    return {**os.environ, "ASTROGAN_PARAMS": str(root / "params.yaml"), "OMP_NUM_THREADS": "1",
            "PYTHONPATH": str(ROOT)}


def _run(root: Path, *cmd: str, timeout: int = 240) -> str:
    done = subprocess.run([sys.executable, *cmd], cwd=root, env=_env(root), capture_output=True, text=True,
                          timeout=timeout)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout + done.stderr


def _rows(path: Path) -> list[dict[str, float]]:
    with open(path, newline="") as f:
        return [{k: float(v) for k, v in r.items()} for r in csv.DictReader(f)]


def _close(a: list[dict], b: list[dict]) -> bool:
    return len(a) == len(b) and all(r[k] == pytest.approx(s[k], rel=REL) for r, s in zip(a, b, strict=True)
                                    for k in r)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """The same tiny SR study (EDSR pretrain, then GAN fine-tune) in 1 process and under
    torchrun with 2 processes, rank 1 forbidden to write anything (tests/helpers/rank_guard.py)."""
    base = tmp_path_factory.mktemp("ddp")
    one = write_project(base / "one", _params(1))
    two = write_project(base / "two", _params(2))
    for stage in ("sr_pretrain", "sr_finetune"):
        _run(one, "-m", f"pipeline.stages.{stage}", "ed")
        _run(two, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", str(GUARD),
             f"pipeline.stages.{stage}", "ed")
    return {"one": one, "two": two}


@pytest.mark.parametrize("stage", ["sr_pretrain", "sr_finetune"])
def test_two_processes_match_one_process_loss_curve(runs, stage):
    a = _rows(runs["one"] / f"metrics/plots/{stage}/ed.csv")
    b = _rows(runs["two"] / f"metrics/plots/{stage}/ed.csv")
    assert len(a) == 6 and _close(a, b), (a, b)


def test_two_process_checkpoint_and_card(runs):
    import json

    card = json.loads((runs["two"] / "models/superres/ed/finetuned.card.json").read_text())
    assert card["processes"] == 2 and card["batch_size"] == 4 and card["feeding"] == "device"
    one = torch.load(runs["one"] / "models/superres/ed/finetuned.pt", weights_only=True)["state_dict"]
    two = torch.load(runs["two"] / "models/superres/ed/finetuned.pt", weights_only=True)["state_dict"]
    assert one.keys() == two.keys()  # no DDP "module." prefix
    # Adam moves each weight by at most ~lr per step, so rounding can at worst flip that many steps:
    bound = 2 * SR_PARAMS["lr"] * 12
    assert max((one[k].float() - two[k].float()).abs().max().item() for k in one) < bound
    resume = runs["two"] / ".resume/superres/ed"  # resume states are gone; timing logs stay
    assert not resume.exists() or not list(resume.glob("*.pt"))


def _children(pid: int) -> list[int]:
    """Process ids whose parent is ``pid`` (from /proc)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def test_kill_9_mid_run_then_rerun_resumes(tmp_path):
    """nproc 2 through params (the stage relaunches itself under torchrun); SIGKILL torchrun and both
    workers once a checkpoint exists; the rerun resumes from it and ends where an unbroken run ends."""
    steps, every = 400, 25
    broken = write_project(tmp_path / "broken", _params(2, steps, every))
    whole = write_project(tmp_path / "whole", _params(2, steps, every))
    ckpt = broken / ".resume/superres/ed/sr_pretrain.pt"
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.stages.sr_pretrain", "ed"], cwd=broken,
                            env=_env(broken), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            )
    deadline = time.time() + 180
    while not ckpt.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert ckpt.exists() and proc.poll() is None, "the run should be killed mid-way, after a checkpoint"
    for pid in [*_children(proc.pid), proc.pid]:  # torchrun starts each worker in a session of its own
        os.kill(pid, signal.SIGKILL)
    proc.wait()
    killed_at = torch.load(ckpt, weights_only=True)["step"]
    assert 0 < killed_at < steps and not (broken / "models/superres/ed/pretrained.pt").exists()
    out = _run(broken, "-m", "pipeline.stages.sr_pretrain", "ed")
    assert f"resuming ed sr_pretrain from step {killed_at}" in out, out[:3000]
    _run(whole, "-m", "pipeline.stages.sr_pretrain", "ed")
    a, b = (_rows(r / "metrics/plots/sr_pretrain/ed.csv") for r in (broken, whole))
    assert len(a) == steps and a == b  # gloo's 2-rank average is exact: bit-for-bit on CPU
    sa = torch.load(broken / "models/superres/ed/pretrained.pt", weights_only=True)["state_dict"]
    sb = torch.load(whole / "models/superres/ed/pretrained.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_shard_and_batch_divisibility():
    job = distributed.Dist(rank=1, world=4)
    assert job.shard(8) == slice(2, 4) and not job.main and job.active
    assert distributed.Dist().shard(8) == slice(0, 8) and distributed.Dist().main


def test_relaunch_is_a_no_op_for_one_process_or_under_torchrun(monkeypatch):
    calls = []
    monkeypatch.setattr(os, "execv", lambda *a: calls.append(a))
    distributed.relaunch(1, "pipeline.stages.finetune", ["x"])
    monkeypatch.setenv("LOCAL_RANK", "0")
    distributed.relaunch(2, "pipeline.stages.finetune", ["x"])
    assert calls == []
    monkeypatch.delenv("LOCAL_RANK")
    distributed.relaunch(3, "pipeline.stages.finetune", ["x"])
    assert calls and calls[0][1][1:6] == ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node=3",
                                          "-m"]


def test_feeder_on_cpu_gives_the_plans_batches():
    images = torch.randint(0, 255, (5, 3, 20, 24), dtype=torch.uint8)
    feeder = Feeder(images, torch.device("cpu"))
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    batch = feeder.next(4, 8, g1)
    plan: CropPlan = plan_crops(images, 4, 8, g2)
    for k in range(4):
        i, y, x = int(plan.idx[k]), int(plan.y0[k]), int(plan.x0[k])
        want = images[i, :, y:y + 8, x:x + 8]
        want = want.flip(-1) if plan.flip_h[k] else want
        want = want.flip(-2) if plan.flip_v[k] else want
        assert torch.equal(batch[k], want)
    assert torch.equal(feeder.generator_state(g1), g2.get_state())
