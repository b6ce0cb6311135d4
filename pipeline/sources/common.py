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

from pipeline.fsio import MANIFEST, append_jsonl, read_jsonl, safe_name, sha256_bytes

Image.MAX_IMAGE_PIXELS = None  # we bound size ourselves (max_pixels), after a cheap header read
MAX_DECODE_PIXELS = 400_000_000  # refuse anything bigger than this before decoding (bomb guard)


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


class BadImage(ValueError):
    """An input that is not a usable image (corrupt, empty, HTML, too big...)."""


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def done_ids(out_dir: Path) -> set[str]:
    """Ids already in the manifest whose file is present: a rerun skips them."""
    return {r["id"] for r in read_jsonl(out_dir / MANIFEST)
            if any(out_dir.glob(f"{glob_escape(r['id'])}.*"))}


def glob_escape(s: str) -> str:
    return "".join(f"[{c}]" if c in "*?[]" else c for c in s)


TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


def decode_image(data: bytes, origin: str) -> Image.Image:
    """Fully decode ``data`` to an 8-bit image (L, RGB, RGBA...) or raise BadImage naming ``origin``.

    16-bit and float samples (TIFF, PNG) are scaled to 8 bits over their full range, never clipped.
    ``im.info["source_bits"]`` says how many bits the file had, ``im.info["source_format"]`` its
    format. TIFF is decoded with tifffile; ``im.info["pil_unsafe"]`` marks the TIFFs that Pillow
    (which later stages read files with) gets wrong: planar colour (garbled) and float colour
    (unreadable).
    """
    if not data:
        raise BadImage(f"{origin}: empty file")
    head = data[:512].lstrip().lower()
    if head.startswith((b"<!doctype", b"<html", b"<?xml", b"{")):
        raise BadImage(f"{origin}: got an HTML/text page, not an image")
    try:
        if data[:4] in TIFF_MAGIC:
            im = _decode_tiff(data, origin)
        else:
            im = Image.open(io.BytesIO(data))
            fmt = im.format or "PNG"
            _check_pixels(im.width, im.height, origin)
            im.load()
            im, bits = _to_8bit(im)
            im.info.update(source_bits=bits, source_format=fmt)
    except BadImage:
        raise
    except Exception as e:  # PIL and tifffile raise many types for corrupt data
        raise BadImage(f"{origin}: not a decodable image ({type(e).__name__}: {e})") from None
    if im.width == 0 or im.height == 0:
        raise BadImage(f"{origin}: zero-size image")
    return im


def _check_pixels(width: int, height: int, origin: str) -> None:
    if width * height > MAX_DECODE_PIXELS:
        raise BadImage(f"{origin}: {width}x{height} is too large to decode safely")


def _decode_tiff(data: bytes, origin: str) -> Image.Image:
    import tifffile

    with tifffile.TiffFile(io.BytesIO(data)) as tif:
        page = tif.pages.first
        planar = page.planarconfig == 2 and len(page.shape) == 3
        h, w = page.shape[1:] if planar else page.shape[:2]
        _check_pixels(w, h, origin)
        a = page.asarray()
    if planar:
        a = np.moveaxis(a, 0, -1)
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[-1] not in (3, 4)):
        raise BadImage(f"{origin}: unsupported TIFF pixel layout {a.shape}")
    bits = 32 if a.dtype.kind == "f" else 8 * a.dtype.itemsize
    im = Image.fromarray(_scale_to_uint8(a))
    im.info.update(source_bits=bits, source_format="TIFF",
                   pil_unsafe=a.ndim == 3 and (planar or a.dtype.kind == "f"))
    return im


def _scale_to_uint8(a: np.ndarray) -> np.ndarray:
    """Integer samples map over their dtype's range (65535 -> 255); floats over [0, max]."""
    if a.dtype == np.uint8:
        return a
    if a.dtype.kind in "ui":
        top = float(np.iinfo(a.dtype).max)
    else:
        a = np.nan_to_num(a.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        top = max(float(a.max()), 1e-12)
    return (np.clip(a / top, 0, 1) * 255 + 0.5).astype(np.uint8)


def _to_8bit(im: Image.Image) -> tuple[Image.Image, int]:
    """Pillow's 16-bit/int/float modes to 8-bit L; other modes as they are (with their bit count).

    Pillow's own ``convert("L")`` clips these at 255, which turns a 16-bit image white.
    """
    if im.mode.startswith("I;16"):
        return Image.fromarray(_scale_to_uint8(np.asarray(im, dtype=np.uint16))), 16
    if im.mode == "I":   # Pillow's mode for 16-bit grey PNG: values up to 65535 in int32
        a = np.asarray(im)
        a = a.astype(np.uint16) if a.size and 0 <= a.min() and a.max() < 65536 else a
        return Image.fromarray(_scale_to_uint8(a)), 16 if a.dtype == np.uint16 else 32
    if im.mode == "F":
        return Image.fromarray(_scale_to_uint8(np.asarray(im))), 32
    # 16-bit colour PNG: Pillow keeps the high byte of each sample, which is the same scaling.
    bits = 16 if im.format == "PNG" and im.info.get("bitdepth", 8) == 16 else 8
    return im, bits


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
        derived.append(f"{bits}-bit planar or float colour TIFF (Pillow misreads those)")
    # Within the cap the file is kept byte-for-byte (16-bit data included); otherwise it is
    # re-encoded from the 8-bit decode (16-bit samples scaled, never clipped: decode_image).
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
