"""Stage ``natural``: colour photos for pretraining, resized so their short side is ``natural.size``.

    python -m pipeline.stages.natural

``natural.source`` is one name or a list of them, taken in that order:
- ``embedded``: scikit-image's bundled colour photos (no network);
- ``folder``: your own colour photos, every JPEG/PNG/TIFF under ``natural.folder``, recursively,
  sorted, at most ``natural.count`` (records from a ``manifest.jsonl`` there, as the ``folder``
  scrape source reads them; otherwise credit and licence ``unknown``). Grey photos are skipped (no
  colour to learn), and so are unreadable ones, each named on one line;
- ``coco``: ``natural.count`` COCO val2017 photos (``natural.coco_dir`` or a verified download, see
  ``pipeline.sources.coco``).
Writes ``<paths.natural>/<id>.png`` (8-bit RGB, Lanczos resize, down or up) and ``manifest.jsonl``
(the scrape schema plus ``file`` and ``resized_from`` = [width, height] before resizing). The folder
is rebuilt on every run; DVC reruns it when ``natural.*`` changes (not when the files in
``natural.folder`` do: ``dvc repro -f natural`` after editing that folder).
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from pipeline.errors import AstroganError, run_main
from pipeline.fsio import MANIFEST, safe_name, sha256_file, write_jsonl_atomic
from pipeline.params import load_params
from pipeline.sources.common import BadImage, decode_image
from pipeline.sources.embedded import SKIMAGE_CREDITS, reset_dir, skimage_array
from pipeline.tileset import is_grey

SOURCES = ("embedded", "folder", "coco")

# Colour photographs among skimage.data that ship with scikit-image (no grey or synthetic images).
SKIMAGE_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "retina")


def resize_short_side(im: Image.Image, size: int) -> Image.Image:
    """Lanczos-resize (down or up) so that min(width, height) == size, aspect kept."""
    w, h = im.size
    scale = size / min(w, h)
    new = (max(size, round(w * scale)), max(size, round(h * scale)))
    return im if new == (w, h) else im.resize(new, Image.Resampling.LANCZOS)


def embedded_photos() -> Iterator[tuple[str, dict, Image.Image]]:
    for name in SKIMAGE_PHOTOS:
        title, credit, licence = SKIMAGE_CREDITS[name]
        rec = {"source": "skimage", "url": f"skimage.data.{name}", "title": title,
               "credit": credit, "licence": licence}
        yield f"skimage-{name}", rec, Image.fromarray(skimage_array(name)[..., :3])


def coco_photos(count: int, coco_dir: str, **download_kw) -> Iterator[tuple[str, dict, Image.Image]]:
    from pipeline.sources.coco import photos

    for image_id, rec, data in photos(count, coco_dir, **download_kw):
        yield image_id, rec, decode_image(data, rec["url"]).convert("RGB")


def folder_photos(folder: str, count: int) -> Iterator[tuple[str, dict, Image.Image]]:
    """The colour photos of a local folder (see the module doc), at most ``count``."""
    from pipeline.sources.folder import folder_items, is_fits

    root = Path(folder) if folder else None
    if root is None or not root.is_dir():
        what = "is empty" if root is None else f"is {folder!r}, which is not a folder"
        raise AstroganError(f"natural.folder {what}: set natural.folder in params.yaml to a folder of "
                            "colour JPEG/PNG/TIFF photos, or drop folder from natural.source")
    items = [(i, rec, load) for i, rec, load in folder_items(root.resolve())
             if not is_fits(Path(rec["original_file"]))]          # FITS are one filter: grey
    if not items:
        raise AstroganError(f"natural.folder {folder}: no JPEG/PNG/TIFF photos there; fix the path")
    taken = grey = 0
    for image_id, rec, load in items:
        if taken >= count:
            break
        try:
            rgb = decode_image(load()[1], rec["url"]).convert("RGB")
        except BadImage as e:
            tqdm.write(f"natural: {e}; skipped (fix or remove it)", file=sys.stderr)
            continue
        if is_grey(np.asarray(rgb)):
            grey += 1
            continue
        taken += 1
        yield image_id, rec, rgb
    if grey:
        tqdm.write(f"natural: skipped {grey} grey photo(s) of {folder}: they have no colour to learn",
                   file=sys.stderr)


def build(out_dir: Path, photos, size: int) -> list[dict]:
    """Write each photo resized to a short side of ``size`` as PNG; return the manifest rows.

    Written into ``<out_dir>.part`` and swapped in at the end: a source that fails half-way (a
    download cut, a bad folder) leaves the previous photos in place."""
    part = out_dir.with_name(out_dir.name + ".part")
    reset_dir(part)
    rows, used = [], set()
    try:
        for image_id, rec, im in tqdm(photos, desc="natural", unit="img"):
            image_id = safe_name(image_id)
            while image_id in used:                  # two sources' manifests may share an id
                image_id = safe_name(f"{image_id}-2")
            used.add(image_id)
            small = resize_short_side(im.convert("RGB"), size)
            path = part / f"{image_id}.png"
            small.save(path, format="PNG")
            rows.append({"id": image_id, **rec, "sha256": sha256_file(path), "width": small.width,
                         "height": small.height, "file": path.name,  # no timestamp: same photos, same bytes
                         "resized_from": [im.width, im.height]})
        if not rows:
            raise AstroganError("natural: no photos produced; check natural.source and natural.count")
    except BaseException:
        shutil.rmtree(part, ignore_errors=True)
        raise
    write_jsonl_atomic(part / MANIFEST, rows)
    old = out_dir.with_name(out_dir.name + ".old")
    if old.exists():
        shutil.rmtree(old)
    if out_dir.exists():
        out_dir.rename(old)
    part.rename(out_dir)
    if old.exists():
        shutil.rmtree(old)
    return rows


def sources_of(n: dict) -> list[str]:
    """``natural.source`` (one name or a list) as a list of known names, in order, once each."""
    sources = [n["source"]] if isinstance(n["source"], str) else list(n["source"] or [])
    if not sources or any(s not in SOURCES for s in sources):
        raise AstroganError(f"natural.source {n['source']!r}: use one or more of {', '.join(SOURCES)} "
                            "in params.yaml")
    return list(dict.fromkeys(sources))


def photos_of(sources: list[str], n: dict) -> Iterator[tuple[str, dict, Image.Image]]:
    """The photos of each source in turn."""
    for source in sources:
        if source == "embedded":
            yield from embedded_photos()
        elif source == "folder":
            yield from folder_photos(str(n.get("folder") or ""), int(n["count"]))
        else:
            yield from coco_photos(int(n["count"]), str(n.get("coco_dir") or ""))


def main() -> None:
    from pipeline.sources.coco import CocoError, download

    params = load_params()
    n = params["natural"]
    out = Path(params["paths"]["natural"])
    sources = sources_of(n)
    try:
        if "coco" in sources and not n.get("coco_dir"):
            download()  # fail (offline) before any photo is written
        rows = build(out, photos_of(sources, n), int(n["size"]))
    except CocoError as e:
        raise AstroganError(f"COCO download failed ({e}); set natural.coco_dir to a local COCO "
                            "folder or drop coco from natural.source") from None
    except BadImage as e:
        raise AstroganError(f"natural: {e}; remove it (the previous photos are kept)") from None
    sizes = np.array([[r["width"], r["height"]] for r in rows])
    print(f"natural: {len(rows)} photos ({', '.join(sources)}) into {out}, short side {sizes.min()} px, "
          f"{sum(r['width'] * r['height'] for r in rows) / 1e6:.1f} Mpx")


if __name__ == "__main__":
    run_main(main)
