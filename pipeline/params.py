"""Read ``params.yaml``: the one place where paths and numbers live."""

from __future__ import annotations

import hashlib
import json
import os
import random
from pathlib import Path
from typing import Any

import yaml

PARAMS_FILE = Path(os.environ.get("ASTROGAN_PARAMS", "params.yaml"))


def load_params(path: str | os.PathLike | None = None) -> dict[str, Any]:
    """Return params.yaml as a dict (``ASTROGAN_PARAMS`` overrides the path)."""
    # The env var is read per call (not only at import), so tests and wrappers can point at a file.
    p = Path(path) if path is not None else Path(os.environ.get("ASTROGAN_PARAMS", PARAMS_FILE))
    if not p.is_file():
        raise SystemExit(f"{p}: params file not found; run from the project root (where dvc.yaml is)")
    with p.open() as f:
        return yaml.safe_load(f)


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
