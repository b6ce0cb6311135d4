"""``metrics/report.md`` (the paper's Tables 1-5 from the metrics dict) and the Fig. 7-style image grid.

Pure functions of (metrics, params) -> markdown, with no timestamps: the report is byte-identical
when nothing changed. Every table puts our numbers beside the paper's published ones, labelled
"paper (their data, undefined scale)", and has the grey baseline (L kept, a*b = 0) as a row.
``render_report`` joins sections, so the super-resolution tables (6-7) append as one more string.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
from PIL import Image, ImageDraw, ImageFont

from pipeline.fsio import write_bytes_atomic
from pipeline.paths import PHASES

GRID_CELL = 128  # px per tile in the figure: 256 px tiles are halved to keep the PNG ~1 MB
# The keys of colorization.json / superres.json that are not models (the others: {phase: metrics}).
TOP_LEVEL = ("test_tiles", "test_images", "grey_tiles_skipped", "fid_reason", "colourfulness_truth",
             "grey", "bounds", "guided")
SR_TOP_LEVEL = ("test_tiles", "test_images", "scale", "border", "fid_reason")
SR_BASELINES = ("bicubic", "nearest")
NOT_MODELS = {"colorize": TOP_LEVEL, "superres": (*SR_TOP_LEVEL, *SR_BASELINES)}
PAPER = "paper (their data, undefined scale)"


@dataclass(frozen=True)
class PaperRow:
    """One model of the paper (Tables 1-5), matched to ours by (family, colour space, stage)."""

    label: str
    family: str            # "resnet18" (U-Net on ResNet-18) or "unet" (their basic U-Net)
    space: str
    stage: str | None      # None: matches any stage
    values: dict[str, float] = field(default_factory=dict)


PAPER_ROWS = (  # keys are our metric keys: the paper's Tables 1-5 under the names of our columns
    PaperRow("ResNet-18 (Pre-trained), L\\*a\\*b\\*", "resnet18", "lab", "pretrained", {
        "rgb_l1": 64.5409, "rgb_l2": 2.77, "lab_l1_a": 0.00588, "lab_l1_b": 0.00501,
        "lab_l2_a": 0.01565, "lab_l2_b": 0.03208, "rgb_l1_r": 69.2401, "rgb_l1_g": 36.5852,
        "rgb_l1_b": 87.7973, "rgb_l2_r": 3.2890, "rgb_l2_g": 1.0439, "rgb_l2_b": 3.9785, "fid": 66.3568}),
    PaperRow("ResNet-18 (Fine-tuned), L\\*a\\*b\\*", "resnet18", "lab", "finetuned", {
        "rgb_l1": 65.1119, "rgb_l2": 2.62, "lab_l1_a": 0.00257, "lab_l1_b": 0.00727,
        "lab_l2_a": 0.01721, "lab_l2_b": 0.03316, "rgb_l1_r": 64.6078, "rgb_l1_g": 38.5994,
        "rgb_l1_b": 92.1283, "rgb_l2_r": 3.4531, "rgb_l2_g": 1.0253, "rgb_l2_b": 3.8046, "fid": 42.1593}),
    PaperRow("ResNet-18 (Pre-trained), RGB", "resnet18", "rgb", "pretrained",
             {"rgb_l1": 125.5554, "rgb_l2": 9.04}),
    PaperRow("Vanilla/Basic U-Net, RGB", "unet", "rgb", "finetuned",  # GAN-trained with its VGG16 D
             {"rgb_l1": 77.3273, "rgb_l2": 3.986, "fid": 152.7216}),
)

DEFINITIONS = """\
Definitions (all on the same test tiles; "mean" is over all pixels of all test tiles):
- RGB L1 / L2: mean absolute / squared difference of prediction and truth on the 0-255 scale
  (predictions not rounded); the overall value is the mean of the R, G and B channel values.
- Lab L1 / L2: the same in CIE L\\*a\\*b\\* units (D65; L in [0, 100], a\\*b\\* about [-110, 110]);
  a\\*b\\* L1 / L2 is the mean over the a\\* and b\\* channels.
- PSNR: 10 log10(255^2 / MSE), MSE over all channels and pixels of a tile, then averaged over tiles
  (scikit-image convention, no border crop). SSIM: Wang et al. 2004 with a Gaussian window
  (sigma 1.5, 11 taps), population covariances, data range 255, per channel, then averaged over
  channels and tiles (scikit-image `gaussian_weights=True, use_sample_covariance=False`).
- Colourfulness: Hasler & Suesstrunk (2003) on the 0-255 scale, averaged over tiles (grey = 0).
- FID: Frechet distance between InceptionV3 (pytorch-fid weights) features of the predictions and
  of the true tiles, images resized bilinearly to 299 px. Inception features are learnt on
  ImageNet photos and untested on astronomical images.
- Grey baseline: the input itself (L kept, a\\*b\\* = 0), i.e. a colorizer that does nothing.
- Paper columns: the values published in the paper, on their data with an undefined scale;
  they are not comparable to ours, only shown beside them."""


def model_entries(metrics: dict, task: str) -> dict[str, dict]:
    """The models of ``task``'s metrics dict, {name: {phase or other key: ...}}, in its order."""
    return {name: m for name, m in metrics.items() if name not in NOT_MODELS[task] and isinstance(m, dict)}


def _fmt(x: float | None) -> str:
    if x is None:
        return "n/a"
    if abs(x) >= 100:
        return f"{x:.1f}"
    return f"{x:.3f}" if abs(x) >= 1 else f"{x:.4f}"


def _paper(row: PaperRow | None, key: str) -> str:
    return repr(row.values[key]) if row is not None and key in row.values else "—"  # as published


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


@dataclass(frozen=True)
class Row:
    """One evaluated predictor: the grey baseline or a model at one training stage."""

    label: str
    space: str
    metrics: dict
    paper: PaperRow | None


def _family(generator: str) -> str:
    if generator == "guided_unet":  # no paper row: the paper has no guided colour
        return "guided"
    return "resnet18" if "resnet18" in generator else "unet" if "unet" in generator else generator


def _rows(metrics: dict, params: dict) -> tuple[Row, list[Row], list[PaperRow]]:
    """The grey row, our model rows (metrics order, pretrained first), and paper rows left unmatched."""
    zoo = params.get("colorize", {}).get("zoo", {})
    grey = Row("grey baseline (a\\*b\\* = 0)", "—", metrics["grey"], None)
    rows, used = [], set()
    for name, stages in model_entries(metrics, "colorize").items():
        spec = zoo.get(name, {})
        space, family = spec.get("color_space", "?"), _family(spec.get("generator", "?"))
        for stage in (s for s in PHASES if s in stages):
            paper = next((p for p in PAPER_ROWS if (p.family, p.space) == (family, space)
                          and p.stage in (None, stage) and p.label not in used), None)
            if paper is not None:
                used.add(paper.label)
            rows.append(Row(f"{name} ({stage})", space, stages[stage], paper))
    return grey, rows, [p for p in PAPER_ROWS if p.label not in used]


def _section(title: str, headers: Sequence[str], ours: Sequence[str], theirs: Sequence[str],
             rows: Sequence[Row], unmatched: Sequence[PaperRow], note: str = "") -> str:
    """A table: label, colour space, our ``ours`` metric keys, then the paper's ``theirs`` keys."""
    body = [[r.label, r.space, *(_fmt(r.metrics.get(k)) for k in ours), *(_paper(r.paper, k) for k in theirs)]
            for r in rows]
    body += [[f"paper only: {p.label}", p.space, *("—" for _ in ours), *(_paper(p, k) for k in theirs)]
             for p in unmatched if any(k in p.values for k in theirs)]
    return f"### {title}\n\n{note}{_table(headers, body)}\n"


WHY_WORSE = """
Why a model can lose to doing nothing: most of the sky is neutral (the grey baseline is already
close on most pixels), and a regression loss (L1) on a\\*b\\* pulls uncertain pixels toward a
brownish mean colour instead of leaving them grey; the paper saw the same "grayish tinge". The
default run also trains for about a minute per phase on a CPU, from random init when the ImageNet
encoder weights are unavailable offline (see the model card). The same architecture trained for
minutes on a GPU is still 1.3-1.5x worse than grey on held-out Hubble images (docs/design.md, "Quality
reference"). The zoo's other colour options (classification over quantized a\\*b\\* with
rebalancing, Zhang et al. 2016; colour at 1/4 resolution; pretraining on astronomical tiles) and
what they reach on 381 ESA/Hubble images are in docs/colour_study.md. The bounds below show how
much of the colour the grey test tiles can tell at all."""

BOUNDS = {
    "grey": "grey (a\\*b\\* = 0)",
    "lookup": "`lookup`: the train split's median a\\*b\\* per L\\* bin, no context",
    "retrieval": "`retrieval`: the same table from the {k} train tiles whose grey looks most alike",
    "oracle_image_constant": "oracle: each test image's true median a\\*b\\*",
    "oracle_image_lookup": "oracle: each test image's true median a\\*b\\* per L\\* bin (its palette)",
    "oracle_palette_choice": "oracle: per test image, the best of {palettes} train palette types",
    "oracle_tile_constant": "oracle: each tile's true median a\\*b\\*",
    "oracle_tile_lookup": "oracle: each tile's true median a\\*b\\* per L\\* bin",
}


def _bounds(b: dict | None) -> str:
    """How far colour can come from grey on these test tiles (``pipeline.colour_bounds``)."""
    if not b:
        return ""
    rows = [[BOUNDS.get(name, name).format(k=b.get("retrieval_k"), palettes=b.get("palettes")), _fmt(v),
             f"{b['ratio_to_grey'][name]:.3f}"] for name, v in b["ab_l1"].items()]
    lookup = b["ratio_to_grey"].get("lookup", 0)
    verdict = ("Here even the train split's own luminance-to-colour table is worse than grey: the train "
               "images do not cover the test images' colours, which leaves a colorizer trained on them "
               "little to go on." if lookup > 1 else
               "A colorizer near `lookup` has learnt the train split's luminance-to-colour trend and "
               "little more.")
    return ("### How far colour can come from grey on these tiles\n\n"
            f"`python -m pipeline.colour_bounds` on one pixel of each {b['stride']}x{b['stride']} block "
            f"of the {b['tiles']} test tiles ({b['images']} images), in L\\*a\\*b\\* directly (so its "
            "grey differs slightly from the tables'). An oracle knows the true colour of a group of "
            "pixels and paints its median, the best any predictor of that form can do. " + verdict
            + " Beating the oracle of each test image's median would take knowing more than each "
            "test image's overall colour.\n\n"
            + _table(["Predictor", "a\\*b\\* L1", "/ grey"], rows) + "\n")


def _guided(g: dict | None) -> str:
    """Guided colour (colour points, a reference) against the non-learned baselines."""
    if not g:
        return ""
    parts = ["### Guided colour: colour points and a reference image\n\n"
             "Each test tile gets n points revealed from its truth (fixed seed; uniform; square patches "
             f"of {next(iter(g.values()))['patch']} px carrying their mean a\\*b\\*), as in Zhang, Zhu "
             "et al. "
             "2017. `nearest` paints each pixel with the nearest point in (L\\*/10, x, y), positions in "
             "quarters of the tile diagonal; grey with no point. With a reference, another tile of the "
             "same image gives its palette; `palette` paints the reference's median a\\*b\\* per L\\* bin. "
             "a\\*b\\* L1 in CIE units on the tiles' a\\*b\\* directly (so grey differs slightly from the "
             "tables'), and / grey; PSNR on RGB. `python -m pipeline.guided_eval` documents the protocol; "
             "`dvc plots show` draws a\\*b\\* L1 against n (`metrics/plots/guided.csv`).\n\n"]
    for key, r in g.items():
        if "model" not in next(iter(r["points"].values())):  # no guided model in the run
            rows = [[n, "—", "—", _fmt(m["nearest"]), f"{m['nearest_vs_grey']:.3f}", "—",
                     _fmt(m["nearest_psnr"])] for n, m in r["points"].items()]
            parts.append("No guided model in this run (`colorize.pretrain`/`finetune`): the baselines "
                         "alone.\n\n"
                         + _table(["Points", "model a\\*b\\* L1", "/ grey", "nearest", "/ grey", "model PSNR",
                                   "baseline PSNR"], rows) + "\n")
            continue
        rows = [[n, _fmt(m["model"]), f"{m['model_vs_grey']:.3f}", _fmt(m["nearest"]),
                 f"{m['nearest_vs_grey']:.3f}", _fmt(m["model_psnr"]), _fmt(m["nearest_psnr"])]
                for n, m in r["points"].items()]
        ref = r.get("reference")
        if ref:
            rows.append([f"reference ({ref['tiles']} tiles)", _fmt(ref["model"]),
                         f"{ref['model_vs_grey']:.3f}", _fmt(ref["palette"]) + " (palette)",
                         f"{ref['palette_vs_grey']:.3f}",
                         _fmt(ref["model_psnr"]), _fmt(ref["palette_psnr"])])
        low = r.get("low_colour")
        note = (f"\nNo hints on the same tiles with the truth's a\\*b\\* scaled to a fifth: a\\*b\\* L1 "
                f"{_fmt(low['model'])} against grey's {_fmt(low['grey'])} ({low['model_vs_grey']:.3f}x): "
                + ("a model unsure of colour leaves it out." if low["model_vs_grey"] <= 1 else
                   "worse than grey: this model adds colour that faint images lack.") + "\n") if low else ""
        parts.append(f"**{key}** ({r['tiles']} tiles; with 0 points, the no-hint path at its val-chosen "
                     f"strength {r.get('auto_strength', 1.0):g}, as `astrogan colorize` runs it)\n\n"
                     + _table(["Points", "model a\\*b\\* L1", "/ grey", "nearest / palette", "/ grey",
                               "model PSNR", "baseline PSNR"], rows) + "\n" + note + "\n")
    return "".join(parts)


def _verdicts(grey: Row, rows: Sequence[Row]) -> str:
    g = grey.metrics["ab_l1"]
    lines = []
    for r in rows:
        m = r.metrics["ab_l1"]
        if g <= 0:
            lines.append(f"- **{r.label}**: a\\*b\\* L1 = {_fmt(m)}; the grey baseline scores 0, "
                         "so no ratio is defined.")
            continue
        ratio = round(m / g, 3)  # the verdict follows the ratio as printed, so they never disagree
        verdict = ("beats the grey baseline" if ratio < 1 else
                   "is worse than the grey baseline (doing nothing)" if ratio > 1 else
                   "ties with the grey baseline")
        lines.append(f"- **{r.label}** {verdict} on a\\*b\\* L1: {_fmt(m)} vs {_fmt(g)} "
                     f"(ratio model/grey = {ratio:.3f}).")
    if any(round(r.metrics["ab_l1"] / g, 3) > 1 for r in rows if g > 0):
        lines.append(WHY_WORSE)
    return "\n".join(lines) if lines else "- No models were evaluated."


def _ranking(metrics: dict) -> str:
    """Every model and phase, also at the a*b strength chosen on val, ranked by a*b L1 against grey,
    with colourfulness against the truth's (Hasler & Suesstrunk)."""
    g, truth = metrics["grey"]["ab_l1"], metrics["colourfulness_truth"]
    body = []
    for name, stages in model_entries(metrics, "colorize").items():
        for stage, m in stages.items():
            body.append((m["ab_l1"], [f"{name} ({stage})", _fmt(m.get("strength", 1.0)), _fmt(m["ab_l1"]),
                                      f"{m['ab_l1'] / g:.3f}" if g > 0 else "—", _fmt(m["colourfulness"]),
                                      f"{m['colourfulness'] / truth:.3f}" if truth > 0 else "—"]))
    rows = [["grey baseline (a\\*b\\* = 0)", "0", _fmt(g), "1.000", _fmt(metrics["grey"]["colourfulness"]),
             "—"], *(r for _, r in sorted(body, key=lambda t: t[0]))]
    return ("### Every option against grey, with the a\\*b\\* strength chosen on val\n\n"
            "`<stage>_val_strength` rows scale the predicted a\\*b\\* by the strength with the lowest "
            "a\\*b\\* L1 on the val tiles (`evaluate.strengths`; 0 is the grey input itself), the default "
            "of `astrogan colorize --strength`. Ratios below 1 beat grey; a colourfulness ratio near 1 "
            "matches the truth's.\n\n"
            + _table(["Model (phase)", "Strength", "a\\*b\\* L1", "/ grey", "Colourfulness", "/ truth"], rows)
            + "\n")


def _table2(grey: Row, rows: Sequence[Row]) -> str:
    """Paper Table 2's shape: distance x (R, G, B) for the fine-tuned models, grey and paper beside."""
    ft = [r for r in rows if r.label.endswith("(finetuned)")]
    paper_ft = next(p for p in PAPER_ROWS if p.stage == "finetuned")
    body = []
    for dist in ("l1", "l2"):
        keys = [f"rgb_{dist}_{c}" for c in "rgb"]
        body += [[dist.upper(), r.label, *(_fmt(r.metrics[k]) for k in keys)] for r in (grey, *ft)]
        body.append([dist.upper(), f"{paper_ft.label}: {PAPER}", *(_paper(paper_ft, k) for k in keys)])
    note = "" if ft else "No fine-tuned model is listed in `colorize.finetune`.\n\n"
    return (f"### Table 2: RGB channel averages of the fine-tuned model(s)\n\n{note}"
            f"{_table(['Distance', 'Predictor', 'Red', 'Green', 'Blue'], body)}\n")


def render_colorization_report(metrics: dict, params: dict) -> str:
    """The colorization section of report.md (paper Tables 1-5) from ``colorization.json``'s dict.

    ``params`` supplies each model's generator and colour space (``colorize.zoo``), which match our
    rows to the paper's. Returns markdown starting with "## Colorization", ending in a newline.
    """
    grey, rows, unmatched = _rows(metrics, params)
    allr = [grey, *rows]
    rgb_ch = [f"rgb_{d}_{c}" for d in ("l1", "l2") for c in "rgb"]
    lab_ab = ["lab_l1_a", "lab_l1_b", "lab_l2_a", "lab_l2_b"]
    fid_note = (f"FID not computed: {metrics['fid_reason']}\n\n" if metrics.get("fid_reason") else "")
    colour_truth = Row("truth (the test tiles)", "—", {"colourfulness": metrics["colourfulness_truth"]}, None)
    parts = [
        "## Colorization\n",
        f"Test set: {metrics['test_tiles']} tiles from {metrics['test_images']} images "
        f"({metrics['grey_tiles_skipped']} grey tiles skipped: they have no colour to predict).\n",
        DEFINITIONS + "\n",
        "### Does any model beat doing nothing? (a\\*b\\* L1, model / grey baseline)\n\n"
        + _verdicts(grey, rows) + "\n",
        _ranking(metrics),
        _bounds(metrics.get("bounds")),
        _guided(metrics.get("guided")),
        _section("Table 1: L1 and L2 distance to the truth in RGB (0-255 scale)",
                 ["Model", "Colour space", "L1", "L2", "PSNR (dB)", "SSIM",
                  f"L1, {PAPER}", f"L2, {PAPER}"],
                 ["rgb_l1", "rgb_l2", "psnr", "ssim"], ["rgb_l1", "rgb_l2"], allr, unmatched),
        _table2(grey, rows),
        _section("Table 3: a\\* and b\\* channel distances in L\\*a\\*b\\* (CIE units)",
                 ["Model", "Colour space", "L1 a", "L1 b", "L2 a", "L2 b", "a\\*b\\* L1", "a\\*b\\* L2",
                  *(f"{c}, {PAPER}" for c in ("L1 a", "L1 b", "L2 a", "L2 b"))],
                 [*lab_ab, "ab_l1", "ab_l2"], lab_ab, allr, unmatched),
        _section("Table 4: RGB per-channel distances (0-255 scale), pre-trained and fine-tuned",
                 ["Model", "Colour space", "L1 R", "L1 G", "L1 B", "L2 R", "L2 G", "L2 B",
                  *(f"{c}, {PAPER}" for c in ("L1 R", "L1 G", "L1 B", "L2 R", "L2 G", "L2 B"))],
                 rgb_ch, rgb_ch, allr, unmatched),
        _section("Table 5: Frechet Inception Distance to the true tiles, and colourfulness",
                 ["Model", "Colour space", "FID", "Colourfulness", f"FID, {PAPER}"],
                 ["fid", "colourfulness"], ["fid"], [*allr, colour_truth], unmatched, fid_note),
    ]
    return "\n".join(parts)


def render_report(colorization: dict, params: dict, sections: Sequence[str] = ()) -> str:
    """The whole report.md: a title, the colorization section, then ``sections`` in order.

    A later super-resolution evaluation renders its own section (paper Tables 6-7, a markdown
    string starting with "## Super-resolution") and passes it in ``sections``.
    """
    head = ("# astrogan evaluation report\n\n"
            "Generated by `python -m pipeline.stages.report` from `metrics/*.json`; "
            "our numbers are on our data and state their definitions.\n")
    return "\n".join([head, render_colorization_report(colorization, params), *sections])


def _fit(draw: ImageDraw.ImageDraw, text: str, font, width: int) -> str:
    """Cut each line of ``text`` until it fits ``width`` px (ellipsis marks a cut)."""
    lines = []
    for line in text.split("\n"):
        cut = line
        while cut and draw.textlength(cut if cut == line else cut + "…", font=font) > width:
            cut = cut[:-1]
        lines.append(line if cut == line else cut + "…")
    return "\n".join(lines)


def image_grid(columns: Sequence[tuple[str, torch.Tensor]], cell: int = GRID_CELL) -> Image.Image:
    """One column per (title, RGB batch (G, 3, H, W) in [0, 1]), one row per sample, as paper Fig. 7.

    Tiles are resized to ``cell`` px (Lanczos down, nearest up); titles (up to two lines) are drawn
    above each column in PIL's default font. Deterministic: same tensors, same pixels.
    """
    rows = min(len(t) for _, t in columns)
    font = ImageFont.load_default()
    title_h, gap = 30, 2
    width = len(columns) * (cell + gap) + gap
    grid = Image.new("RGB", (width, title_h + rows * (cell + gap) + gap), "white")
    draw = ImageDraw.Draw(grid)
    for c, (title, batch) in enumerate(columns):
        x = gap + c * (cell + gap)
        draw.multiline_text((x + 2, 3), _fit(draw, title, font, cell - 4), fill="black", font=font)
        u8 = (batch[:rows].detach().float().cpu().clamp(0, 1) * 255.0).round().to(torch.uint8)
        for r, img in enumerate(u8.permute(0, 2, 3, 1).numpy()):
            tile = Image.fromarray(img, "RGB")
            if tile.size != (cell, cell):
                how = Image.Resampling.LANCZOS if tile.width > cell else Image.Resampling.NEAREST
                tile = tile.resize((cell, cell), how)
            grid.paste(tile, (x, title_h + gap + r * (cell + gap)))
    return grid


def save_grid(path: str | os.PathLike, columns: Sequence[tuple[str, torch.Tensor]],
              cell: int = GRID_CELL) -> int:
    """Write ``image_grid(columns, cell)`` as PNG atomically; returns its size in bytes."""
    buf = io.BytesIO()
    image_grid(columns, cell).save(buf, format="PNG", optimize=True)
    write_bytes_atomic(path, buf.getvalue())
    return len(buf.getvalue())


# --- super-resolution (paper section 4.2: Tables 6-7, Fig. 10) ----------------------------------

# The paper's Tables 6-7 by (our generator family, our stage). Their "pre-trained SRGAN" is a
# published SRGAN checkpoint, not an L1-pretrained SRResNet: the match is by role, not by recipe.
SR_PAPER = {
    ("srresnet", "finetuned"): ("Ledig SRGAN (Fine-tuned)", {"rgb_l1": 87.1090, "rgb_l2": 3.754,
                                                             "fid": 75.5873}),
    ("srresnet", "pretrained"): ("Ledig SRGAN (Pre-trained)", {"rgb_l1": 114.8043, "rgb_l2": 5.953,
                                                               "fid": 89.8443}),
    ("edsr", "finetuned"): ("ED-SRGAN", {"rgb_l1": 80.9414, "rgb_l2": 3.684, "fid": 159.5770}),
    ("wdsr", "finetuned"): ("WD-SRGAN", {"rgb_l1": 79.7262, "rgb_l2": 3.627, "fid": 127.2920}),
}

SR_DEFINITIONS = """\
Definitions (all on the same test tiles, every tile including grey ones; HR = the {tile} px tile):
- Input: the HR tile downscaled 1/{scale} by antialiased bicubic (`F.interpolate(..., mode="bicubic",
  antialias=True)`){degradation}, rounded to 8 bits. Predictions are rounded to 8 bits too.
- Border: {border} px are cropped from every side before every number below except FID (the SR
  convention: crop = scale).
- RGB L1 / L2: mean absolute / squared difference of prediction and truth on the 0-255 scale, per
  channel over all pixels of all tiles; the overall value is the mean of R, G and B.
- PSNR (dB): 10 log10(255^2 / MSE) per tile (MSE over its pixels; over R, G, B for RGB), averaged over
  tiles. Y: ITU-R BT.601 luma on the 16-235 scale (MATLAB `rgb2ycbcr`, as SR papers report), data range 255.
- SSIM: Wang et al. 2004, Gaussian window (sigma 1.5), population covariances, data range 255 (scikit-image
  `gaussian_weights=True, use_sample_covariance=False`), per channel then averaged, per tile then averaged.
- FID: Frechet distance between InceptionV3 (pytorch-fid weights) features of the full predicted and
  true tiles, resized bilinearly to 299 px; Inception features are untested on astronomical images.
- Baselines: bicubic (torch, a = -0.75) and nearest-neighbour upscaling of the same input.
- Paper columns: the values published in the paper, on their data with an undefined scale (their
  L1 of ~80-115 cannot be a per-pixel 0-255 mean of a good SR result); not comparable, shown beside ours.
  Their "pre-trained SRGAN" is a published SRGAN checkpoint; ours is our L1/MSE-pretrained SRResNet."""


def _sr_rows(metrics: dict, params: dict) -> list[tuple[str, dict, tuple[str, dict] | None]]:
    """(label, metrics, paper row or None): baselines first, then each model pretrained, finetuned."""
    zoo = params.get("superres", {}).get("zoo", {})
    rows = [(f"{b} (baseline)", metrics[b], None) for b in SR_BASELINES if b in metrics]
    for name, stages in model_entries(metrics, "superres").items():
        family = zoo.get(name, {}).get("generator", name)
        rows += [(f"{name} ({stage})", stages[stage], SR_PAPER.get((family, stage)))
                 for stage in PHASES if stage in stages]
    return rows


def _sr_verdicts(metrics: dict, rows) -> str:
    base = metrics["bicubic"]["psnr_y"]
    lines = []
    for label, m, _ in rows:
        if label.endswith("(baseline)"):
            continue
        gain = round(m["psnr_y"] - base, 2)  # the verdict follows the gain as printed
        verdict = ("beats bicubic" if gain > 0 else
                   "does not beat bicubic" if gain < 0 else "ties with bicubic")
        lines.append(f"- **{label}** {verdict} in PSNR (Y): {m['psnr_y']:.2f} dB vs {base:.2f} dB "
                     f"({gain:+.2f} dB; RGB {m['psnr_rgb'] - metrics['bicubic']['psnr_rgb']:+.2f} dB).")
    return "\n".join(lines) or "- No SR models were evaluated."


def render_superres_report(metrics: dict, params: dict) -> str:
    """The super-resolution section (paper Tables 6-7, Fig. 10) from ``superres.json``'s dict.

    ``params`` supplies ``superres.zoo`` (which model is which paper row), ``superres.degradation`` and
    ``tile.size`` for the definitions. Returns markdown starting with "## Super-resolution"."""
    rows = _sr_rows(metrics, params)
    deg = params.get("superres", {}).get("degradation", {})
    extra = []
    if deg.get("blur_sigma"):
        extra.append(f"Gaussian blur sigma {deg['blur_sigma']} HR px before")
    if deg.get("noise_sigma"):
        extra.append(f"Gaussian noise sigma {deg['noise_sigma']} (8-bit levels) after")
    defs = SR_DEFINITIONS.format(tile=params.get("tile", {}).get("size", "?"), scale=metrics["scale"],
                                 border=metrics["border"],
                                 degradation=(", " + "; ".join(extra)) if extra else ", no blur, no noise")
    paper = lambda p, k: repr(p[1][k]) if p is not None and k in p[1] else "—"  # noqa: E731
    t6 = [[label, *(_fmt(m[k]) for k in ("rgb_l1", "rgb_l2", "psnr_y", "ssim_y", "psnr_rgb", "ssim_rgb")),
           p[0] if p else "—", paper(p, "rgb_l1"), paper(p, "rgb_l2")] for label, m, p in rows]
    ch = [f"rgb_{d}_{c}" for d in ("l1", "l2") for c in "rgb"]
    t6b = [[label, *(_fmt(m[k]) for k in ch)] for label, m, _ in rows]
    t7 = [[label, _fmt(m.get("fid")), p[0] if p else "—", paper(p, "fid")] for label, m, p in rows]
    fid_note = f"FID not computed: {metrics['fid_reason']}\n\n" if metrics.get("fid_reason") else ""
    return "\n".join([
        "## Super-resolution (4x)\n",
        f"Test set: {metrics['test_tiles']} tiles from {metrics['test_images']} images, "
        f"x{metrics['scale']}.\n",
        defs + "\n",
        "### Does each model beat bicubic? (PSNR on Y, border cropped)\n\n"
        + _sr_verdicts(metrics, rows) + "\n",
        "### Table 6: distance to the truth (RGB 0-255 scale), PSNR and SSIM\n\n"
        + _table(["Model", "L1", "L2", "PSNR Y (dB)", "SSIM Y", "PSNR RGB (dB)", "SSIM RGB",
                  "paper row", f"L1, {PAPER}", f"L2, {PAPER}"], t6) + "\n",
        "### Table 6b: per-channel L1 and L2 (RGB 0-255 scale)\n\n"
        + _table(["Model", "L1 R", "L1 G", "L1 B", "L2 R", "L2 G", "L2 B"], t6b) + "\n",
        "### Table 7: Frechet Inception Distance to the true tiles\n\n" + fid_note
        + _table(["Model", "FID", "paper row", f"FID, {PAPER}"], t7) + "\n",
        "### Figure (paper Fig. 10)\n\n![input, truth, bicubic, each model; rows alternate full tile and "
        "its centre zoomed 2x](figures/superres_grid.png)\n\n*Columns: LR input (nearest), truth, bicubic, "
        "each model pretrained and fine-tuned; rows alternate a test tile (halved) and its centre "
        f"{params.get('sr_evaluate', {}).get('zoom', '?')} px shown at 2x.*\n",
    ])


class Best(NamedTuple):
    """How a task's best model is picked from its metrics: ``astrogan ... --model best`` and the
    headline numbers of :func:`summary` use the same rule."""

    key: str                       # the metric
    better: Callable               # min or max
    baseline: str                  # the metrics entry the choice is compared with
    baseline_says: str             # its name in the line that says why


BEST = {"colorize": Best("ab_l1", min, "grey", "the grey baseline (a*b = 0)"),
        "superres": Best("psnr_rgb", max, "bicubic", "bicubic")}


def summary(colorization: dict, superres: dict, data: dict) -> dict:
    """The headline numbers DVC tracks (``metrics/summary.json``; ``dvc exp show`` / ``dvc metrics
    diff``): per task the best model against its baseline (``colorize.vs_grey``: a*b* L1 over the
    grey image's; ``sr.gain_db``: PSNR-Y over bicubic of the model ``--model best`` picks by RGB
    PSNR, :data:`BEST`), guided colour's a*b* L1 over grey with 10
    points and with a reference beside the non-learned baselines (``guided.points10`` /
    ``nearest10``, ``guided.ref`` / ``palette``), FID where it could be computed, and the data
    counts. Numbers only (the names of the best models are in report.md); the detailed tables stay
    in colorization.json and superres.json. The names are short so that ``dvc exp show
    --only-changed`` fits 120 columns: the baselines and counts do not move with training params,
    so only the model columns and the param show."""
    out: dict = {}
    grey = colorization["grey"]["ab_l1"]
    scored = [(m["ab_l1"], name, stage, m) for name, stages in model_entries(colorization, "colorize").items()
              for stage, m in stages.items()]
    if scored:
        best = min(scored, key=lambda t: t[0])[3]
        out["colorize"] = {"vs_grey": round(best["ab_l1"] / grey, 4) if grey else None,
                           **({"fid": best["fid"]} if best.get("fid") is not None else {})}
    guided = colorization.get("guided") or {}
    if guided:
        g = min(guided.values(), key=lambda r: r["points"].get("10", {}).get("model", float("inf")))
        ten = g["points"].get("10") or {}
        ref = g.get("reference") or {}
        found = {"points10": ten.get("model_vs_grey"), "nearest10": ten.get("nearest_vs_grey"),
                 "ref": ref.get("model_vs_grey"), "palette": ref.get("palette_vs_grey")}
        out["guided"] = {k: v for k, v in found.items() if v is not None}
    key, better = BEST["superres"].key, BEST["superres"].better  # the model `--model best` upscales with
    sr = [(m[key], m) for stages in model_entries(superres, "superres").values() for m in stages.values()
          if isinstance(m, dict) and key in m and "psnr_y" in m]
    if sr:
        _, best = better(sr, key=lambda t: t[0])
        out["sr"] = {"gain_db": round(best["psnr_y"] - superres["bicubic"]["psnr_y"], 4),
                     **({"fid": best["fid"]} if best.get("fid") is not None else {})}
    out["data"] = {k: v for k, v in data.items() if v is not None}
    return out


def save_guided_plot(path: str | os.PathLike, guided: dict) -> int:
    """A PNG of guided colour's a*b* L1 / grey against the number of points (log x), each guided model
    beside the nearest-hint baseline, with the reference results as points at the right: the
    ``dvc plots`` curve, viewable offline. Returns the file size."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.8), dpi=100)
    first = next(iter(guided.values()))["points"]
    xs = [max(int(n), 0.5) for n in first]  # 0 points drawn at 0.5 on the log axis
    ax.plot(xs, [m["nearest_vs_grey"] for m in first.values()], "o--", color="grey", label="nearest hint")
    for key, r in guided.items():
        if "model_vs_grey" not in first[next(iter(first))]:
            continue  # baselines only: no guided model in the run
        ax.plot(xs, [m["model_vs_grey"] for m in r["points"].values()], "o-", label=key)
        ref = r.get("reference")
        if ref:
            ax.scatter([xs[-1] * 2], [ref["model_vs_grey"]], marker="*", s=90, zorder=3,
                       label=f"{key}, reference tile")
    ref = next((r["reference"] for r in guided.values() if r.get("reference")), None)
    if ref:
        ax.scatter([xs[-1] * 2], [ref["palette_vs_grey"]], marker="x", color="grey", s=60, zorder=3,
                   label="reference palette")
    ax.axhline(1.0, color="black", lw=0.8)
    ax.set_xscale("log")
    ax.set_xticks(xs + ([xs[-1] * 2] if ref else []))
    ax.set_xticklabels([str(n) for n in first] + (["ref."] if ref else []))
    ax.set_xlabel("colour points per 256 px test tile")
    ax.set_ylabel("a*b* L1 / grey's (lower is better)")
    ax.set_ylim(0, 1.1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})  # no version stamp: same data, same bytes
    plt.close(fig)
    write_bytes_atomic(path, buf.getvalue())
    return len(buf.getvalue())
