"""Your own images: every JPEG/PNG/TIFF/FITS under ``scrape.folder.path``, recursively, sorted.

Records come from a ``manifest.jsonl`` beside the images when there is one (a line matches an
image on its ``file`` field, the name relative to that manifest's folder, or on its ``id`` field,
the file's stem); otherwise the id is ``folder-<relative path>`` (made safe) and credit and
licence are ``"unknown"``.

Every file is decoded by the project's one decoder (``pipeline.decode``), as training will read
it: FITS files (the ``SCI`` HDU, else the first image HDU; a cube gives its first plane) get the
decoder's display stretch (asinh between the 0.5th and 99.5th percentiles, NaN/inf black, rows flipped north
up) and are stored as 8-bit grey PNG. Like the ``embedded`` source, the output folder is emptied
and rebuilt on every run.
"""

from __future__ import annotations

import time
from pathlib import Path

from pipeline.errors import AstroganError
from pipeline.fsio import MANIFEST, read_jsonl, safe_name
from pipeline.sources.common import SourceConfig
from pipeline.sources.embedded import Item, Tally, ingest, reset_dir

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".tif", ".tiff"}
FITS_EXTS = {".fits", ".fit", ".fts", ".fits.gz"}


def is_fits(p: Path) -> bool:
    return p.name.lower().endswith(tuple(FITS_EXTS))


def list_images(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith(".")
                  and (p.suffix.lower() in IMAGE_EXTS or is_fits(p)))


def manifest_index(root: Path) -> dict[tuple[Path, str], dict]:
    """(folder, file name or id) -> record, from every ``manifest.jsonl`` under ``root``."""
    index: dict[tuple[Path, str], dict] = {}
    for m in sorted(root.rglob(MANIFEST)):
        for rec in read_jsonl(m):
            for key in (rec.get("id"), rec.get("file")):
                if key:
                    index.setdefault((m.parent, str(key)), rec)
    return index


def folder_items(root: Path) -> list[Item]:
    index = manifest_index(root)
    items: list[Item] = []
    used: set[str] = set()
    for path in list_images(root):
        rel = path.relative_to(root)
        stem = path.name[: -len(".fits.gz")] if path.name.lower().endswith(".fits.gz") else path.stem
        rec = index.get((path.parent, path.name)) or index.get((path.parent, stem)) or {}
        image_id = safe_name(rec["id"]) if rec.get("id") else \
            "folder-" + safe_name(rel.with_name(stem).as_posix().replace("/", "_"))
        if image_id in used:  # a.jpg beside a.png: keep both
            image_id = safe_name(f"{image_id}-{path.suffix.lstrip('.').lower()}")
        used.add(image_id)
        record = {"source": "folder", "url": rec.get("url") or str(path),
                  "title": rec.get("title") or image_id, "credit": rec.get("credit") or "unknown",
                  "licence": rec.get("licence") or "unknown", "original_file": rel.as_posix()}
        items.append((image_id, record, lambda p=path: ("data", p.read_bytes())))
    return items


def fetch(out_dir: Path, cfg: SourceConfig, *, fresh: bool = True) -> dict:
    """Ingest the folder ``cfg.options['path']`` into ``out_dir`` (emptied first unless ``fresh=False``)."""
    tally = Tally(started=time.monotonic())
    out_dir = Path(out_dir)
    src = str(cfg.options.get("path") or "").strip()
    if not src or not Path(src).is_dir():
        what = "is empty" if not src else f"is {src!r}, which is not a folder"
        raise AstroganError(f"scrape.folder.path {what}: set scrape.folder.path in params.yaml to a "
                            "folder of JPEG/PNG/TIFF/FITS images")
    root = Path(src).resolve()
    out = out_dir.resolve()
    if root == out or root in out.parents or out in root.parents:
        raise AstroganError(f"scrape.folder.path {src} overlaps the output {out_dir}; point it elsewhere")
    items = folder_items(root)
    if not items:
        raise AstroganError(f"{src}: no JPEG/PNG/TIFF/FITS images found; check scrape.folder.path")
    if fresh:
        reset_dir(out_dir)
    if cfg.limit > 0:
        items = items[:cfg.limit]
    ingest(out_dir, items, cfg, tally)
    return tally.summary()
