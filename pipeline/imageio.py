"""Read any input image to float arrays in [0, 1] (with a display stretch) and write PNG/TIFF outputs.

Inputs: PNG, JPEG (Pillow), TIFF 8/16-bit/float (tifffile), FITS (astropy; ``.fits.gz`` too). The
size is checked from the header before any pixel is decoded, so a decompression bomb costs nothing.
Integer PNG/JPEG/TIFF data map linearly over their dtype's range unless a ``stretch`` is asked for;
FITS and float data (kept in float until here) get a display stretch: ``asinh`` (default), ``log``,
``linear`` (all three between two percentiles of the finite pixels) or ``zscale`` (IRAF's, via
astropy). NaN/inf pixels (masked detectors, off-chip areas) show as black; their count is recorded.
FITS rows are stored bottom-up (``origin='lower'``): they are flipped to display orientation.

Outputs: PNG 8/16-bit, TIFF 8/16-bit, written atomically, carrying JSON metadata (model, its sha256,
stretch, source file) in a PNG ``tEXt`` chunk named ``astrogan`` or the TIFF ImageDescription.
Pillow cannot write 16-bit RGB PNG, so 16-bit PNGs are encoded here (zlib, filter 0). Pillow reads
16-bit *colour* PNGs at 8 bits: use TIFF for 16-bit colour inputs.
"""

from __future__ import annotations

import json
import os
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, PngImagePlugin, UnidentifiedImageError

from pipeline.fsio import atomic_path

Image.MAX_IMAGE_PIXELS = None  # the limit is ours (max_pixels), checked before decoding
STRETCHES = ("asinh", "log", "linear", "zscale")
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".fits", ".fit", ".fts", ".gz"}
ASINH_A, LOG_A = 0.1, 1000.0  # astropy.visualization's AsinhStretch / LogStretch defaults
META_KEY = "astrogan"


class InputError(Exception):
    """An input that cannot be used; the message says why, in one line."""


@dataclass
class Picture:
    """A decoded input: float32 (H, W) grey or (H, W, 3) RGB in [0, 1], display orientation."""

    data: np.ndarray
    bit_depth: int                      # of the source samples: 8, 16, or 32 (float)
    meta: dict = field(default_factory=dict)  # format, stretch, hdu, nan_pixels, ...

    @property
    def grey(self) -> bool:
        return self.data.ndim == 2


def is_image_name(path: Path) -> bool:
    """Whether a file found in a folder looks like an input (by suffix; ``.gz`` only as ``.fits.gz``)."""
    s = path.suffix.lower()
    return s in IMAGE_SUFFIXES and (s != ".gz" or ".fit" in path.name.lower())


def _check_size(path: Path, shape: tuple[int, ...], max_pixels: int) -> None:
    if len(shape) < 2 or min(shape) <= 0:
        raise InputError(f"image has zero size ({'x'.join(map(str, shape)) or 'no axes'})")
    h, w = shape[0], shape[1]
    if h * w > max_pixels:
        raise InputError(f"{w}x{h} = {w * h:,} pixels exceeds --max-pixels {max_pixels:,} "
                         "(decompression-bomb guard); raise the limit if this image is genuine")


def stretch(data: np.ndarray, kind: str, percentiles: tuple[float, float] = (0.5, 99.5)
            ) -> tuple[np.ndarray, dict]:
    """Float data (any range, NaNs allowed) -> float32 in [0, 1] and a record of what was done.

    One interval for all channels, so colour balance is kept. NaN/inf -> 0.
    """
    if kind not in STRETCHES:
        raise ValueError(f"unknown stretch {kind!r}; use one of {', '.join(STRETCHES)}")
    data = np.asarray(data, dtype=np.float32)
    finite = np.isfinite(data)
    vals = data[finite]
    if vals.size == 0:
        raise InputError("no finite pixel values (all NaN or inf)")
    sample = vals[:: max(1, vals.size // 2_000_000)]  # percentiles of 2M samples: exact enough, fast
    if kind == "zscale":
        from astropy.visualization import ZScaleInterval

        lo, hi = (float(v) for v in ZScaleInterval().get_limits(sample))
    else:
        lo, hi = (float(v) for v in np.percentile(sample, percentiles))
    x = np.zeros_like(data) if hi <= lo else (data - lo) / (hi - lo)
    x = np.clip(np.where(finite, x, 0), 0, 1)
    if kind == "asinh":
        x = np.arcsinh(x / ASINH_A) / np.arcsinh(1 / ASINH_A)
    elif kind == "log":
        x = np.log1p(LOG_A * x) / np.log1p(LOG_A)
    info = {"stretch": kind, "interval": [lo, hi], "nan_pixels": int(data.size - vals.size)}
    if kind != "zscale":
        info["percentiles"] = list(percentiles)
    return x.astype(np.float32), info


def _to_unit(raw: np.ndarray, kind: str | None, percentiles, default: str) -> tuple[np.ndarray, dict]:
    """Integer data map over their dtype's range unless a stretch is asked for; float data stretch."""
    if kind is None and raw.dtype.kind in "ui":
        top = float(np.iinfo(raw.dtype).max)
        return np.clip(raw.astype(np.float32) / top, 0, 1), {"stretch": "none", "interval": [0, top]}
    return stretch(raw, kind or default, percentiles)


def _colour_axes(a: np.ndarray) -> np.ndarray:
    """(H, W), (H, W, 1-4) or planar (3-4, H, W) -> (H, W) or (H, W, 3); alpha composited on black."""
    if a.ndim == 3 and a.shape[0] in (3, 4) and a.shape[-1] not in (3, 4):
        a = np.moveaxis(a, 0, -1)
    if a.ndim == 3 and a.shape[-1] in (2, 4):  # grey+alpha / RGBA: the sky is black
        alpha = a[..., -1:].astype(np.float32) / (np.iinfo(a.dtype).max if a.dtype.kind in "ui" else 1)
        a = (a[..., :-1] * alpha).astype(a.dtype)
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim != 2 and not (a.ndim == 3 and a.shape[-1] == 3):
        raise InputError(f"unsupported pixel layout {a.shape}")
    return a


def _read_pil(path: Path, max_pixels: int) -> tuple[np.ndarray, int]:
    try:
        im = Image.open(path)
    except UnidentifiedImageError:
        raise InputError("not a recognised image (PNG, JPEG, TIFF or FITS)") from None
    with im:
        _check_size(path, (im.height, im.width), max_pixels)
        try:
            im.load()
        except (OSError, SyntaxError, ValueError) as e:
            raise InputError(f"cannot decode {im.format}: {e} (truncated or corrupt?)") from None
        if im.mode in ("I;16", "I;16B", "I;16L"):
            return np.asarray(im, dtype=np.uint16), 16
        if im.mode == "I":  # 32-bit integer: Pillow's mode for some 16-bit PNG/TIFF
            a = np.asarray(im)
            fits16 = a.size and 0 <= a.min() and a.max() < 65536
            return (a.astype(np.uint16), 16) if fits16 else (a.astype(np.float32), 32)
        if im.mode == "F":
            return np.asarray(im, dtype=np.float32), 32
        if im.mode == "1":
            im = im.convert("L")
        if im.mode not in ("L", "LA", "RGB", "RGBA"):
            im = im.convert("RGBA")
        return np.asarray(im), 8


def _read_tiff(path: Path, max_pixels: int) -> tuple[np.ndarray, int]:
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            page = tif.pages.first
            shape = page.shape if page.planarconfig != 2 or len(page.shape) < 3 else page.shape[1:]
            _check_size(path, tuple(shape), max_pixels)
            a = page.asarray()
    except InputError:
        raise
    except Exception as e:  # tifffile raises many types for broken files
        raise InputError(f"cannot decode TIFF: {type(e).__name__}: {e} (truncated or corrupt?)") from None
    return a, (32 if a.dtype.kind == "f" else 8 * a.dtype.itemsize)


def _read_fits(path: Path, hdu: int | None, max_pixels: int) -> tuple[np.ndarray, dict]:
    import warnings

    from astropy.io import fits

    with warnings.catch_warnings(record=True) as caught:  # astropy warns, then fails, on truncation
        warnings.simplefilter("always")
        try:
            hdul = fits.open(path, memmap=False, lazy_load_hdus=False)
        except Exception as e:
            raise InputError(f"cannot read FITS: {type(e).__name__}: {e}") from None
        with hdul:
            idx = _pick_hdu(hdul, hdu)
            h = hdul[idx]
            naxis = int(h.header.get("NAXIS", 0))
            shape = tuple(int(h.header.get(f"NAXIS{i}", 0)) for i in range(naxis, 0, -1))
            plane_shape = tuple(s for s in shape if s != 1)[-2:] or shape
            _check_size(path, plane_shape if min(shape, default=0) > 0 else shape, max_pixels)
            try:
                a = np.asarray(h.data)
            except Exception as e:
                truncated = [str(w.message) for w in caught if "truncated" in str(w.message)]
                why = truncated[0] if truncated else f"{type(e).__name__}: {e}"
                raise InputError(f"cannot read FITS data of HDU {idx}: {why}") from None
    meta = {"hdu": idx, "extname": h.name or None, "fits_shape": list(shape)}
    a = a.reshape([s for s in a.shape if s != 1] or [1, 1])
    while a.ndim > 2:  # a cube: its first plane, and say so
        meta.setdefault("notice", f"data cube {tuple(a.shape)}: used plane 0 of each leading axis")
        a = a[0]
    if a.ndim < 2 or a.size == 0:
        raise InputError(f"HDU {idx} is not a 2-D image (shape {tuple(a.shape)})")
    return a[::-1], meta  # origin='lower': the first row is the bottom of the picture


def _pick_hdu(hdul, hdu: int | None) -> int:
    """``--hdu N``; else the first HDU named SCI with data; else the first image HDU with data."""
    if hdu is not None:
        if not 0 <= hdu < len(hdul):
            raise InputError(f"--hdu {hdu} out of range: the file has {len(hdul)} HDUs")
        if not hdul[hdu].is_image or hdul[hdu].header.get("NAXIS", 0) == 0:
            raise InputError(f"HDU {hdu} ({type(hdul[hdu]).__name__}) holds no image data")
        return hdu
    images = [i for i, h in enumerate(hdul) if h.is_image and h.header.get("NAXIS", 0) >= 2]
    sci = [i for i in images if hdul[i].name == "SCI"]
    if not (sci or images):
        kinds = ", ".join(f"{i}:{type(h).__name__}" for i, h in enumerate(hdul))
        raise InputError(f"FITS has no image HDU with data (HDUs {kinds})")
    return (sci or images)[0]


def read_picture(path: str | os.PathLike, *, stretch_kind: str | None = None,
                 percentiles: tuple[float, float] = (0.5, 99.5), hdu: int | None = None,
                 max_pixels: int = 200_000_000) -> Picture:
    """Decode ``path`` to a :class:`Picture`; every failure is an :class:`InputError` with a reason."""
    path = Path(path)
    if not path.exists():
        raise InputError("no such file")
    if path.is_dir():
        raise InputError("is a folder (pass it as IN to process the images inside)")
    if path.stat().st_size == 0:
        raise InputError("empty file (0 bytes)")
    with path.open("rb") as f:
        head = f.read(16)
    if head.startswith(b"SIMPLE  =") or (head[:2] == b"\x1f\x8b" and ".fit" in path.name.lower()):
        raw, meta = _read_fits(path, hdu, max_pixels)
        meta["format"], bits = "FITS", 32 if raw.dtype.kind == "f" else 8 * raw.dtype.itemsize
        data, info = stretch(raw, stretch_kind or "asinh", percentiles)
    else:
        if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
            raw, bits = _read_tiff(path, max_pixels)
            meta = {"format": "TIFF"}
        else:
            raw, bits = _read_pil(path, max_pixels)
            meta = {"format": "image"}
        raw = _colour_axes(raw)
        data, info = _to_unit(raw, stretch_kind, percentiles, "asinh")
    if data.ndim == 3 and float(np.abs(data - data[..., :1]).max()) < 0.5 / 255:
        data = np.ascontiguousarray(data[..., 0])  # RGB with equal channels is a grey image
    meta.update(info)
    return Picture(np.ascontiguousarray(data, dtype=np.float32), bits, meta)


def quantize(data: np.ndarray, bit_depth: int) -> np.ndarray:
    """Float in [0, 1] -> uint8 or uint16 (rounded)."""
    top = 255 if bit_depth == 8 else 65535
    return (np.clip(data, 0, 1) * top + 0.5).astype(np.uint8 if bit_depth == 8 else np.uint16)


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def encode_png16(a: np.ndarray, text: dict[str, str]) -> bytes:
    """A 16-bit grey (H, W) or RGB (H, W, 3) PNG with tEXt chunks (Pillow cannot write 16-bit RGB)."""
    h, w = a.shape[:2]
    colour = 2 if a.ndim == 3 else 0
    rows = a.astype(">u2").reshape(h, -1).view(np.uint8)
    raw = np.concatenate([np.zeros((h, 1), np.uint8), rows], axis=1)  # filter byte 0 per row
    body = [_png_chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, colour, 0, 0, 0))]
    body += [_png_chunk(b"tEXt", k.encode("latin-1") + b"\0" + v.encode("latin-1", "replace"))
             for k, v in text.items()]
    body.append(_png_chunk(b"IDAT", zlib.compress(raw.tobytes(), 6)))
    return b"\x89PNG\r\n\x1a\n" + b"".join(body) + _png_chunk(b"IEND", b"")


def write_picture(path: str | os.PathLike, pixels: np.ndarray, meta: dict) -> None:
    """Atomically write uint8/uint16 pixels (H, W) or (H, W, 3) as PNG or TIFF (by suffix) + JSON meta."""
    path = Path(path)
    blob = json.dumps(meta, sort_keys=True, default=str)
    suffix = path.suffix.lower()
    with atomic_path(path) as tmp:
        if suffix in (".tif", ".tiff"):
            import tifffile

            tifffile.imwrite(tmp, pixels, photometric="rgb" if pixels.ndim == 3 else "minisblack",
                             description=blob, metadata=None, compression="zlib")
        elif suffix == ".png" and pixels.dtype == np.uint16:
            tmp.write_bytes(encode_png16(pixels, {META_KEY: blob, "Software": "astrogan"}))
        elif suffix == ".png":
            info = PngImagePlugin.PngInfo()
            info.add_text(META_KEY, blob)
            info.add_text("Software", "astrogan")
            Image.fromarray(pixels).save(tmp, format="PNG", pnginfo=info, compress_level=6)
        else:
            raise ValueError(f"{path}: output must be .png, .tif or .tiff")


def read_meta(path: str | os.PathLike) -> dict:
    """The JSON metadata astrogan wrote into a PNG or TIFF output ({} when there is none)."""
    path = Path(path)
    if path.suffix.lower() in (".tif", ".tiff"):
        import tifffile

        with tifffile.TiffFile(path) as tif:
            desc = tif.pages.first.description
    else:
        with Image.open(path) as im:
            desc = im.text.get(META_KEY, "") if hasattr(im, "text") else ""
    try:
        return json.loads(desc) if desc else {}
    except json.JSONDecodeError:
        return {}
