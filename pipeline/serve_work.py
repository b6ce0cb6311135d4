"""The work behind ``astrogan serve``: open images, fast previews, full-resolution jobs, bounded memory.

A :class:`Session` (one per opened image, so one per browser tab) keeps the decoded image (float32
in [0, 1], as ``decode.read_picture`` gives it) in memory; :class:`Sessions` holds at most
``max_sessions`` of them and ``max_bytes`` of pixels, evicting the least recently used.

A preview is fast because the model runs on a small copy: the image is area-downscaled to
``model_side`` px (long side; 256 by default, the guided release's training crop, so one tile), the
model predicts a*b* there (with the hints' coordinates and radii scaled), and the a*b* is upsampled
to the ``display_side`` px preview and joined with the preview's own, sharper L*, as the CLI joins
low-resolution colour with full-resolution L*. The a*b* of the last few hint sets is cached, so the
strength slider (which only scales a*b*) costs no model run. The download is the CLI's computation
at full resolution (``inference.colorize_image`` / ``upscale_image``), run as a :class:`Job` whose
tile count the page polls, written with the CLI's metadata.
"""

from __future__ import annotations

import io
import secrets
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from pipeline import __version__, color, hints
from pipeline import inference as inf
from pipeline.colorizer import takes_hints
from pipeline.decode import Picture, quantize
from pipeline.imageio import write_picture

MAX_HINTS = 1000
AB_CACHE = 8  # a*b* previews kept per session (undo, strength changes)


def fit(h: int, w: int, side: int) -> tuple[int, int]:
    """(h, w) scaled so that the long side is at most ``side`` (never enlarged)."""
    s = min(1.0, side / max(h, w))
    return max(1, round(h * s)), max(1, round(w * s))


def resize(data: np.ndarray, h: int, w: int) -> np.ndarray:
    """Float (H, W) or (H, W, C) -> (h, w[, C]): area average when shrinking (no aliasing), else bilinear."""
    if data.shape[:2] == (h, w):
        return data
    t = torch.from_numpy(np.ascontiguousarray(data, dtype=np.float32))
    t = t[None, None] if t.ndim == 2 else t.permute(2, 0, 1)[None]
    shrink = h <= data.shape[0] and w <= data.shape[1]
    out = F.interpolate(t, size=(h, w), mode="area") if shrink else F.interpolate(
        t, size=(h, w), mode="bilinear", align_corners=False)
    out = out[0, 0] if data.ndim == 2 else out[0].permute(1, 2, 0)
    return np.ascontiguousarray(out.numpy())


def png_bytes(pixels: np.ndarray) -> bytes:
    """An 8-bit preview PNG (fast compression: it travels over loopback)."""
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def scaled_hints(points: list[hints.Hint], sy: float, sx: float, h: int, w: int) -> list[hints.Hint]:
    """Image-pixel hints on a copy of the image scaled by (sy, sx), of size (h, w)."""
    return [hints.Hint(min(int(p.x * sx), w - 1), min(int(p.y * sy), h - 1), p.rgb,
                       max(0, round(p.radius * min(sx, sy)))) for p in points]


@dataclass
class Session:
    """One opened image and its colour guidance (what one browser tab works on)."""

    id: str
    name: str                     # the file name shown and used for the download's name
    picture: Picture
    source: str                   # the upload's name or the path relative to FOLDER
    display_L: np.ndarray         # CIE L* (h, w) of the preview
    model_data: np.ndarray        # the image at the model's preview size (what the model sees)
    reference: torch.Tensor | None = None
    reference_record: dict | None = None
    reference_version: int = 0    # bumped when the reference changes: part of the a*b* cache key
    ab_cache: OrderedDict = field(default_factory=OrderedDict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def nbytes(self) -> int:
        return self.picture.data.nbytes + self.display_L.nbytes + self.model_data.nbytes

    def describe(self) -> dict:
        h, w = self.picture.data.shape[:2]
        dh, dw = self.display_L.shape
        return {"session": self.id, "name": self.name, "width": w, "height": h, "grey": self.picture.grey,
                "bit_depth": self.picture.bit_depth, "preview": [dw, dh],
                "notice": self.picture.meta.get("notice"), "format": self.picture.meta.get("format"),
                "stretch": self.picture.meta.get("stretch")}


def new_session(picture: Picture, name: str, source: str, display_side: int, model_side: int) -> Session:
    h, w = picture.data.shape[:2]
    dh, dw = fit(h, w, display_side)
    mh, mw = fit(h, w, model_side)
    display_L = inf.lightness(resize(picture.data, dh, dw))
    return Session(secrets.token_urlsafe(12), name, picture, source, display_L,
                   resize(picture.data, mh, mw))


class Sessions:
    """The open sessions, least recently used first; evicted past ``max_sessions`` or ``max_bytes``."""

    def __init__(self, max_sessions: int, max_bytes: int):
        self.max_sessions, self.max_bytes = max_sessions, max_bytes
        self.items: OrderedDict[str, Session] = OrderedDict()

    def add(self, session: Session) -> list[Session]:
        """Store ``session``; return the sessions evicted to make room (never the new one)."""
        self.items[session.id] = session
        evicted = []
        while len(self.items) > 1 and (len(self.items) > self.max_sessions or
                                       sum(s.nbytes for s in self.items.values()) > self.max_bytes):
            evicted.append(self.items.popitem(last=False)[1])
        return evicted

    def get(self, sid: str) -> Session | None:
        session = self.items.get(sid)
        if session is not None:
            self.items.move_to_end(sid)
        return session


def parse_hints(rows, width: int, height: int) -> list[hints.Hint]:
    """The page's hints ``[{x, y, color, radius?}, ...]`` (image px) -> Hint list; ValueError, one line."""
    if not isinstance(rows, list):
        raise ValueError("hints must be a list of {x, y, color} points")
    if len(rows) > MAX_HINTS:
        raise ValueError(f"{len(rows)} hints; at most {MAX_HINTS}")
    out = []
    for i, row in enumerate(rows, start=1):
        try:
            x, y, radius = int(row["x"]), int(row["y"]), int(row.get("radius", 1))
            rgb = hints.parse_colour(str(row["color"]))
        except (KeyError, TypeError, ValueError, AttributeError):
            raise ValueError(f"hint {i} is not {{x, y, color}} with whole-number x and y") from None
        if rgb is None:
            raise ValueError(f"hint {i}: colour {row.get('color')!r} is not #rrggbb")
        if not (0 <= x < width and 0 <= y < height) or not 0 <= radius <= 64:
            raise ValueError(f"hint {i} at x={x}, y={y} (radius {radius}) is outside the {width}x{height} "
                             "image or its radius is not 0-64")
        out.append(hints.Hint(x, y, rgb, radius))
    return out


def preview(lm: inf.Loaded, session: Session, points: list[hints.Hint], strength: float,
            tile: int, overlap: int) -> bytes:
    """The colour preview PNG (8-bit, the display size) for these hints, the session's reference and
    ``strength``. A model that takes no hints gets none (the automatic colour)."""
    guided = takes_hints(lm.model)
    points = points if guided else []
    reference = session.reference if guided else None
    key = (tuple(points), session.reference_version if guided else 0)
    with session.lock:
        ab = session.ab_cache.get(key)
        if ab is not None:
            session.ab_cache.move_to_end(key)
    if ab is None:
        ab = _preview_ab(lm, session, points, reference, tile, overlap)
        with session.lock:
            session.ab_cache[key] = ab
            while len(session.ab_cache) > AB_CACHE:
                session.ab_cache.popitem(last=False)
    L = torch.from_numpy(session.display_L)[None]
    lab = torch.cat([L, torch.from_numpy(ab).permute(2, 0, 1) * strength])
    return png_bytes(quantize(color.lab_to_rgb(lab).permute(1, 2, 0).numpy(), 8))


def _preview_ab(lm, session: Session, points, reference, tile: int, overlap: int) -> np.ndarray:
    """a*b* (h, w, 2) at the display size, predicted at the model's preview size."""
    data = session.model_data
    mh, mw = data.shape[:2]
    h, w = session.picture.data.shape[:2]
    small = scaled_hints(points, mh / h, mw / w, mh, mw) if points else None
    with torch.inference_mode():
        rgb = inf.colorize_image(lm, data, tile=tile, overlap=overlap, strength=1.0, bit_depth=16,
                                 points=small, reference=reference, hints_source="the page's hints")
    lab = color.rgb_to_lab(torch.from_numpy(rgb.astype(np.float32) / 65535).permute(2, 0, 1))
    dh, dw = session.display_L.shape
    return resize(lab[1:].permute(1, 2, 0).numpy(), dh, dw)


@dataclass
class Job:
    """A full-resolution colorize or upscale run; the page polls ``done``/``total``."""

    id: str
    session: str
    kind: str                 # "colorize" | "upscale"
    total: int
    done: int = 0
    state: str = "queued"     # queued | running | done | error
    error: str | None = None
    path: Path | None = None  # the finished file (in the server's temporary folder)
    filename: str = ""
    size: tuple[int, int] | None = None
    bits: int = 8

    def status(self) -> dict:
        return {"job": self.id, "kind": self.kind, "state": self.state, "done": self.done,
                "total": self.total, "error": self.error, "width": self.size[0] if self.size else None,
                "height": self.size[1] if self.size else None, "bit_depth": self.bits,
                "download": f"/api/jobs/{self.id}/result" if self.state == "done" else None}


def run_job(job: Job, lm: inf.Loaded, session: Session, points: list[hints.Hint], strength: float,
            tiling: tuple[int, int, int], device: torch.device, folder: Path) -> None:
    """Compute the full-resolution result into ``folder`` (16-bit PNG for 16-bit, float and FITS inputs),
    carrying the CLI's metadata. Errors end up in ``job.error`` (one line)."""
    tile, overlap, batch = tiling
    pic = session.picture
    job.state, job.bits = "running", 8 if pic.bit_depth == 8 else 16
    meta = {"software": f"astrogan {__version__}", "command": job.kind, "source": session.source,
            **lm.record(), "input": pic.meta, "tile": tile, "overlap": overlap, "via": "astrogan serve"}

    def step(n: int) -> None:
        job.done += n

    try:
        with torch.inference_mode():
            if job.kind == "colorize":
                guided = takes_hints(lm.model)
                meta["strength"] = strength
                if guided and points:
                    rows = [[p.x, p.y, hints.hex_colour(p.rgb), p.radius] for p in points]
                    meta["hints"] = {"file": "(placed in astrogan serve)", "points": rows}
                if guided and session.reference_record:
                    meta["reference"] = session.reference_record
                pixels = inf.colorize_image(lm, pic.data, tile=tile, overlap=overlap, batch=batch,
                                            strength=strength, bit_depth=job.bits, device=device,
                                            progress=step,
                                            points=points if guided else None,
                                            reference=session.reference if guided else None,
                                            hints_source="the page's hints")
            else:
                pixels = inf.upscale_image(lm, pic.data, tile=tile, overlap=overlap, batch=batch,
                                           bit_depth=job.bits, device=device, progress=step)
        path = folder / f"{job.id}.png"
        write_picture(path, pixels, meta)
        job.path, job.size = path, (pixels.shape[1], pixels.shape[0])
        job.state = "done"
    except Exception as e:  # a worker thread: the page shows the error, the server keeps running
        why = str(e).splitlines()[0] if str(e) else type(e).__name__
        job.state, job.error = "error", f"{job.kind} failed: {why}"
