"""Train the release models in one go, without DVC: the stages of dvc.yaml with params.release.yaml.

    python scripts/release_run.py --images ../shared/data/esahubble-381 --work /tmp/rel --out release_out
    python scripts/release_run.py --work /tmp/rel --out $OUT --skip scrape natural dedup --bench

For a machine that has PyTorch, NumPy, Pillow, scikit-image, tqdm and PyYAML but no DVC (a leased
GPU): it copies ``params.yaml`` into ``--work``, applies the preset's dotted keys (and any ``--set
key=value``, YAML values), then runs each stage as ``python -m pipeline.stages.NAME`` in ``--work``,
in the DAG's order, each under a wall-clock limit (its phase's ``time_limit_s`` plus ``--grace``),
going on to the next stage when one fails. ``--skip`` leaves out stages whose outputs are already
in ``--work/data`` (``scrape``, ``natural`` and ``dedup`` need DVC's environment: imagehash).
``--bench`` then runs ``benchmarks.train_throughput`` on the run's packed tiles.
Everything that matters lands in ``--out``: each trained generator (``<task>_<name>_<phase>.pt``),
``run.tar.gz`` (params, cards, loss curves, the log), ``benchmark.json`` and ``summary.json``
(per stage: exit status, seconds; the ``dvc exp run`` command with the same settings).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

import yaml

from pipeline.errors import AstroganError, run_main

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.params import CHECKOUT_PARAMS, dotted, dvc_stages, read_yaml  # noqa: E402

RUN = {"scrape", "natural", "dedup", "tile", "split", "pack", "sr_pretrain", "pretrain", "finetune"}


def set_dotted(params: dict, key: str, value) -> None:
    """``params[a][b][c] = value`` for ``key`` "a.b.c" (the key must exist, as with ``dvc exp run -S``)."""
    try:
        dotted(params, key)
    except KeyError as e:
        raise AstroganError(f"--set/preset: {e.args[0]}; check the spelling") from None
    parent, _, last = key.rpartition(".")
    (dotted(params, parent) if parent else params)[last] = value


def dvc_command(overrides: dict) -> str:
    """The ``dvc exp run`` that trains the same models with the same settings (where DVC is)."""
    sets = " ".join(f"-S {shlex.quote(f'{k}={json.dumps(v)}')}" for k, v in overrides.items())
    return f"dvc exp run {sets}"


def stage_plan(params: dict) -> list[tuple[str, list[str], float]]:
    """(stage, args, its phase's time limit) of the ``RUN`` stages, in dvc.yaml's order, a ``foreach``
    stage once per item of the params list it names."""
    plan = []
    for name, stage in dvc_stages(ROOT / "dvc.yaml").items():
        if name not in RUN:
            continue
        items = [None]
        if stage["foreach"]:
            items = dotted(params, stage["foreach"].removeprefix("${").removesuffix("}"))
        limit = float((params.get(name) or {}).get("time_limit_s", 0) or 0)
        plan += [(name, [] if item is None else [str(item)], limit) for item in items]
    return plan


def run_stage(cmd: list[str], cwd: Path, env: dict, limit: float | None, log) -> tuple[int, float]:
    """Run ``cmd``, its output into ``log`` (and ours); (exit status, seconds). 124: killed at ``limit``."""
    t0 = time.perf_counter()
    log.write(f"\n$ {' '.join(cmd)}\n")
    log.flush()
    with subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, bufsize=1) as proc:
        timer = threading.Timer(limit, proc.kill) if limit else None
        if timer:
            timer.start()
        for line in proc.stdout:
            line = line.rsplit("\r", 1)[-1]  # tqdm's redraws: keep the last one
            log.write(line)
            sys.stdout.write(line)
            sys.stdout.flush()
        rc = proc.wait()
        if timer:
            timer.cancel()
    seconds = round(time.perf_counter() - t0, 1)
    if limit is not None and seconds >= limit and rc != 0:
        rc = 124
    log.write(f"[exit {rc} after {seconds} s]\n")
    log.flush()
    return rc, seconds


def collect(work: Path, out: Path, params: dict, summary: dict) -> None:
    """Generators to ``out`` as files; params, cards, curves, log and benchmark into run.tar.gz."""
    out.mkdir(parents=True, exist_ok=True)
    paths = params["paths"]
    for task, key in (("superres", "superres_models"), ("colorize", "colorize_models")):
        for pt in sorted((work / paths[key]).glob("*/*.pt")):
            shutil.copy2(pt, out / f"{task}_{pt.parent.name}_{pt.stem}.pt")
    members = ["params.yaml", "run.log", paths["metrics"], paths["superres_models"],
               paths["colorize_models"], f"{paths['packed']}/train.csv", f"{paths['packed']}/val.csv",
               f"{paths['packed']}/test.csv", f"{paths['unique']}/manifest.jsonl"]
    tmp = out / "run.tar.gz.part"
    with tarfile.open(tmp, "w:gz") as tar:
        for m in members:
            if (work / m).exists():
                tar.add(work / m, arcname=m, filter=lambda ti: None if ti.name.endswith(".pt") else ti)
    os.replace(tmp, out / "run.tar.gz")
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", required=True, help="the run's folder (params.yaml, data/, models/ go here)")
    ap.add_argument("--out", required=True, help="where the generators, run.tar.gz and summary.json go")
    ap.add_argument("--images", default="", help="scrape.folder.path: a folder of images")
    ap.add_argument("--preset", default=str(ROOT / "params.release.yaml"))
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="after the preset")
    ap.add_argument("--skip", nargs="*", default=[], help="stages already done in --work")
    ap.add_argument("--only", nargs="*", default=None, help="run these stages alone")
    ap.add_argument("--grace", type=float, default=120.0, help="s per training stage beyond time_limit_s")
    ap.add_argument("--bench", action="store_true", help="then benchmarks.train_throughput on the tiles")
    ap.add_argument("--bench-args", default="--models resnet18_lab edsr --no-fid --steps 20 --warmup 5")
    ap.add_argument("--bench-limit", type=float, default=150.0)
    args = ap.parse_args()
    work, out = Path(args.work).resolve(), Path(args.out).resolve()
    work.mkdir(parents=True, exist_ok=True)
    overrides = yaml.safe_load(Path(args.preset).read_text()) or {}
    if args.images:
        overrides["scrape.folder.path"] = str(Path(args.images).resolve())
    for item in args.set:
        key, _, value = item.partition("=")
        overrides[key] = yaml.safe_load(value)
    params = read_yaml(CHECKOUT_PARAMS.read_text())
    for key, value in overrides.items():
        set_dotted(params, key, value)
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "PYTHONUNBUFFERED": "1", "TQDM_MININTERVAL": "10", "ASTROGAN_PARAMS": str(work / "params.yaml")}
    summary = {"preset": Path(args.preset).name, "overrides": overrides,
               "dvc_command": dvc_command(overrides), "stages": []}
    with open(work / "run.log", "a") as log:
        for stage, stage_args, time_limit in stage_plan(params):
            if stage in args.skip or (args.only is not None and stage not in args.only):
                continue
            limit = time_limit + args.grace if time_limit > 0 else None
            cmd = [sys.executable, "-m", f"pipeline.stages.{stage}", *stage_args]
            rc, seconds = run_stage(cmd, work, env, limit, log)
            summary["stages"].append({"stage": stage, "args": stage_args, "exit": rc, "seconds": seconds})
            collect(work, out, params, summary)
        if args.bench:
            out.mkdir(parents=True, exist_ok=True)
            cmd = [sys.executable, "-m", "benchmarks.train_throughput", "--packed", str(work / params["paths"]
                   ["packed"]), "--out", str(out / "benchmark.json"), *shlex.split(args.bench_args)]
            rc, seconds = run_stage(cmd, ROOT, env, args.bench_limit, log)
            summary["stages"].append({"stage": "benchmark", "args": shlex.split(args.bench_args), "exit": rc,
                                      "seconds": seconds})
    collect(work, out, params, summary)
    failed = [s["stage"] for s in summary["stages"] if s["exit"] != 0]
    print(f"release run: {len(summary['stages'])} steps, failed: {failed or 'none'}; results in {out}")


if __name__ == "__main__":
    run_main(main)
