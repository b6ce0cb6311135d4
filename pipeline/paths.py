"""Where the files of a task's models live, built from params.yaml ``paths`` in one place: the stages
write there, evaluation, the report and the CLI read there (dvc.yaml names the same files with
``${paths.*}``).

    <paths.colorize_models>/<name>/pretrained.pt    (and .card.json beside it; superres_models alike)
    <paths.resume>/colorize/<name>/pretrain.pt      (a training stage's resume state)
    <paths.metrics>/plots/pretrain/<name>.csv       (its loss curve)
    <paths.metrics>/colorization.json               (superres.json), figures/<file>

``paths`` below is params.yaml's ``paths`` section; ``task`` is colorize or superres.
"""

from __future__ import annotations

from pathlib import Path

PHASES = ("pretrained", "finetuned")  # the checkpoints of a model, in training order
METRICS = {"colorize": "colorization.json", "superres": "superres.json"}  # in paths.metrics


def models_dir(paths: dict, task: str) -> Path:
    """The folder of ``task``'s models: ``paths.colorize_models`` or ``paths.superres_models``."""
    return Path(paths[f"{task}_models"])


def checkpoint(paths: dict, task: str, name: str, phase: str) -> Path:
    """Model ``name``'s checkpoint of ``phase`` (pretrained | finetuned); its card is ``.card.json``."""
    return models_dir(paths, task) / name / f"{phase}.pt"


def resume_file(paths: dict, task: str, name: str, stage: str) -> Path:
    """The resume state of training stage ``stage`` (pretrain, finetune, sr_pretrain, ...) of ``name``."""
    return Path(paths["resume"]) / task / name / f"{stage}.pt"


def plot(paths: dict, curve: str, name: str) -> Path:
    """The CSV curve of model ``name``: ``curve`` a training stage (its losses) or ``val``."""
    return Path(paths["metrics"]) / "plots" / curve / f"{name}.csv"


def metrics_file(paths: dict, task: str) -> Path:
    """The evaluation of ``task``'s models (``colorization.json`` or ``superres.json``)."""
    return Path(paths["metrics"]) / METRICS[task]


def figure(paths: dict, file: str) -> Path:
    """A figure of the report (``file``: its name, e.g. ``colorization_grid.png``)."""
    return Path(paths["metrics"]) / "figures" / file
