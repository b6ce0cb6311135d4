"""The offline default source: images that ship with the code, so a fresh clone runs end to end.

- scikit-image's bundled ``skimage.data`` images named in ``scrape.embedded.skimage``
  (default ``[hubble_deep_field]``: the Hubble eXtreme Deep Field, NASA, public domain);
- when ``scrape.embedded.vendored`` is true, the 48 credited ESA/Hubble images (CC BY 4.0) of
  ``pipeline/sources/vendored/``, each with the record of its ``manifest.jsonl``.

The output folder is emptied and rebuilt on every run (cheap), so a param change never leaves
stale images behind.
"""

from __future__ import annotations

import shutil
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from pipeline.fsio import MANIFEST, append_jsonl, read_jsonl, sha256_bytes
from pipeline.sources.common import BadImage, SourceConfig, done_ids, now_iso, store_image

VENDORED = Path(__file__).parent / "vendored"
FAILED = "failed.jsonl"

# Credits and licences as stated in scikit-image's ``skimage.data`` docstrings.
SKIMAGE_CREDITS: dict[str, tuple[str, str, str]] = {  # name -> (title, credit, licence)
    "hubble_deep_field": ("Hubble eXtreme Deep Field", "NASA / Hubble (via scikit-image)",
                          "public domain (NASA media guidelines)"),
    "astronaut": ("Astronaut Eileen Collins", "NASA (NASA Great Images database, via scikit-image)",
                  "public domain"),
    "coffee": ("Coffee cup", "Rachel Michetti, courtesy of Pikolo Espresso Bar (via scikit-image)", "CC0"),
    "chelsea": ("Chelsea the cat", "Stefan van der Walt (via scikit-image)", "CC0"),
    "rocket": ("Launch of DSCOVR on Falcon 9", "SpaceX (via scikit-image)", "public domain"),
    "immunohistochemistry": ("Immunohistochemical staining of colonic glands",
                             "Center for Microscopy And Molecular Imaging (CMMI) (via scikit-image)",
                             "no known copyright restrictions"),
    "retina": ("Human retina", "Mikael Häggström, Wikimedia Commons (via scikit-image)", "CC0 1.0"),
}


@dataclass
class Tally:
    """The one-line summary every source returns (fetched, skipped, failed, bytes, seconds)."""

    fetched: int = 0
    skipped: int = 0
    failed: int = 0
    bytes: int = 0
    started: float = 0.0

    def summary(self) -> dict:
        return {"fetched": self.fetched, "skipped": self.skipped, "failed": self.failed,
                "bytes": self.bytes, "seconds": round(time.monotonic() - self.started, 2)}


def reset_dir(out_dir: Path) -> None:
    """Empty ``out_dir`` (a local source's own output): rebuilt from scratch, nothing stale kept."""
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)


def record_failure(out_dir: Path, image_id: str, origin: str, reason: str) -> None:
    """One line on stderr naming the input, and a record in ``failed.jsonl``."""
    tqdm.write(f"{reason}; skipped", file=sys.stderr)
    append_jsonl(out_dir / FAILED, {"id": image_id, "url": origin, "reason": reason, "at": now_iso()})


def skimage_array(name: str) -> np.ndarray:
    import skimage.data

    loader = getattr(skimage.data, name, None)
    if loader is None:
        raise BadImage(f"skimage.data.{name}: no such image in scikit-image {skimage.__version__}")
    return np.ascontiguousarray(loader())


# An item: (id, record, loader) where loader() gives ("data", bytes) or ("array", ndarray).
Item = tuple[str, dict, Callable[[], tuple[str, object]]]


def skimage_items(names: list[str]) -> Iterator[Item]:
    for name in names:
        title, credit, licence = SKIMAGE_CREDITS.get(
            name, (name, "see scikit-image's skimage.data documentation", "see scikit-image docs"))
        rec = {"source": "embedded", "url": f"skimage.data.{name}", "title": title,
               "credit": credit, "licence": licence}
        yield f"skimage-{name}", rec, (lambda n=name: ("array", skimage_array(n)))


def vendored_items(folder: Path = VENDORED) -> Iterator[Item]:
    def load(path: Path, sha: str) -> tuple[str, object]:
        data = path.read_bytes()
        if sha and sha256_bytes(data) != sha:
            raise BadImage(f"{path}: sha256 differs from its manifest; rerun "
                           "`python -m pipeline.sources.vendor_subset` or restore the file from git")
        return "data", data

    for rec in read_jsonl(folder / MANIFEST):
        path, sha = folder / rec["file"], rec.get("sha256", "")
        yield rec["id"], dict(rec), (lambda p=path, s=sha: load(p, s))


def ingest(out_dir: Path, items: list[Item], cfg: SourceConfig, tally: Tally) -> None:
    """Store each item not already done; failures are recorded and do not stop the others."""
    done = done_ids(out_dir)
    for image_id, rec, load in tqdm(items, desc=f"scrape {cfg.name}", unit="img"):
        if image_id in done:
            tally.skipped += 1
            continue
        try:
            kind, payload = load()
            if kind == "array":
                row = store_image(out_dir, image_id, None, rec, max_pixels=cfg.max_pixels, array=payload,
                                  stamp=False)
            else:
                row = store_image(out_dir, image_id, payload, rec, max_pixels=cfg.max_pixels, stamp=False)
        except (BadImage, OSError, ValueError) as e:
            tally.failed += 1
            record_failure(out_dir, image_id, rec.get("url", image_id), str(e))
            continue
        tally.fetched += 1
        tally.bytes += (out_dir / row["file"]).stat().st_size


def fetch(out_dir: Path, cfg: SourceConfig, *, fresh: bool = True, vendored_dir: Path = VENDORED) -> dict:
    """Write the embedded images into ``out_dir`` (emptied first unless ``fresh=False``)."""
    tally = Tally(started=time.monotonic())
    out_dir = Path(out_dir)
    if fresh:
        reset_dir(out_dir)
    items: list[Item] = list(skimage_items(list(cfg.options.get("skimage") or [])))
    if cfg.options.get("vendored", True):
        items += list(vendored_items(vendored_dir))
    if cfg.limit > 0:
        items = items[:cfg.limit]
    ingest(out_dir, items, cfg, tally)
    return tally.summary()
