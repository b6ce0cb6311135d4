"""pipeline.paths builds exactly the files dvc.yaml names for each stage (so code and DAG agree)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from pipeline.params import dvc_stages, load_params
from pipeline.paths import checkpoint, figure, metrics_file, plot

ROOT = Path(__file__).resolve().parents[1]
PATHS = load_params(ROOT / "params.yaml")["paths"]


def named(stage: str, field: str, item: str = "m") -> set[str]:
    """``stage``'s ``field`` (outs, deps) in dvc.yaml, with ``${paths.*}`` and ``${item}`` filled in."""
    entries = [e if isinstance(e, str) else next(iter(e)) for e in dvc_stages()[stage].get(field, [])]
    return {re.sub(r"\$\{paths\.(\w+)\}", lambda m: PATHS[m[1]], e).replace("${item}", item) for e in entries}


@pytest.mark.parametrize("task, pretrain, finetune", [("colorize", "pretrain", "finetune"),
                                                      ("superres", "sr_pretrain", "sr_finetune")])
def test_training_stages_write_the_files_dvc_yaml_names(task, pretrain, finetune):
    pre, fine = checkpoint(PATHS, task, "m", "pretrained"), checkpoint(PATHS, task, "m", "finetuned")
    wanted = {str(pre), str(pre.with_suffix(".card.json")), str(plot(PATHS, pretrain, "m"))}
    assert wanted == named(pretrain, "outs")
    wanted = {str(fine), str(fine.with_suffix(".card.json")), str(plot(PATHS, finetune, "m"))}
    if task == "colorize":
        wanted.add(str(plot(PATHS, "val", "m")))
    assert wanted == named(finetune, "outs")
    assert str(pre) in named(finetune, "deps")


def test_evaluation_and_report_write_the_files_dvc_yaml_names():
    assert {str(metrics_file(PATHS, "colorize")), str(figure(PATHS, "colorization_grid.png"))} <= named(
        "evaluate", "outs")
    assert {str(metrics_file(PATHS, "superres")), str(figure(PATHS, "superres_grid.png"))} == named(
        "sr_evaluate", "outs")
    assert {str(metrics_file(PATHS, t)) for t in ("colorize", "superres")} <= named("report", "deps")
    assert str(figure(PATHS, "guided.png")) in named("report", "outs")
