"""Stage ``natural``: colour photos for pretraining, resized so their short side is ``natural.size``.

    python -m pipeline.stages.natural

``natural.source: embedded`` takes scikit-image's bundled colour photos (no network);
``natural.source: coco`` takes ``natural.count`` COCO val2017 photos (``natural.coco_dir`` or a
verified download, see ``pipeline.sources.coco``). Writes ``<paths.natural>/<id>.png`` (8-bit
RGB, Lanczos resize, down or up) and ``manifest.jsonl`` (the scrape schema plus ``file`` and
``resized_from`` = [width, height] before resizing). The folder is rebuilt on every run.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from pipeline.fsio import MANIFEST, sha256_file, write_jsonl_atomic
from pipeline.params import load_params
from pipeline.sources.common import BadImage, now_iso
from pipeline.sources.embedded import SKIMAGE_CREDITS, reset_dir, skimage_array

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
        try:
            with Image.open(io.BytesIO(data)) as im:
                yield image_id, rec, im.convert("RGB")
        except OSError as e:
            raise BadImage(f"{rec['url']}: not a decodable image ({e}); remove it") from None


def build(out_dir: Path, photos, size: int) -> list[dict]:
    """Write each photo resized to a short side of ``size`` as PNG; return the manifest rows."""
    reset_dir(out_dir)
    rows = []
    for image_id, rec, im in tqdm(photos, desc="natural", unit="img"):
        small = resize_short_side(im.convert("RGB"), size)
        path = out_dir / f"{image_id}.png"
        tmp = out_dir / f".{image_id}.png.part"
        small.save(tmp, format="PNG")
        tmp.replace(path)
        rows.append({"id": image_id, **rec, "sha256": sha256_file(path), "width": small.width,
                     "height": small.height, "fetched_at": now_iso(), "file": path.name,
                     "resized_from": [im.width, im.height]})
    if not rows:
        raise SystemExit("natural: no photos produced; check natural.count and natural.source")
    write_jsonl_atomic(out_dir / MANIFEST, rows)
    return rows


def main() -> None:
    params = load_params()
    n = params["natural"]
    out = Path(params["paths"]["natural"])
    if n["source"] == "embedded":
        rows = build(out, embedded_photos(), int(n["size"]))
    elif n["source"] == "coco":
        from pipeline.sources.coco import CocoError, download

        coco_dir = str(n.get("coco_dir") or "")
        try:
            if not coco_dir:
                download()  # fail (offline) before the output folder is touched
            rows = build(out, coco_photos(int(n["count"]), coco_dir), int(n["size"]))
        except CocoError as e:
            raise SystemExit(f"COCO download failed ({e}); set natural.coco_dir to a local COCO "
                             "folder or use natural.source: embedded") from None
    else:
        raise SystemExit(f"natural.source {n['source']!r}: use embedded or coco in params.yaml")
    sizes = np.array([[r["width"], r["height"]] for r in rows])
    print(f"natural: {len(rows)} photos into {out}, short side {sizes.min()} px, "
          f"{sum(r['width'] * r['height'] for r in rows) / 1e6:.1f} Mpx")


if __name__ == "__main__":
    main()
