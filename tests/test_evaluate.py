"""The evaluate stage end to end on a tiny fake project, and the report it renders."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from skimage.color import rgb2lab
from torch import nn

import pipeline.models
from pipeline import report
from pipeline.errors import AstroganError
from pipeline.metrics import round_sig
from pipeline.models import save_generator
from pipeline.stages import evaluate
from tests.conftest import pack_project

ROOT = Path(__file__).resolve().parents[1]

METRIC_KEYS = {"rgb_l1", "rgb_l1_r", "rgb_l1_g", "rgb_l1_b", "rgb_l2", "rgb_l2_r", "rgb_l2_g", "rgb_l2_b",
               "lab_l1_l", "lab_l1_a", "lab_l1_b", "lab_l2_l", "lab_l2_a", "lab_l2_b", "ab_l1", "ab_l2",
               "psnr", "ssim", "colourfulness", "fid"}
SIZE = 32


class TinyGen(nn.Module):
    """A 3x3 conv + tanh colorizer: L (N, 1, H, W) -> (N, out_channels, H, W) in [-1, 1]."""

    def __init__(self, out_channels: int = 2, encoder_weights=None):
        super().__init__()
        self.conv = nn.Conv2d(1, out_channels, 3, padding=1)

    def forward(self, x):
        return torch.tanh(self.conv(x))


def _metrics_dict(model_ab_l1: dict[str, float], fid_reason=None) -> dict:
    """A colorization.json-shaped dict; every metric 1.0 except ab_l1 (grey 10) and fid."""
    def m(ab):
        d = {k: 1.0 for k in METRIC_KEYS}
        d.update(ab_l1=ab, fid=None if fid_reason else 5.0)
        return d
    out = {"test_tiles": 12, "test_images": 3, "grey_tiles_skipped": 2, "fid_reason": fid_reason,
           "colourfulness_truth": 20.5, "grey": m(10.0)}
    for key, ab in model_ab_l1.items():
        name, stage = key.split("/")
        out.setdefault(name, {})[stage] = m(ab)
    return out


PARAMS = {"colorize": {"zoo": {"r18": {"generator": "resnet18_unet", "color_space": "lab"},
                               "plain": {"generator": "unet", "color_space": "rgb"}}}}


def test_report_has_all_tables_grey_rows_paper_values_and_verdicts():
    metrics = _metrics_dict({"r18/pretrained": 15.0, "r18/finetuned": 7.5, "plain/pretrained": 10.0})
    text = report.render_report(metrics, PARAMS)
    assert text == report.render_report(metrics, PARAMS)          # deterministic, no timestamps
    for n in range(1, 6):
        assert f"### Table {n}:" in text
    tables = text.split("### Table ")[1:]
    assert all("grey baseline" in t for t in tables)               # the baseline is a row everywhere
    assert all("paper (their data, undefined scale)" in t for t in tables)
    assert "64.5409" in text and "42.1593" in text and "152.7216" in text and "125.5554" in text
    assert "**r18 (pretrained)** is worse than the grey baseline" in text
    assert "ratio model/grey = 1.500" in text
    assert "**r18 (finetuned)** beats the grey baseline" in text and "0.750" in text
    assert "**plain (pretrained)** ties with the grey baseline" in text
    # Our fine-tuned ResNet-18 Lab row carries the paper's fine-tuned Lab values in Table 1.
    row = next(line for line in tables[0].splitlines() if line.startswith("| r18 (finetuned)"))
    assert "65.1119" in row and "2.62" in row
    # The paper's RGB ResNet-18 has no counterpart here: listed as a paper-only row.
    assert "| paper only: ResNet-18 (Pre-trained), RGB | rgb | — |" in tables[0]


def test_report_states_fid_reason_and_appends_sections():
    reason = "5 tiles <= 2048 dims: the covariance would be rank-deficient"
    metrics = _metrics_dict({"r18/finetuned": 12.0}, fid_reason=reason)
    text = report.render_report(metrics, PARAMS, sections=["## Super-resolution\n\nTables 6-7\n"])
    assert f"FID not computed: {reason}" in text
    assert text.index("## Colorization") < text.index("## Super-resolution")
    assert "No fine-tuned model" not in text
    assert "untested on astronomical images" in text


def test_round_sig_and_colour_rows():
    assert round_sig({"a": 1.23456789, "b": [2, None, "x"], "c": {"d": 123456789.0}}) == \
        {"a": 1.23457, "b": [2, None, "x"], "c": {"d": 123457000.0}}
    rows = [{"tile_id": "b", "grey": "0"}, {"tile_id": "a", "grey": "0"}, {"tile_id": "c", "grey": "1"}]
    kept, skipped = evaluate.colour_rows(rows)
    assert [r["tile_id"] for r in kept] == ["a", "b"] and skipped == 1


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A tiny project: 5 colour tiles from 3 images + 1 grey tile, models m1 (lab) and m2 (rgb)."""
    monkeypatch.setattr(pipeline.models, "_generators", lambda: {"tiny": TinyGen})
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)                                  # the random TinyGen weights below
    g = torch.Generator().manual_seed(0)
    tiles_dir, split_dir, models_dir = tmp_path / "tiles", tmp_path / "split", tmp_path / "models"
    tiles_dir.mkdir()
    split_dir.mkdir()
    rows = []
    for i, image in enumerate(["img0", "img0", "img1", "img2", "img2", "img1"]):
        base = torch.rand(3, 4, 4, generator=g)
        arr = nn.functional.interpolate(base[None], size=(SIZE, SIZE), mode="bilinear")[0]
        grey = i == 5
        if grey:
            arr = arr.mean(0, keepdim=True).expand(3, -1, -1)
        u8 = (arr * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
        Image.fromarray(np.ascontiguousarray(u8)).save(tiles_dir / f"{image}_t{i}.png")
        rows.append({"tile_id": f"{image}_t{i}", "image_id": image, "x": 0, "y": 0, "size": SIZE,
                     "content": 0.5, "grey": int(grey)})
    with (split_dir / "test.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(reversed(rows))                       # the stage must sort by tile_id itself
    zero = TinyGen(2)
    nn.init.zeros_(zero.conv.weight)
    nn.init.zeros_(zero.conv.bias)                        # a*b = 0: must score exactly like grey
    save_generator(models_dir / "m1" / "pretrained.pt", zero, arch="tiny", arch_kwargs={"out_channels": 2},
                   color_space="lab", step=1)
    save_generator(models_dir / "m1" / "finetuned.pt", TinyGen(2), arch="tiny",
                   arch_kwargs={"out_channels": 2}, color_space="lab", step=2)
    save_generator(models_dir / "m2" / "pretrained.pt", TinyGen(3), arch="tiny",
                   arch_kwargs={"out_channels": 3}, color_space="rgb", step=1)
    params = {"seed": 0, "device": "cpu",
              "paths": {"tiles": str(tiles_dir), "split": str(split_dir), "colorize_models": str(models_dir),
                        "metrics": str(tmp_path / "metrics")},
              "colorize": {"pretrain": ["m1", "m2"], "finetune": ["m1"],
                           "zoo": {"m1": {"generator": "tiny", "color_space": "lab"},
                                   "m2": {"generator": "tiny", "color_space": "rgb"}}},
              "evaluate": {"batch_size": 2, "grid_samples": 3, "fid_dims": 64}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.setenv("ASTROGAN_PARAMS", str(tmp_path / "params.yaml"))
    return tmp_path, params


def test_main_end_to_end(project, capsys):
    tmp, params = project
    evaluate.main()
    out = tmp / "metrics"
    m = json.loads((out / "colorization.json").read_text())
    assert (m["test_tiles"], m["test_images"], m["grey_tiles_skipped"]) == (5, 3, 1)
    assert m["fid_reason"].startswith("5 tiles <= 64 dims: the covariance would be rank-deficient")
    assert capsys.readouterr().out.count("FID skipped:") == 1
    assert list(m) == ["test_tiles", "test_images", "grey_tiles_skipped", "fid_reason",
                       "colourfulness_truth", "grey", "m1", "m2", "guided"]
    # no guided model among m1, m2: the guided table holds the non-learned baselines alone
    assert list(m["guided"]) == ["baselines"] and "model" not in m["guided"]["baselines"]["points"]["0"]
    assert list(m["m1"]) == ["pretrained", "finetuned"] and list(m["m2"]) == ["pretrained"]
    for d in (m["grey"], m["m1"]["pretrained"], m["m1"]["finetuned"], m["m2"]["pretrained"]):
        assert set(d) == METRIC_KEYS and d["fid"] is None
        assert all(float(f"{v:.6g}") == v for k, v in d.items() if k != "fid")   # 6 significant digits
    # The zero model is the grey baseline (up to float32 round-off of L through the network scaling).
    for k in METRIC_KEYS - {"fid"}:
        assert m["m1"]["pretrained"][k] == pytest.approx(m["grey"][k], rel=1e-4, abs=1e-4), k
    assert m["m1"]["finetuned"] != m["grey"]
    # The grey baseline's a*b error is the truth's mean |a*b|, cross-checked with scikit-image.
    colour = sorted(p for p in (tmp / "tiles").glob("*.png") if "_t5" not in p.name)
    lab = np.stack([rgb2lab(np.asarray(Image.open(p))) for p in colour])
    assert m["grey"]["ab_l1"] == pytest.approx(np.abs(lab[..., 1:]).mean(), rel=1e-3)

    text = report.render_colorization_report(json.loads((out / "colorization.json").read_text()), params)
    assert "m1 (finetuned)" in text and "m2 (pretrained)" in text and "5 tiles from 3 images" in text

    grid = Image.open(out / "figures" / "colorization_grid.png")
    cell, gap, title = report.GRID_CELL, 2, 30
    assert grid.size == (5 * (cell + gap) + gap, title + 3 * (cell + gap) + gap)   # 5 columns, 3 rows
    first_truth = np.asarray(Image.open(colour[0]))                                   # sorted by tile_id
    x0, y0 = gap + 4 * (cell + gap), title + gap
    shown = np.asarray(grid)[y0:y0 + cell, x0:x0 + cell]
    assert np.array_equal(shown[:: cell // SIZE, :: cell // SIZE], first_truth)

    before = {p.name: p.read_bytes() for p in (out / "colorization.json",
                                                  out / "figures" / "colorization_grid.png")}
    evaluate.main()
    after = {p.name: p.read_bytes() for p in (out / "colorization.json",
                                                 out / "figures" / "colorization_grid.png")}
    assert before == after                                # byte-identical rerun


def test_missing_checkpoint_is_one_clear_line_and_writes_nothing(project):
    tmp, params = project
    (tmp / "models" / "m2" / "pretrained.pt").unlink()
    with pytest.raises(AstroganError, match=r"m2/pretrained\.pt: model checkpoint not found"):
        evaluate.main()
    assert not (tmp / "metrics").exists()


def test_only_grey_test_tiles_is_a_clear_error(project):
    tmp, params = project
    split = tmp / "split" / "test.csv"
    rows = list(csv.DictReader(split.open()))
    with split.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows([r | {"grey": "1"} for r in rows])
    with pytest.raises(AstroganError, match="no colour test tiles"):
        evaluate.main()


def test_the_default_zoo_lands_in_the_paper_rows():
    """resnet18_lab pre/ft, resnet18_rgb pre-trained only, unet_rgb's GAN-trained (finetuned) model."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    zoo = params["colorize"]["zoo"]
    metrics = _metrics_dict({"resnet18_lab/pretrained": 12.0, "resnet18_lab/finetuned": 11.0,
                             "resnet18_rgb/pretrained": 13.0, "unet_rgb/pretrained": 14.0,
                             "unet_rgb/finetuned": 9.0})
    table1 = report.render_report(metrics, {"colorize": {"zoo": zoo}}).split("### Table ")[1]
    row = {line.split(" | ")[0][2:]: line for line in table1.splitlines() if line.startswith("| ")}
    assert "64.5409" in row["resnet18_lab (pretrained)"] and "65.1119" in row["resnet18_lab (finetuned)"]
    assert "125.5554" in row["resnet18_rgb (pretrained)"] and "77.3273" in row["unet_rgb (finetuned)"]
    assert "77.3273" not in row["unet_rgb (pretrained)"] and "paper only" not in table1
    assert set(params["colorize"]["finetune"]) <= set(params["colorize"]["pretrain"]) <= set(zoo)
    assert "resnet18_rgb" not in params["colorize"]["finetune"]


def test_strength_is_chosen_on_val_and_scored_on_test(project):
    """m1/pretrained predicts a*b = 0 (every strength scores the same, up to round-off); a val split
    equal to the test tiles; the chosen strength's test metrics sit beside the plain ones."""
    tmp, params = project
    split = tmp / "split"
    (split / "val.csv").write_text((split / "test.csv").read_text())
    (split / "train.csv").write_text((split / "test.csv").read_text())
    params["paths"]["packed"] = str(tmp / "packed")
    params["evaluate"]["strengths"] = [0, 0.5, 1.0]
    (tmp / "params.yaml").write_text(yaml.safe_dump(params))
    pack_project(tmp, side=SIZE)
    evaluate.main()
    m = json.loads((tmp / "metrics" / "colorization.json").read_text())
    assert list(m["m1"]) == ["pretrained", "finetuned", "pretrained_val_strength", "finetuned_val_strength"]
    zero = m["m1"]["pretrained_val_strength"]
    assert set(zero["val_ab_l1_by_strength"]) == {"0", "0.5", "1"}
    assert max(zero["val_ab_l1_by_strength"].values()) == pytest.approx(
        min(zero["val_ab_l1_by_strength"].values()), rel=1e-4)
    ft = m["m1"]["finetuned_val_strength"]
    by = ft["val_ab_l1_by_strength"]
    assert ft["strength"] == float(min(by, key=by.get))
    if ft["strength"] == 0:  # strength 0 is the grey input: it scores as the grey baseline
        assert ft["ab_l1"] == pytest.approx(m["grey"]["ab_l1"], rel=1e-4)
    assert m["m2"]["pretrained_val_strength"]["strength"] in (0, 0.5, 1.0)
    text = report.render_colorization_report(m, params)
    assert "strength chosen on val" in text
    # the bounds of pipeline.colour_bounds on the same test tiles: a median of a finer group of pixels
    # is never further from the truth than that of a coarser one, and grey is their common scale
    b = m["bounds"]
    assert (b["split"], b["tiles"], b["images"]) == ("test", m["test_tiles"], m["test_images"])
    ab = b["ab_l1"]
    assert ab["grey"] == pytest.approx(m["grey"]["ab_l1"], rel=0.1) and b["ratio_to_grey"]["grey"] == 1
    assert ab["oracle_tile_lookup"] <= ab["oracle_tile_constant"] <= ab["oracle_image_constant"] <= ab["grey"]
    assert ab["oracle_image_lookup"] <= ab["oracle_image_constant"]
    assert "### How far colour can come from grey on these tiles" in text
    assert "oracle: each test image's true median" in text


def test_summary_headlines_the_models_the_cli_picks():
    """summary.json's SR gain is that of the model `astrogan upscale --model best` picks (highest RGB
    PSNR, report.BEST), in PSNR-Y over bicubic; colour is the lowest a*b* L1 over grey's."""
    colorization = {"grey": {"ab_l1": 8.0}, "a": {"pretrained": {"ab_l1": 9.0}, "finetuned": {"ab_l1": 6.0}}}
    superres = {"bicubic": {"psnr_y": 30.0, "psnr_rgb": 28.0},
                "x": {"pretrained": {"psnr_y": 31.0, "psnr_rgb": 28.5}},   # best on Y
                "z": {"finetuned": {"psnr_y": 30.5, "psnr_rgb": 29.0}}}    # best on RGB: the CLI's
    out = report.summary(colorization, superres, {"images": 3})
    assert out["colorize"] == {"vs_grey": 0.75} and out["sr"] == {"gain_db": 0.5}
    assert out["data"] == {"images": 3} and report.BEST["superres"].key == "psnr_rgb"
