"""Shared fixtures: a throw-away project (params file with paths in tmp) and small real images."""

from __future__ import annotations

import urllib.error
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
VENDORED = ROOT / "pipeline" / "sources" / "vendored"


@dataclass
class Project:
    """A tmp project: ``params`` (a dict to edit) is saved to ``params_file`` by ``save()``."""

    root: Path
    params_file: Path
    params: dict

    def save(self) -> None:
        self.params_file.write_text(yaml.safe_dump(self.params, sort_keys=False))

    def path(self, key: str) -> Path:
        return Path(self.params["paths"][key])


@pytest.fixture
def project(tmp_path, monkeypatch) -> Project:
    """The repository's params.yaml with every ``paths.*`` under ``tmp_path``; ASTROGAN_PARAMS set."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["paths"] = {k: str(tmp_path / v) for k, v in params["paths"].items()}
    p = Project(tmp_path, tmp_path / "params.yaml", params)
    p.save()
    monkeypatch.setenv("ASTROGAN_PARAMS", str(p.params_file))
    monkeypatch.setattr("pipeline.params.PARAMS_FILE", p.params_file)
    return p


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


@pytest.fixture(scope="session")
def real_images() -> list[Path]:
    """The vendored ESA/Hubble JPEGs (768x576): real data for the data-stage tests."""
    files = sorted(VENDORED.glob("*.jpg"))
    if len(files) < 8:
        pytest.fail(f"{VENDORED}: vendored images missing; run python -m pipeline.sources.vendor_subset")
    return files


def pack_project(root, side: int | None = None) -> None:
    """Run the ``pack`` stage's work on a fake project (its params.yaml paths; an absent val/test
    split is an empty one): training stages read the packed arrays, not the PNG tiles."""
    import csv as _csv

    from PIL import Image

    from pipeline.stages import pack

    paths = yaml.safe_load((root / "params.yaml").read_text())["paths"]
    tiles, split = root / paths["tiles"], root / paths["split"]
    for name in pack.SPLITS:
        if not (split / f"{name}.csv").is_file():
            with open(split / f"{name}.csv", "w", newline="") as f:
                _csv.writer(f).writerow(["tile_id", "image_id", "grey"])
    if side is None:
        with Image.open(next(tiles.glob("*.png"))) as im:
            side = im.size[0]
    pack.pack_all(tiles, split, root / paths.get("packed", "data/packed"), side)


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    """An empty torch hub cache whose downloads fail as they do without network."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    def no_network(url, dst, *args, **kwargs):
        raise urllib.error.URLError("offline (test)")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    return tmp_path / "torch" / "hub" / "checkpoints"
