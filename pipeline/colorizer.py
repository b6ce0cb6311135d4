"""The colour-space contract between images and colorization generators.

``lab``: input = L normalised to [-1, 1] (1 channel), target/output = a*b / 110 (2 channels).
``rgb``: input = L normalised to [-1, 1] (1 channel), target/output = RGB * 2 - 1 (3 channels).
Both take the same grey input (CIE L), so models in either space see identical inputs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from pipeline import color, hints
from pipeline.errors import AstroganError

GUIDED = ("guided_unet",)  # generators that take pipeline.hints's guided input


def is_guided(entry: dict) -> bool:
    """Whether a zoo entry's generator takes colour hints (``pipeline.hints``)."""
    return entry.get("generator") in GUIDED


def in_channels(entry: dict) -> int:
    """The generator's input channels: L alone, or the guided input."""
    return hints.CHANNELS if is_guided(entry) else 1


def takes_hints(model: torch.nn.Module) -> bool:
    """Whether a loaded generator takes the guided input (``hints.CHANNELS`` channels)."""
    return getattr(model, "in_channels", 1) == hints.CHANNELS


def pair_maker(entry: dict, mono: float = 0.0) -> Callable:
    """The training ``make_pair(rgb, gen)`` of a zoo entry: guided entries simulate hints from the
    truth at every step (``hints.make_pair`` with the entry's ``guide`` keys); ``mono`` > 0 gives
    single-filter grey inputs; else the plain pair of the entry's colour space."""
    if is_guided(entry):
        if mono > 0:
            raise AstroganError(f"params.yaml: pretrain.mono={mono:g} is for the automatic colorizers; "
                                "a guided entry (generator guided_unet) takes no mono inputs: set its "
                                "pretrain.mono to 0")
        cfg = hints.GuideConfig.from_params(entry.get("guide"))
        return lambda rgb, gen: hints.make_pair(rgb, gen, cfg)
    space = entry["color_space"]
    return lambda rgb, gen: make_pair(rgb, space, mono, gen)


def make_pair(rgb: torch.Tensor, color_space: str, mono: float = 0.0, gen: torch.Generator | None = None
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """RGB batch in [0, 1] (N, 3, H, W) -> (network input, network target), float32.

    ``mono`` > 0: that fraction of the samples (drawn from ``gen``, a CPU generator) gets as input
    the L of one of its R, G, B channels alone (drawn too), shown grey: what a single-filter archive
    image looks like, rather than the luminance of the colour picture. The target stays the truth."""
    lab = color.rgb_to_lab(rgb)
    x = color.normalize_l(lab[:, :1])
    if mono > 0:
        n = len(rgb)
        pick = (torch.rand(n, generator=gen) < mono).to(rgb.device)
        chan = torch.randint(3, (n,), generator=gen).to(rgb.device)
        single = rgb.float()[torch.arange(n, device=rgb.device), chan][:, None].expand(-1, 3, -1, -1)
        x = torch.where(pick[:, None, None, None], color.normalize_l(color.rgb_to_lab(single)[:, :1]), x)
    if color_space == "lab":
        return x, color.normalize_ab(lab[:, 1:])
    if color_space == "rgb":
        return x, rgb.float() * 2 - 1
    raise ValueError(f"unknown color_space {color_space!r}")


def to_rgb(x: torch.Tensor, out: torch.Tensor, color_space: str) -> torch.Tensor:
    """(network input, network output) -> RGB in [0, 1]."""
    out = out.float()
    if color_space == "lab":
        lab = torch.cat([color.denormalize_l(x.float()), color.denormalize_ab(out)], dim=1)
        return color.lab_to_rgb(lab)
    if color_space == "rgb":
        return ((out + 1) / 2).clamp(0, 1)
    raise ValueError(f"unknown color_space {color_space!r}")


@torch.no_grad()
def colorize_batch(model: torch.nn.Module, rgb: torch.Tensor, color_space: str, strength: float = 1.0
                   ) -> torch.Tensor:
    """Colorize the grey version of an RGB batch in [0, 1]; returns RGB in [0, 1] on the same device.
    ``strength`` scales the predicted a*b (0: the grey input, 1: the prediction), as
    ``astrogan colorize --strength`` does."""
    x, _ = make_pair(rgb, color_space)
    out = to_rgb(x, model(hints.automatic(x) if takes_hints(model) else x), color_space)
    return out if strength == 1.0 else scale_ab(out, rgb, strength)


def scale_ab(out: torch.Tensor, rgb: torch.Tensor, strength: float) -> torch.Tensor:
    """A colorized batch ``out`` (RGB in [0, 1]) with its a*b scaled by ``strength``, on the L of the
    input batch ``rgb``: what ``colorize_batch(..., strength)`` gives, from its strength-1 output."""
    lab = color.rgb_to_lab(out)
    return color.lab_to_rgb(torch.cat([color.rgb_to_lab(rgb)[:, :1], lab[:, 1:] * strength], dim=1))


def grey_baseline(rgb: torch.Tensor) -> torch.Tensor:
    """The do-nothing colorizer: keep L, set a*b = 0 (the grey input shown as RGB)."""
    lab = color.rgb_to_lab(rgb)
    lab[:, 1:] = 0
    return color.lab_to_rgb(lab)


def colour_objective(entry: dict, images, G: torch.nn.Module, device: torch.device, pixel_weight: float | None
                     ) -> tuple[dict, dict]:
    """The colour terms a zoo entry asks for, as ``Objective`` keyword arguments, and a card record.

    - ``head: {kind: classification, lam, sigma, k, weight}`` (generator ``ab_classifier``): Zhang et
      al.'s rebalanced cross-entropy over a*b bins, the prior measured on ``images`` (the phase's
      training images, uint8); the L1 term's weight becomes ``pixel_weight`` (default 0).
    - ``colourfulness_weight``: weight of ``abclass.colourfulness_loss`` between prediction and truth.
    - ``adversarial_weight``: the GAN term's weight (default 1).
    ``pixel_weight``: the phase's default L1 weight (None: train.l1_weight in the GAN phase)."""
    from pipeline import abclass

    extras, record = [], {}
    head = entry.get("head") or {}
    if head:
        if head.get("kind") != "classification" or entry.get("generator") != "ab_classifier":
            raise AstroganError(f"colorize.zoo entry head {head!r}: only kind: classification, with "
                                "generator ab_classifier")
        centres = G.centres.to(device)
        prior = abclass.empirical_prior(_ab_samples(images), G.centres, float(head.get("sigma", 5.0)))
        weights = abclass.rebalance_weights(prior, float(head.get("lam", 0.5))).float().to(device)
        w, k, sigma = float(head.get("weight", 1.0)), int(head.get("k", 5)), float(head.get("sigma", 5.0))
        extras.append(("loss_g_class", lambda fake, y, x: w * abclass.class_loss(
            G.last_logits, _at(color.denormalize_ab(y), G.last_logits), centres, weights, k=k, sigma=sigma)))
        pixel_weight = float(entry.get("pixel_weight", 0.0))
        top = prior.topk(3)
        record["classification"] = {"bins": len(centres), "lam": head.get("lam", 0.5), "weight": w,
                                    "T": G.T, "prior_top_bins": G.centres[top.indices].tolist(),
                                    "prior_top_mass": [round(float(v), 4) for v in top.values],
                                    "max_weight": round(float(weights.max()), 3)}
    cw = float(entry.get("colourfulness_weight", 0.0))
    if cw > 0:
        extras.append(("loss_g_colourfulness", lambda fake, y, x: cw * abclass.colourfulness_loss(
            to_rgb(x, fake, "lab"), to_rgb(x, y, "lab"))))
        record["colourfulness_weight"] = cw
    kwargs = {"extras": tuple(extras), "adversarial_weight": float(entry.get("adversarial_weight", 1.0)),
              "pixel_weight": pixel_weight}
    return kwargs, record


def _at(ab: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """The true a*b at the logits' resolution: area-averaged when a ``factor`` > 1 classifier
    predicts at a fraction of the input's size (Zhang et al. downsample the ground truth so)."""
    size = tuple(logits.shape[-2:])
    return ab if tuple(ab.shape[-2:]) == size else torch.nn.functional.adaptive_avg_pool2d(ab, size)


def _ab_samples(images, limit: int = 400, stride: int = 4):
    """a*b (1, 2, h, w) of up to ``limit`` images (uint8 (3, H, W)), every ``stride``-th pixel."""
    step = max(1, len(images) // limit)
    for i in range(0, len(images), step):
        img = images[i][:, ::stride, ::stride].float().div(255.0)
        yield color.rgb_to_lab(img[None])[:, 1:]


def spread(tiles, n: int):
    """At most ``n`` of ``tiles``, evenly spread over them (so over the val images, in split order)."""
    if len(tiles) <= n:
        return tiles
    return tiles[torch.linspace(0, len(tiles) - 1, n).long()]


def spread_val(val: torch.Tensor, rows: Sequence[dict], n: int) -> tuple[torch.Tensor, list[str]]:
    """At most ``n`` val tiles, evenly spread (:func:`spread`), with their image ids from their split
    rows: what :func:`choose_strength` takes, for the evaluate stage and the release alike."""
    pick = spread(torch.arange(len(val)), n)
    return (val[pick] if len(val) else val), [rows[int(i)]["image_id"] for i in pick]


@torch.no_grad()
def choose_strength(fn: Callable, val: torch.Tensor, strengths: tuple[float, ...], batch: int,
                    device: torch.device, faint: float = 0.0, images: Sequence[str] | None = None,
                    confidence: float = 0.0, seed: int = 0) -> tuple[float, dict[str, float]]:
    """The a*b scale of ``strengths`` with the lowest a*b L1 on the val tiles (uint8), and each one's
    val a*b L1. The prediction is made once; scaling its a*b is exact in L*a*b* (the final RGB
    conversion may clip a few out-of-gamut colours, which the test scores include).

    ``faint`` > 0: do no harm on low-colour images. Only strengths whose a*b L1 against the truth's
    a*b scaled by ``faint`` is at most grey's there are eligible (0 always is): a model unsure of
    colour then leaves it out, where a faint image has little. A grey image cannot tell how much
    colour its truth had, so the same strength must serve both.

    ``confidence`` > 0 (with ``images``, each val tile's image id): that check must hold with this
    confidence, not just on average: the ``confidence`` quantile of the ratio (strength's L1 / grey's
    on the faint truth) over 1,000 bootstrap resamples of the val *images* (``seed``) must be at
    most 1. Images differ in how predictable their colour is, and a handful of val images can pass
    the mean by luck: the guided release's val-chosen 0.5 passed on val's 40 images (0.97x) and
    failed on its 34 test images (1.06x); at confidence 0.95 val chooses 0.3 (test: 0.99x)."""
    if confidence > 0 and (images is None or len(images) != len(val)):
        raise ValueError("choose_strength: confidence needs one image id per val tile")
    err = torch.zeros(len(strengths), dtype=torch.float64)
    ids = sorted(set(images)) if confidence > 0 else ["all"]
    index = {image: k for k, image in enumerate(ids)}
    of = [index[i] for i in images] if confidence > 0 else [0] * len(val)
    weak = torch.zeros(len(ids), len(strengths), dtype=torch.float64)   # per image
    grey_weak = torch.zeros(len(ids), dtype=torch.float64)
    n = 0
    for i in range(0, len(val), batch):
        rgb = val[i:i + batch].to(device).float().div_(255.0)
        ab_true, ab_pred = color.rgb_to_lab(rgb)[:, 1:], color.rgb_to_lab(fn(rgb))[:, 1:]
        for j, s in enumerate(strengths):
            err[j] += (ab_pred * s - ab_true).abs().double().sum().cpu()
        if faint > 0:
            for k in range(len(rgb)):
                t, p = ab_true[k] * faint, ab_pred[k]
                weak[of[i + k]] += torch.stack([(p * s - t).abs().double().sum() for s in strengths]).cpu()
                grey_weak[of[i + k]] += float(t.abs().double().sum())
        n += ab_true.numel()
    per = {f"{s:g}": float(e / n) for s, e in zip(strengths, err, strict=True)}
    ratio = weak.sum(0) / grey_weak.sum().clamp(min=1e-12)                       # (strengths,)
    if faint > 0 and confidence > 0:
        picks = torch.from_numpy(np.random.default_rng(seed).integers(0, len(ids), (1000, len(ids))))
        boot = weak[picks].sum(1) / grey_weak[picks].sum(1).clamp(min=1e-12)[:, None]   # (1000, strengths)
        ratio = torch.quantile(boot, confidence, dim=0)
    allowed = torch.tensor([faint <= 0 or s == 0 or float(ratio[j]) <= 1.0 for j, s in enumerate(strengths)])
    return strengths[int(torch.where(allowed, err, torch.full_like(err, float("inf"))).argmin())], per
