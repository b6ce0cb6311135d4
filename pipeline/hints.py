"""Guided colour: what a user knows, as colorizer inputs (Zhang, Zhu et al. 2017, "Real-Time
User-Guided Image Colorization with Learned Deep Priors").

Two kinds of guidance, each optional:
- **local hints**: colour points, each a square patch of a few px carrying one a*b* (the patch's
  mean colour in training, the user's colour in ``astrogan colorize --hints``);
- **a global hint**: a reference image's palette, its mean a*b* per L* bin (``--reference``).

A guided generator (``pipeline.models.guided_unet``) takes ``CHANNELS`` input channels (N, 10, H, W):

====  ========================================================================================
0     the grey image, L* / 50 - 1 (what every automatic colorizer gets)
1, 2  hint a*b* / 110 at the hinted pixels, 0 elsewhere   } Zhang et al. 2017's local hint map
3     hint mask: 1 at the hinted pixels                     }
4, 5  a*b* / 110 propagated from the hints: their average weighted by a Gaussian of the distance in
      (L*/10, x, y), x and y in units of a quarter of the image diagonal (``SIGMA``; as sigma -> 0,
      the nearest hint of docs/design.md's guided colour reference, which it beats)
6     1 - exp(-distance to the nearest hint / 2): 0 at a hint, towards 1 far away, exactly 1 with none
7, 8  the reference palette at each pixel's L*, a*b* / 110  } the global hint, rendered through L*
9     1 where a reference was given
====  ========================================================================================

With no guidance, channels 1-9 are (0, 0, 0, 0, 0, 1, 0, 0, 0): the automatic colorizer's input.
The palette is the median a*b* per L* bin (``BINS`` centres, 5 L* apart; empty bins take the
nearest filled one), rendered at each pixel's L* by linear interpolation between the centres.
"""

from __future__ import annotations

import csv
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pipeline import color
from pipeline.errors import AstroganError

CHANNELS = 10
BINS = 21                      # palette centres at L* = 0, 5, ..., 100
BIN_WIDTH = 100.0 / (BINS - 1)
L_UNIT = 10.0                  # L* units per unit of distance (docs/design.md's nearest-hint reference)
DIST_SCALE = 2.0               # channel 6 = 1 - exp(-distance / DIST_SCALE)
_CHUNK = 64                    # hints per distance block (bounded memory with many hints)
SIGMA = 0.4                    # Gaussian width of the hint propagation, in distance units


@dataclass(frozen=True)
class GuideConfig:
    """How training simulates users (params ``guide``; a zoo entry's ``guide`` keys override).

    Zhang et al. 2017: the number of points is geometric (here: a run of successes with
    continuation probability 1 - p, so P(0) = p and the mean is (1 - p) / p, 7 for p = 1/8), each a
    square patch of 1-9 px carrying its mean colour, at N(0.5, 0.25) of the image size."""

    p: float = 0.125               # geometric parameter of the point count
    none: float = 0.25             # extra share of samples with no point at all
    max_points: int = 64           # cap on the count
    patch: tuple[int, int] = (1, 9)  # patch side, px, drawn uniformly in [lo, hi]
    where: str = "normal"          # normal: N(0.5, 0.25) of the size, clipped | uniform
    reference: float = 0.5         # share of samples given a reference (another crop of the same image)
    desaturate: float = 0.25       # share of samples with a*b* (truth, hints, reference) scaled by U(0, 1)

    @classmethod
    def from_params(cls, section: dict | None) -> GuideConfig:
        s = dict(section or {})
        known = {"p", "none", "max_points", "patch", "where", "reference", "desaturate"}
        cfg = cls(**{k: (tuple(v) if k == "patch" else v) for k, v in s.items() if k in known})
        if not 0 < cfg.p <= 1 or not all(0 <= v <= 1 for v in (cfg.none, cfg.reference, cfg.desaturate)):
            raise AstroganError(f"params.yaml: guide {s}: p in (0, 1]; none, reference, desaturate in [0, 1]")
        if cfg.where not in ("normal", "uniform") or not 1 <= cfg.patch[0] <= cfg.patch[1]:
            raise AstroganError(f"params.yaml: guide {s}: where normal|uniform, patch [lo, hi], 1 <= lo "
                                "<= hi")
        return cfg


# --- points ------------------------------------------------------------------------------------

def point_count(gen: torch.Generator, cfg: GuideConfig) -> int:
    """How many points one training sample gets: 0 with probability ``none``, else geometric."""
    if torch.rand(1, generator=gen).item() < cfg.none:
        return 0
    u = torch.rand(1, generator=gen).item()
    n = int(math.floor(math.log(max(u, 1e-12)) / math.log(1 - cfg.p))) if cfg.p < 1 else 0
    return min(n, cfg.max_points)


def sample_points(lab: torch.Tensor, n: int, gen: torch.Generator, *, where: str = "uniform",
                  patch: tuple[int, int] = (3, 3)) -> torch.Tensor:
    """``n`` points of one image's L*a*b* (3, H, W): (n, 5) rows (y0, x0, side, a, b), each a square
    patch of ``side`` px at (y0, x0) (top-left, inside the image) carrying the patch's mean a*b*."""
    _, h, w = lab.shape
    rows = torch.zeros(n, 5)
    for i in range(n):
        side = int(torch.randint(patch[0], patch[1] + 1, (1,), generator=gen))
        side = min(side, h, w)
        if where == "normal":
            cy, cx = (0.5 + 0.25 * torch.randn(2, generator=gen)).clamp(0, 1).tolist()
        else:
            cy, cx = torch.rand(2, generator=gen).tolist()
        y0 = min(int(cy * (h - side + 1)), h - side)
        x0 = min(int(cx * (w - side + 1)), w - side)
        ab = lab[1:, y0:y0 + side, x0:x0 + side].float().mean(dim=(1, 2))
        rows[i] = torch.tensor([y0, x0, side, float(ab[0]), float(ab[1])])
    return rows


def hint_map(points: torch.Tensor, h: int, w: int, origin: tuple[int, int] = (0, 0), device=None
             ) -> torch.Tensor:
    """Zhang et al.'s local hint map (3, h, w): a*b* / 110 and a mask, for ``points`` (P, 5) rows
    (y0, x0, side, a, b) in image px, on the block of ``h`` x ``w`` px whose top-left is image px
    ``origin`` (a tile's part of the image). A later point wins where patches overlap."""
    out = torch.zeros(3, h, w, device=device)
    oy, ox = origin
    for y0, x0, side, a, b in points.tolist():
        r0, r1 = max(int(y0) - oy, 0), min(int(y0 + side) - oy, h)
        c0, c1 = max(int(x0) - ox, 0), min(int(x0 + side) - ox, w)
        if r0 < r1 and c0 < c1:
            out[0, r0:r1, c0:c1], out[1, r0:r1, c0:c1] = a / color.AB_SCALE, b / color.AB_SCALE
            out[2, r0:r1, c0:c1] = 1.0
    return out


def point_lightness(points: torch.Tensor, L: torch.Tensor) -> torch.Tensor:
    """The mean L* (P,) of each point's patch in the whole image's L* (H, W)."""
    return torch.tensor([float(L[int(y0):int(y0 + s), int(x0):int(x0 + s)].float().mean())
                         for y0, x0, s, _, _ in points.tolist()])


def _distances2(pts: torch.Tensor, point_L: torch.Tensor, L: torch.Tensor, origin: tuple[int, int],
                unit: float) -> torch.Tensor:
    """Squared distances (P, h, w) in (L*/10, y/unit, x/unit) from points (P, 5) to a block's pixels."""
    h, w = L.shape
    ys = torch.arange(h, device=L.device, dtype=torch.float32) + origin[0]
    xs = torch.arange(w, device=L.device, dtype=torch.float32) + origin[1]
    cy, cx = pts[:, 0] + (pts[:, 2] - 1) / 2, pts[:, 1] + (pts[:, 2] - 1) / 2
    return (((L[None] - point_L[:, None, None]) / L_UNIT) ** 2
            + ((ys[None, :, None] - cy[:, None, None]) / unit) ** 2
            + ((xs[None, None, :] - cx[:, None, None]) / unit) ** 2)


def nearest(points: torch.Tensor, point_L: torch.Tensor, L: torch.Tensor, origin: tuple[int, int],
            unit: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Each pixel's nearest point in (L*/10, y/unit, x/unit): its a*b* (2, h, w) in CIE units and the
    distance (h, w), for the block of L* (h, w) whose top-left is image px ``origin``. ``unit``: a
    quarter of the image diagonal in px. No points: zeros and +inf."""
    best = torch.full(L.shape, math.inf, device=L.device)
    ab = torch.zeros(2, *L.shape, device=L.device)
    pts, pl = points.to(L.device), point_L.to(L.device)
    for i in range(0, len(pts), _CHUNK):
        d, arg = _distances2(pts[i:i + _CHUNK], pl[i:i + _CHUNK], L, origin, unit).min(dim=0)
        d = d.sqrt()
        closer = d < best
        best = torch.where(closer, d, best)
        ab = torch.where(closer[None], pts[i:i + _CHUNK, 3:5][arg].permute(2, 0, 1), ab)
    return ab, best


def propagate(points: torch.Tensor, point_L: torch.Tensor, L: torch.Tensor, origin: tuple[int, int],
              unit: float, sigma: float = 0.4) -> tuple[torch.Tensor, torch.Tensor]:
    """The points' a*b* (2, h, w) averaged with Gaussian weights exp(-d^2 / 2 sigma^2) of their distance
    d (as :func:`nearest`), streamed over blocks of points (a running log-sum-exp), and the distance
    to the nearest point (h, w). No points: zeros and +inf."""
    ab = torch.zeros(2, *L.shape, device=L.device)
    best = torch.full(L.shape, math.inf, device=L.device)
    top = torch.full(L.shape, -math.inf, device=L.device)   # the running max log-weight
    total = torch.zeros(L.shape, device=L.device)
    pts, pl = points.to(L.device), point_L.to(L.device)
    for i in range(0, len(pts), _CHUNK):
        d2 = _distances2(pts[i:i + _CHUNK], pl[i:i + _CHUNK], L, origin, unit)
        best = torch.minimum(best, d2.min(dim=0).values.sqrt())
        logw = -d2 / (2 * sigma ** 2)
        new_top = torch.maximum(top, logw.max(dim=0).values)
        keep = torch.exp(top - new_top)
        wts = torch.exp(logw - new_top[None])
        total = total * keep + wts.sum(0)
        ab = ab * keep[None] + torch.einsum("phw,pc->chw", wts, pts[i:i + _CHUNK, 3:5])
        top = new_top
    return (ab / total.clamp(min=1e-30)[None] if len(pts) else ab), best


def unit_of(h: int, w: int) -> float:
    """A quarter of the image diagonal, px: the position unit of the nearest-hint distance."""
    return max(math.hypot(h, w) / 4.0, 1.0)


# --- the reference palette ---------------------------------------------------------------------

def _hat(L: torch.Tensor) -> torch.Tensor:
    """Hat-function weights (..., BINS) of L* values (...) on the palette centres."""
    centres = torch.arange(BINS, device=L.device, dtype=torch.float32) * BIN_WIDTH
    return (1 - (L[..., None].float() - centres).abs() / BIN_WIDTH).clamp(min=0)


def palette(lab: torch.Tensor, min_count: int = 8) -> torch.Tensor:
    """The palette of each image of L*a*b* (N, 3, H, W): (N, 2, BINS) the median a*b* of its pixels
    nearest each L* centre (the median: robust to a few bright stars). A centre with fewer than
    ``min_count`` pixels takes the value of the nearest centre that has them; an image with none
    at all gets grey."""
    n = len(lab)
    bins = (lab[:, 0] / BIN_WIDTH).round().long().clamp(0, BINS - 1).flatten(1)   # (N, P)
    ab = lab[:, 1:].flatten(2).float()                                             # (N, 2, P)
    pal = torch.zeros(n, 2, BINS, device=lab.device)
    filled = torch.zeros(n, BINS, dtype=torch.bool, device=lab.device)
    for i in range(n):
        counts = torch.bincount(bins[i], minlength=BINS)
        for k in (counts >= min_count).nonzero().flatten().tolist():
            pal[i, :, k] = ab[i][:, bins[i] == k].median(dim=1).values
            filled[i, k] = True
    idx = torch.arange(BINS, device=lab.device, dtype=torch.float32)
    gap = (idx[:, None] - idx[None]).abs()[None].expand(n, -1, -1).clone()         # (N, k, j)
    gap[~filled[:, None, :].expand_as(gap)] = math.inf
    src = gap.argmin(dim=2)                                                        # the nearest filled bin
    pal = torch.gather(pal, 2, src[:, None].expand(-1, 2, -1))
    return torch.where(filled.any(1)[:, None, None], pal, torch.zeros_like(pal))


def render(pal: torch.Tensor, L: torch.Tensor) -> torch.Tensor:
    """A palette (N, 2, BINS) at each pixel's L* (N, H, W): a*b* (N, 2, H, W), CIE units."""
    return torch.einsum("nck,nhwk->nchw", pal.float(), _hat(L))


# --- assembling the guided input ---------------------------------------------------------------

@dataclass
class Guide:
    """One image's guidance: ``points`` (P, 5) rows (y0, x0, side, a, b) in image px and CIE a*b*,
    ``point_L`` their patches' mean L*; ``palette`` (2, BINS) or None; ``unit`` (image px)."""

    points: torch.Tensor
    point_L: torch.Tensor
    palette: torch.Tensor | None
    unit: float

    @property
    def empty(self) -> bool:
        return len(self.points) == 0 and self.palette is None


def encode(L: torch.Tensor, guide: Guide | None, origin: tuple[int, int] = (0, 0)) -> torch.Tensor:
    """The guided generator's input (CHANNELS, h, w) for one image or a block of it: its L* (h, w),
    the image's ``guide`` (None: no guidance) and the block's top-left image px ``origin``."""
    h, w = L.shape
    x = torch.zeros(CHANNELS, h, w, device=L.device)
    x[0] = color.normalize_l(L)
    x[6] = 1.0
    if guide is None:
        return x
    if len(guide.points):
        x[1:4] = hint_map(guide.points, h, w, origin, L.device)
        ab, dist = propagate(guide.points, guide.point_L, L, origin, guide.unit, SIGMA)
        x[4:6] = ab / color.AB_SCALE
        x[6] = 1 - torch.exp(-dist / DIST_SCALE)
    if guide.palette is not None:
        x[7:9] = render(guide.palette[None].to(L.device), L[None])[0] / color.AB_SCALE
        x[9] = 1.0
    return x


def automatic(x: torch.Tensor) -> torch.Tensor:
    """The guided input (N, CHANNELS, H, W) with no guidance, from the automatic input x = L / 50 - 1
    (N, 1, H, W)."""
    out = torch.zeros(len(x), CHANNELS, *x.shape[-2:], device=x.device, dtype=x.dtype)
    out[:, :1], out[:, 6] = x, 1.0
    return out


def _hint_weight(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(1 where the image has hints, the nearest hint's weight exp(-distance / 0.25): 1 at a hint,
    1/e at 0.25 units), each (N, 1, H, W), from the guided input's distance channel."""
    return (x[:, 6:7] < 1).float(), (1 - x[:, 6:7]).clamp(min=0) ** 8


def guidance(x: torch.Tensor) -> torch.Tensor:
    """How much each pixel's colour is given (N, 1, H, W) in [0, 1]: 1 with a reference, else the
    nearest hint's weight exp(-distance / 0.25); 0 with no guidance."""
    has_hint, near = _hint_weight(x)
    return torch.maximum(x[:, 9:10], has_hint * near)


def reference_gate(x: torch.Tensor) -> torch.Tensor:
    """Where a reference's palette is what a guided model paints (N, 1, H, W) in [0, 1]: 1 with a
    reference and no hint near, falling to 0 at a hint (as :func:`prior` weighs them); 0 with no
    reference."""
    has_hint, near = _hint_weight(x)
    return x[:, 9:10] * (1 - has_hint * near)


def prior(x: torch.Tensor) -> torch.Tensor:
    """The non-learned guided colour (N, 2, H, W), a*b* / 110, that a guided generator corrects:
    near a hint, the nearest hint's colour; far from every hint (or with none), the reference's
    palette where one was given; else grey. With hints and no reference, the nearest hint's colour
    everywhere (docs/design.md's propagation)."""
    has_hint, near = _hint_weight(x)
    has_ref = x[:, 9:10]
    w = has_hint * (has_ref * near + (1 - has_ref))
    return w * x[:, 4:6] + (1 - w) * has_ref * x[:, 7:9]


def simulate(lab: torch.Tensor, ref_lab: torch.Tensor | None, gen: torch.Generator, cfg: GuideConfig
             ) -> torch.Tensor:
    """Training input (N, CHANNELS, H, W) for a batch of true L*a*b* crops: points drawn from the
    truth (:func:`point_count`, :func:`sample_points`), and on a ``cfg.reference`` share of the
    samples the palette of ``ref_lab`` (another crop of the same image; None: no references)."""
    n, _, h, w = lab.shape
    pals = palette(ref_lab) if ref_lab is not None else None
    out = []
    for i in range(n):
        pts = sample_points(lab[i].cpu(), point_count(gen, cfg), gen, where=cfg.where, patch=cfg.patch)
        use_ref = pals is not None and torch.rand(1, generator=gen).item() < cfg.reference
        guide = Guide(pts, point_lightness(pts, lab[i, 0].cpu()), pals[i] if use_ref else None, unit_of(h, w))
        out.append(encode(lab[i, 0], guide))
    return torch.stack(out)


def make_pair(rgb: torch.Tensor, gen: torch.Generator, cfg: GuideConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """(guided input, a*b* / 110 target) of a crop batch: RGB in [0, 1] (N, 3, H, W), or (N, 6, H, W)
    with a reference crop of the same image in channels 3-5 (the Feeder's ``siblings`` mode). With
    3 channels the crop is its own reference (validation). A ``cfg.desaturate`` share of the samples
    has its a*b* scaled down (truth, hints and reference alike): how faint or little-processed
    images look, whose colour a model cannot tell from grey alone."""
    lab = color.rgb_to_lab(rgb[:, :3].float())
    ref = color.rgb_to_lab(rgb[:, 3:6, ::4, ::4].float()) if rgb.shape[1] == 6 else lab[..., ::4, ::4].clone()
    if cfg.desaturate > 0:  # faint, low-colour versions: with nothing to go on, a model learns restraint
        pick = torch.rand(len(lab), generator=gen) < cfg.desaturate
        scale = torch.where(pick, torch.rand(len(lab), generator=gen), torch.ones(len(lab))).to(lab.device)
        lab[:, 1:] *= scale[:, None, None, None]
        ref[:, 1:] *= scale[:, None, None, None]
    return simulate(lab, ref, gen, cfg), color.normalize_ab(lab[:, 1:])


# --- what a user gives: a hints CSV and a reference image ----------------------------------------

_COLOUR = re.compile(r"#?([0-9a-fA-F]{6})")


class HintError(ValueError):
    """A bad hints file or reference; ``lines`` holds one line per problem (file and row named)."""

    def __init__(self, lines: list[str]):
        super().__init__(lines[0] if len(lines) == 1 else f"{len(lines)} problems: " + "; ".join(lines[:3]))
        self.lines = lines


@dataclass(frozen=True)
class Hint:
    """A user's colour point: pixel (x, y) from the top-left, its sRGB colour, a patch radius in px."""

    x: int
    y: int
    rgb: tuple[int, int, int]
    radius: int = 1


def hex_colour(rgb: tuple[int, int, int]) -> str:
    return "#" + "".join(f"{v:02x}" for v in rgb)


def parse_colour(text: str) -> tuple[int, int, int] | None:
    m = _COLOUR.fullmatch(text.strip())
    if not m:
        return None
    v = m.group(1)
    return int(v[0:2], 16), int(v[2:4], 16), int(v[4:6], 16)


def read_hints(path: str | os.PathLike, max_hints: int = 10_000) -> list[Hint]:
    """Read a hints CSV (header ``x,y,color`` and an optional ``radius``; ``#rrggbb`` sRGB colours;
    0-based pixel coordinates from the top-left). Every bad row gives one line naming the file and
    the row; any gives a :class:`HintError` holding them all."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise HintError([f"{path}: cannot read the hints file ({type(e).__name__}); give a CSV with header "
                         "x,y,color"]) from None
    rows = list(csv.reader(text.splitlines()))
    header = [c.strip().lower() for c in rows[0]] if rows else []
    if not {"x", "y", "color"} <= set(header):
        raise HintError([f"{path}: row 1: header {','.join(header) or '(empty)'}; it must name x,y,color "
                         "(and optionally radius)"])
    col = {name: header.index(name) for name in ("x", "y", "color", "radius") if name in header}
    hints, bad = [], []
    for number, row in enumerate(rows[1:], start=2):
        if not any(c.strip() for c in row):
            continue
        where = f"{path}: row {number}"
        try:
            cells = {k: row[i].strip() for k, i in col.items() if i < len(row)}
            x, y = int(cells["x"]), int(cells["y"])
            radius = int(cells.get("radius") or 1)
        except (KeyError, ValueError):
            bad.append(f"{where}: {','.join(row)!r} is not x,y,color with whole-number x, y (and radius)")
            continue
        rgb = parse_colour(cells.get("color", ""))
        if rgb is None:
            bad.append(f"{where}: colour {cells.get('color', '')!r} is not #rrggbb")
        elif x < 0 or y < 0 or not 0 <= radius <= 64:
            bad.append(f"{where}: x={x}, y={y}, radius={radius}: x and y must be >= 0, radius 0-64")
        else:
            hints.append(Hint(x, y, rgb, radius))
    if len(hints) > max_hints:
        bad.append(f"{path}: {len(hints)} hints; at most {max_hints}")
    if bad:
        raise HintError(bad)
    return hints


def hint_points(hints: list[Hint], L: np.ndarray, source: str = "hints") -> Guide:
    """The points of user ``hints`` on an image of L* (H, W): each a square patch of side 2 radius + 1
    clipped to the image, carrying the hint colour's a*b*. A hint outside the image is a
    :class:`HintError` naming it."""
    h, w = L.shape
    outside = [f"{source}: hint {i + 1} at x={t.x}, y={t.y} is outside the {w}x{h} image"
               for i, t in enumerate(hints) if not (0 <= t.x < w and 0 <= t.y < h)]
    if outside:
        raise HintError(outside)
    rows = []
    for t in hints:
        y0, x0 = max(t.y - t.radius, 0), max(t.x - t.radius, 0)
        side = min(2 * t.radius + 1, h - y0, w - x0)
        rgb = torch.tensor(t.rgb, dtype=torch.float32).div(255.0)[:, None, None]
        ab = color.rgb_to_lab(rgb)[1:, 0, 0]
        rows.append([y0, x0, side, float(ab[0]), float(ab[1])])
    points = torch.tensor(rows, dtype=torch.float32).reshape(-1, 5)
    return Guide(points, point_lightness(points, torch.from_numpy(np.asarray(L))), None, unit_of(h, w))


GREY_CHROMA = 2.0  # a reference whose pixels' mean |a*b*| is below this has no colour to follow


def reference_palette(rgb: np.ndarray, source: str = "reference", max_side: int = 512) -> torch.Tensor:
    """The palette (2, BINS) of a colour reference image, RGB (H, W, 3) in [0, 1] (downscaled to at
    most ``max_side`` px first). A grey reference is a :class:`HintError`."""
    if rgb.ndim == 2:
        raise HintError([f"{source}: a grey image has no colours to follow; give a colour reference image"])
    t = torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1))).float()[None]
    step = max(1, math.ceil(max(t.shape[-2:]) / max_side))
    lab = color.rgb_to_lab(t[..., ::step, ::step])
    chroma = lab[:, 1:].abs().mean().item()
    if chroma < GREY_CHROMA:
        raise HintError([f"{source}: nearly grey (mean |a*b*| {chroma:.2f} < {GREY_CHROMA:g}); "
                         "give a colour reference image"])
    return palette(lab)[0]
