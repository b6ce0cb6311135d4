"""What every source shares: its config, and storing one image with its manifest record."""

from __future__ import annotations

import io
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from pipeline.decode import InputError, read_uint8
from pipeline.fsio import MANIFEST, append_jsonl, read_jsonl, safe_name, sha256_bytes


@dataclass(frozen=True)
class SourceConfig:
    """``scrape.limit``, ``scrape.max_pixels`` and the source's own section ``scrape.<name>``."""

    name: str
    limit: int = 0
    max_pixels: int = 16_000_000
    options: dict[str, Any] = field(default_factory=dict)
    # Politeness of web sources (scrape.concurrency / rate_per_s / timeout_s / retries).
    concurrency: int = 4
    rate_per_s: float = 2.0
    timeout_s: float = 60.0
    retries: int = 5

    @classmethod
    def from_params(cls, params: dict, name: str) -> SourceConfig:
        s = params["scrape"]
        return cls(name=name, limit=int(s.get("limit", 0)), max_pixels=int(s["max_pixels"]),
                   options=dict(s.get(name) or {}),
                   concurrency=int(s.get("concurrency", cls.concurrency)),
                   rate_per_s=float(s.get("rate_per_s", cls.rate_per_s)),
                   timeout_s=float(s.get("timeout_s", cls.timeout_s)),
                   retries=int(s.get("retries", cls.retries)))


class BadImage(InputError):
    """An input that is not a usable image (corrupt, empty, HTML, too big...), named in the message."""


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def done_ids(out_dir: Path) -> set[str]:
    """Ids already in the manifest whose file is present: a rerun skips them."""
    return {r["id"] for r in read_jsonl(out_dir / MANIFEST)
            if any(out_dir.glob(f"{glob_escape(r['id'])}.*"))}


def glob_escape(s: str) -> str:
    return "".join(f"[{c}]" if c in "*?[]" else c for c in s)


def decode_image(data: bytes, origin: str) -> Image.Image:
    """Fully decode ``data`` with the project's one decoder (:mod:`pipeline.decode`: its checks and
    its convention, so a stored file looks as training will see it) to an 8-bit L or RGB image, or
    raise BadImage naming ``origin``.

    ``im.info``: ``source_bits`` (8, 16 or 32), ``source_format`` (JPEG, PNG, TIFF, FITS...) and
    ``pil_unsafe``, why the file cannot be kept as it is, or "": dedup hashes files with Pillow,
    which garbles planar colour TIFF and cannot read float colour TIFF or FITS.
    """
    try:
        pic = read_uint8(data, name=origin)
    except InputError as e:
        raise BadImage(f"{origin}: {e}") from None
    im = Image.fromarray(pic.data)
    fmt, bits = pic.meta["format"], pic.bit_depth
    unsafe = ""
    if fmt == "TIFF" and not pic.grey and (pic.meta.get("planar") or bits == 32):
        unsafe = f"{bits}-bit planar or float colour TIFF (Pillow misreads those)"
    elif fmt == "FITS":
        lo, hi = pic.meta["percentiles"]
        unsafe = (f"FITS HDU {pic.meta['hdu']}, {pic.meta['stretch']} stretch between its {lo:g} and "
                  f"{hi:g} percentiles")
    im.info.update(source_bits=bits, source_format=fmt, pil_unsafe=unsafe)
    return im


def shrink_to(im: Image.Image, max_pixels: int) -> Image.Image:
    """Downscale (Lanczos, aspect kept) so that width*height <= max_pixels."""
    if max_pixels <= 0 or im.width * im.height <= max_pixels:
        return im
    scale = (max_pixels / (im.width * im.height)) ** 0.5
    size = (max(1, int(im.width * scale)), max(1, int(im.height * scale)))
    if im.mode not in ("RGB", "RGBA", "L"):
        im = im.convert("RGBA" if "A" in im.getbands() else "RGB")
    return im.resize(size, Image.Resampling.LANCZOS)


def write_durable(out_dir: Path, name: str, data: bytes) -> Path:
    """Write ``out_dir/name`` via a ``.part`` temp file, fsync'd then renamed: a killed run never
    leaves a partial file under the final name, and what is renamed is on disk."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path, tmp = out_dir / name, out_dir / f".{name}.part"
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def store_image(out_dir: Path, image_id: str, data: bytes | None, record: dict, *,
                max_pixels: int, array: np.ndarray | None = None, stamp: bool = True) -> dict:
    """Validate, maybe downscale, atomically write ``<id>.<ext>``, then append the manifest record.

    Give either the encoded file ``data`` (kept byte-for-byte when no downscale is needed) or a
    decoded ``array``. Returns the record written. Raises BadImage without writing anything.
    ``stamp``: record ``fetched_at`` (a web download's provenance); local sources pass False, so
    that rebuilding them gives the same bytes.
    """
    image_id = safe_name(image_id)
    origin = record.get("url") or image_id
    if array is not None:
        im = Image.fromarray(array)
        data = None
    else:
        im = decode_image(data or b"", origin)
    small = shrink_to(im, max_pixels)
    fmt = im.info.get("source_format", im.format or "PNG").upper()
    bits = im.info.get("source_bits", 8)
    derived = []
    if small is not im:
        derived.append(f"downscaled from {im.width}x{im.height}")
    if im.info.get("pil_unsafe"):
        derived.append(im.info["pil_unsafe"])
    # Within the cap the file is kept byte-for-byte (16-bit data included); otherwise it is
    # re-encoded from the 8-bit decode (pipeline.decode's convention: 16-bit over its full range).
    if derived or data is None:
        fmt = "JPEG" if fmt == "JPEG" and small.mode in ("RGB", "L") else "PNG"
        buf = io.BytesIO()
        small.save(buf, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
        data = buf.getvalue()
        if bits > 8:
            derived.append(f"stored as 8-bit {fmt} (from {bits}-bit samples)")
    if derived:
        record = {**record, "derived": "; ".join(derived)}
    ext = {"JPEG": "jpg", "PNG": "png", "TIFF": "tif", "FITS": "fits"}.get(fmt, fmt.lower())
    path = write_durable(out_dir, f"{image_id}.{ext}", data)
    row = {"id": image_id, "source": record.get("source"), "url": record.get("url"),
           "sha256": sha256_bytes(data), "width": small.width, "height": small.height,
           "title": record.get("title", ""), "credit": record.get("credit", "unknown"),
           "licence": record.get("licence", "unknown"), **({"fetched_at": now_iso()} if stamp else {}),
           "file": path.name}
    row.update({k: v for k, v in record.items() if k not in row})
    append_jsonl(out_dir / MANIFEST, row)
    return row
