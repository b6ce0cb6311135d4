"""Read ``params.yaml``: the one place where paths and numbers live."""

from __future__ import annotations

import hashlib
import json
import os
import random
from pathlib import Path
from typing import Any

import yaml

from pipeline.errors import AstroganError

PARAMS_FILE = Path(os.environ.get("ASTROGAN_PARAMS", "params.yaml"))
DVC_FILE = Path(__file__).resolve().parents[1] / "dvc.yaml"  # the DAG the stages belong to
CHECKOUT_PARAMS = DVC_FILE.parent / "params.yaml"  # the checkout's defaults (an install has none)
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml: ~10x faster, same safe subset


def read_yaml(text: str | Any) -> Any:
    """``yaml.safe_load`` of a string or stream, through libyaml when PyYAML has it (params.yaml takes
    0.17 s in pure Python, which every CLI call and stage paid)."""
    return yaml.load(text, Loader=_LOADER)  # noqa: S506 - a safe loader


def dvc_stages(dvc_file: str | os.PathLike = DVC_FILE) -> dict[str, dict]:
    """dvc.yaml's stages in their order, each as its ``do`` body for a ``foreach`` stage plus the
    ``foreach`` expression (``foreach`` key, None for a plain stage)."""
    spec = read_yaml(Path(dvc_file).read_text())["stages"]
    return {name: {**s.get("do", s), "foreach": s.get("foreach")} for name, s in spec.items()}


def dotted(params: dict, key: str) -> Any:
    """``params["a"]["b"]["c"]`` for ``key`` "a.b.c" (a KeyError names the missing part)."""
    node = params
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            raise KeyError(f"params.yaml has no {key!r} (at {part!r})")
        node = node[part]
    return node


def stage_params(stage: str, params: dict, item: str | None = None,
                 dvc_file: str | os.PathLike = DVC_FILE) -> dict[str, Any]:
    """Exactly the params dvc.yaml lists for ``stage`` (``${item}`` read as ``item``), as
    {dotted key: value} in dvc.yaml's order: what a training phase hashes for resume and keeps in its
    card, so that the code and the DAG cannot disagree about what a stage reads."""
    keys = dvc_stages(dvc_file)[stage].get("params") or []
    out = {}
    for key in keys:
        key = key.replace("${item}", str(item)) if item is not None else key
        out[key] = dotted(params, key)
    return out


def load_params(path: str | os.PathLike | None = None) -> dict[str, Any]:
    """Return params.yaml as a dict (``ASTROGAN_PARAMS`` overrides the path)."""
    # The env var is read per call (not only at import), so tests and wrappers can point at a file.
    p = Path(path) if path is not None else Path(os.environ.get("ASTROGAN_PARAMS", PARAMS_FILE))
    if not p.is_file():
        raise AstroganError(f"{p}: params file not found; run from the project root (where dvc.yaml is)")
    with p.open() as f:
        return read_yaml(f)


def params_hash(obj: Any) -> str:
    """A short stable hash of a JSON-able object (checkpoints remember what they were trained on)."""
    blob = json.dumps(obj, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and PyTorch (CPU and CUDA) RNGs."""
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_device(name: str = "auto"):
    """``auto`` -> CUDA when available, else CPU."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)
