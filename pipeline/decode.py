"""The one image decoder: every image astrogan reads (scraped files, tiles, photos, CLI and serve
inputs) is decoded here, so a file looks the same to training and to inference.

Inputs: PNG, JPEG and the rest of Pillow's formats; TIFF 8/16-bit/float (tifffile); FITS (astropy;
``.fits.gz`` too); from a path or from bytes in memory. Before any pixel is decoded, empty files,
HTML/text pages saved under an image's name (a failed download) and images over ``max_pixels``
(read from the header, so a decompression bomb costs nothing) are refused. Every failure is an
:class:`InputError` with a one-line reason; the caller puts the file's name in front.

The convention, one for all callers:

- Unsigned 8- and 16-bit samples (PNG, JPEG, TIFF) are display values: they map linearly over
  their type's full range, 0..255 and 0..65535 -> 0..1, as every image viewer shows them. Why not
  over each image's own maximum (what training did before): that brightens a dim image, lets one
  hot pixel set the brightness of the rest, and gives one picture other values at 8 than at 16
  bits. 8-bit files decode exactly as they always did (``v / 255``; :func:`read_uint8` gives their
  bytes back), so the default run, all 8-bit JPEG/PNG, is unchanged.
- Float samples, signed or 32-bit integers and all FITS data are measurements (counts,
  electrons/s: negative sky, cores thousands of times the faint parts, cosmic rays), with no white
  point that a fixed range or the maximum could stand for. They get a display stretch between two
  percentiles of the finite pixels (0.5 and 99.5), one interval for all channels so colours keep
  their balance: ``asinh`` (default; Lupton et al. 2004, linear in the faint parts and logarithmic
  in the bright ones), ``log``, ``linear`` or ``zscale`` (IRAF's, via astropy). NaN/inf pixels
  (masked detectors, off-chip areas) show as black; their count is recorded. The CLI's
  ``--stretch`` applies a stretch to integer data too.
- Alpha is composited on black (the sky), rounded as Pillow's ``alpha_composite`` rounds.
- FITS rows are stored bottom-up (``origin='lower'``): they are flipped to display orientation.

Training keeps uint8: :func:`read_uint8` is :func:`read_picture` quantized to 8 bits, so training
and inference see the same values to 8-bit quantization. Pillow reads 16-bit *colour* PNGs at 8
bits (the high byte, within one 8-bit level of the convention): use TIFF for exact 16-bit colour.
"""

from __future__ import annotations

import gzip
import io
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

Image.MAX_IMAGE_PIXELS = None  # the limit is ours (max_pixels), checked before decoding
MAX_PIXELS = 400_000_000  # the bomb guard for callers that set none (the CLI has --max-pixels)
STRETCHES = ("asinh", "log", "linear", "zscale")
PERCENTILES = (0.5, 99.5)
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".fits", ".fit", ".fts", ".gz"}
ASINH_A, LOG_A = 0.1, 1000.0  # astropy.visualization's AsinhStretch / LogStretch defaults
TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
TEXT_STARTS = (b"<!doctype", b"<html", b"<?xml", b"{")


class InputError(ValueError):
    """An input that cannot be used; the message says why, in one line."""


@dataclass
class Picture:
    """A decoded input, (H, W) grey or (H, W, 3) RGB in display orientation: float32 in [0, 1]
    from :func:`read_picture`, uint8 from :func:`read_uint8`."""

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


def read_picture(source: str | os.PathLike | bytes, *, name: str = "", stretch_kind: str | None = None,
                 percentiles: tuple[float, float] = PERCENTILES, hdu: int | None = None,
                 max_pixels: int = MAX_PIXELS, limit: str = "--max-pixels") -> Picture:
    """Decode a file (or its bytes; ``name`` is then its name) to float32 in [0, 1], by the convention
    above; RGB with equal channels is a grey picture. ``stretch_kind`` overrides the stretch,
    ``hdu`` the FITS HDU; ``limit`` names what raises ``max_pixels`` in the error."""
    raw, bits, meta = _decode(source, name, hdu, max_pixels, limit)
    data, info = _to_unit(raw, meta["format"], stretch_kind, percentiles)
    if data.ndim == 3 and float(np.abs(data - data[..., :1]).max()) < 0.5 / 255:
        data = data[..., 0]
    meta.update(info)
    return Picture(np.ascontiguousarray(data, dtype=np.float32), bits, meta)


def read_uint8(source: str | os.PathLike | bytes, *, name: str = "", max_pixels: int = MAX_PIXELS,
               limit: str = "pipeline.decode.MAX_PIXELS") -> Picture:
    """The same decode as :func:`read_picture` (default stretch) quantized to uint8, (H, W) or
    (H, W, 3): what training and the sources keep. 8-bit files skip the float round trip (their
    samples as they are, which is what ``quantize(v / 255)`` gives)."""
    raw, bits, meta = _decode(source, name, None, max_pixels, limit)
    if raw.dtype == np.uint8 and meta["format"] != "FITS":
        meta.update(stretch="none", interval=[0, 255.0])
        return Picture(np.ascontiguousarray(raw), bits, meta)
    data, info = _to_unit(raw, meta["format"], None, PERCENTILES)
    meta.update(info)
    return Picture(quantize(data, 8), bits, meta)


def quantize(data: np.ndarray, bit_depth: int) -> np.ndarray:
    """Float in [0, 1] -> uint8 or uint16 (rounded): the inverse of the integer convention."""
    top = 255 if bit_depth == 8 else 65535
    return (np.clip(data, 0, 1) * top + 0.5).astype(np.uint8 if bit_depth == 8 else np.uint16)


def stretch(data: np.ndarray, kind: str, percentiles: tuple[float, float] = PERCENTILES
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


def _to_unit(raw: np.ndarray, fmt: str, kind: str | None, percentiles) -> tuple[np.ndarray, dict]:
    """The convention: unsigned 8/16-bit non-FITS samples over their full range, the rest stretched."""
    if kind is None and fmt != "FITS" and raw.dtype in (np.uint8, np.uint16):
        top = float(np.iinfo(raw.dtype).max)
        return raw.astype(np.float32) / top, {"stretch": "none", "interval": [0, top]}
    return stretch(raw, kind or "asinh", percentiles)


def _decode(source, name: str, hdu: int | None, max_pixels: int, limit: str
            ) -> tuple[np.ndarray, int, dict]:
    """Raw samples (H, W) or (H, W, 3), alpha composited, display orientation; bit depth; meta."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        if not data:
            raise InputError("empty file (0 bytes)")
        head, src = data[:512], io.BytesIO(data)
    else:
        src = Path(source)
        name = name or src.name
        if not src.exists():
            raise InputError("no such file")
        if src.is_dir():
            raise InputError("is a folder (pass it as IN to process the images inside)")
        try:
            with src.open("rb") as f:
                head = f.read(512)
        except OSError as e:
            raise InputError(f"cannot read the file ({e.strerror or e})") from None
        if not head:
            raise InputError("empty file (0 bytes)")
    if head.lstrip().lower().startswith(TEXT_STARTS):
        raise InputError("an HTML/text page, not an image (a failed download?)")
    fmt = "the file"
    try:
        if head.startswith(b"SIMPLE  =") or (head[:2] == b"\x1f\x8b" and ".fit" in name.lower()):
            fmt = "FITS"
            if isinstance(src, io.BytesIO) and head[:2] == b"\x1f\x8b":
                src = gzip.GzipFile(fileobj=src)
            raw, meta = _read_fits(src, hdu, max_pixels, limit)
            bits = 32 if raw.dtype.kind == "f" else 8 * raw.dtype.itemsize
        elif head[:4] in TIFF_MAGIC:
            fmt = "TIFF"
            raw, bits, meta = _read_tiff(src, max_pixels, limit)
        else:
            raw, bits, fmt = _read_pil(src, max_pixels, limit)
            meta = {}
    except (InputError, MemoryError):
        raise
    except Exception as e:  # the decoders raise many types for broken files: one line for all
        raise InputError(f"cannot decode {fmt}: {type(e).__name__}: {e} (truncated or corrupt?)") from None
    meta["format"] = fmt
    return _colour_axes(raw), bits, meta


def _check_size(shape: tuple[int, ...], max_pixels: int, limit: str) -> None:
    if len(shape) < 2 or min(shape) <= 0:
        raise InputError(f"image has zero size ({'x'.join(map(str, shape)) or 'no axes'})")
    h, w = shape[0], shape[1]
    if h * w > max_pixels:
        raise InputError(f"{w}x{h} = {w * h:,} pixels exceeds {limit} {max_pixels:,} "
                         "(decompression-bomb guard); raise the limit if this image is genuine")


def _colour_axes(a: np.ndarray) -> np.ndarray:
    """(H, W) or (H, W, 1-4) -> (H, W) or (H, W, 3); alpha composited on black, rounded."""
    if a.ndim == 3 and a.shape[-1] in (2, 4):  # grey+alpha / RGBA: the sky is black
        colour, alpha = a[..., :-1], a[..., -1:]
        if a.dtype.kind in "ui":
            top = int(np.iinfo(a.dtype).max)
            a = ((colour.astype(np.int64) * alpha + top // 2) // top).astype(a.dtype)
        else:
            a = colour * alpha
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim != 2 and not (a.ndim == 3 and a.shape[-1] == 3):
        raise InputError(f"unsupported pixel layout {a.shape}")
    return a


def _read_pil(src, max_pixels: int, limit: str) -> tuple[np.ndarray, int, str]:
    try:
        im = Image.open(src)
    except UnidentifiedImageError:
        raise InputError("not a recognised image (PNG, JPEG, TIFF or FITS)") from None
    with im:
        _check_size((im.height, im.width), max_pixels, limit)
        fmt = im.format or "image"
        # Pillow keeps the high byte of 16-bit colour PNG samples; the tile's raw mode says 16.
        bits = 16 if fmt == "PNG" and any(";16" in str(t[3]) for t in im.tile) else 8
        try:
            im.load()
        except (OSError, SyntaxError, ValueError) as e:
            raise InputError(f"cannot decode {fmt}: {e} (truncated or corrupt?)") from None
        if im.mode.startswith("I;16"):
            return np.asarray(im).astype(np.uint16), 16, fmt
        if im.mode == "I":  # 32-bit integer: Pillow's mode for some 16-bit PNG/TIFF
            a = np.asarray(im)
            fits16 = a.size and 0 <= a.min() and a.max() < 65536
            return (a.astype(np.uint16), 16, fmt) if fits16 else (a.astype(np.float32), 32, fmt)
        if im.mode == "F":
            return np.asarray(im, dtype=np.float32), 32, fmt
        if im.mode == "1":
            im = im.convert("L")
        elif im.mode in ("P", "PA"):
            im = im.convert("RGBA")  # the palette's transparency becomes alpha
        elif im.mode not in ("L", "LA", "RGB", "RGBA"):
            im = im.convert("RGB")   # CMYK, YCbCr...
        return np.asarray(im), bits, fmt


def _read_tiff(src, max_pixels: int, limit: str) -> tuple[np.ndarray, int, dict]:
    import tifffile

    with tifffile.TiffFile(src) as tif:
        page = tif.pages.first
        planar = page.planarconfig == 2 and len(page.shape) >= 3
        _check_size(tuple(page.shape[1:] if planar else page.shape), max_pixels, limit)
        a = page.asarray()
    if planar:  # separate colour planes: (S, H, W)
        a = np.moveaxis(a, 0, -1)
    return a, (32 if a.dtype.kind == "f" else 8 * a.dtype.itemsize), {"planar": planar}


def _read_fits(src, hdu: int | None, max_pixels: int, limit: str) -> tuple[np.ndarray, dict]:
    import warnings

    from astropy.io import fits

    with warnings.catch_warnings(record=True) as caught:  # astropy warns, then fails, on truncation
        warnings.simplefilter("always")
        try:
            hdul = fits.open(src, memmap=False, lazy_load_hdus=False)
        except Exception as e:
            raise InputError(f"cannot read FITS: {type(e).__name__}: {e}") from None
        with hdul:
            idx = _pick_hdu(hdul, hdu)
            h = hdul[idx]
            naxis = int(h.header.get("NAXIS", 0))
            shape = tuple(int(h.header.get(f"NAXIS{i}", 0)) for i in range(naxis, 0, -1))
            plane_shape = tuple(s for s in shape if s != 1)[-2:] or shape
            _check_size(plane_shape if min(shape, default=0) > 0 else shape, max_pixels, limit)
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
