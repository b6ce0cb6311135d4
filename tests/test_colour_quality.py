"""Issue 10's options wired into the zoo: the a*b classifier (Zhang et al.), its rebalanced loss in
both phases, the colourfulness term, astro pretraining with single-filter grey inputs, strength."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from pipeline import abclass, color, colorizer
from pipeline.models import load_generator
from pipeline.models.ab_classifier import ABClassifier
from pipeline.stages import finetune, pretrain
from tests.test_train import PARAMS, _read_csv, write_project

CLS = {"generator": "ab_classifier", "generator_kwargs": {"backbone": "resnet18_unet", "T": 0.38},
       "color_space": "lab", "discriminator": "patchgan", "discriminator_kwargs": {"ndf": 8},
       "head": {"kind": "classification", "lam": 0.5, "sigma": 5, "k": 5, "weight": 1.0},
       "adversarial_weight": 0.1, "colourfulness_weight": 1.0}


def test_classifier_decodes_the_annealed_mean_and_keeps_logits_in_training():
    torch.manual_seed(0)
    G = ABClassifier(T=0.38)
    x = torch.rand(2, 1, 32, 32) * 2 - 1
    G.train()
    out = G(x)
    assert out.shape == (2, 2, 32, 32) and G.last_logits.shape == (2, 261, 32, 32)
    want = abclass.annealed_mean(G.last_logits.float(), G.centres, 0.38) / color.AB_SCALE
    assert torch.allclose(out, want)
    assert G.input_multiple == 16 and G.net.head[-1].__class__.__name__ == "Identity"  # logits, no tanh
    G.eval()
    G.last_logits = None
    G(x)
    assert G.last_logits is None  # inference keeps nothing


def test_mono_inputs_are_one_channel_shown_grey():
    rgb = torch.rand(64, 3, 8, 8)
    x_all, y = colorizer.make_pair(rgb, "lab", mono=1.0, gen=torch.Generator().manual_seed(0))
    x_none, y0 = colorizer.make_pair(rgb, "lab")
    assert torch.equal(y, y0) and not torch.allclose(x_all, x_none)
    singles = [color.normalize_l(color.rgb_to_lab(rgb[:, c:c + 1].expand(-1, 3, -1, -1))[:, :1])
               for c in range(3)]
    match = torch.stack([(x_all - s).abs().flatten(1).amax(1) < 1e-5 for s in singles])  # (3, N)
    assert match.any(0).all() and match.sum(1).min() > 5       # every sample one channel; all three used
    x_half, _ = colorizer.make_pair(rgb, "lab", mono=0.5, gen=torch.Generator().manual_seed(0))
    kept = ((x_half - x_none).abs().flatten(1).amax(1) == 0).sum()
    assert 10 < kept < 54


def test_strength_scales_ab_zero_is_grey():
    torch.manual_seed(0)
    G = ABClassifier().eval()
    rgb = torch.rand(2, 3, 32, 32)
    grey = colorizer.colorize_batch(G, rgb, "lab", strength=0.0)
    assert torch.allclose(grey, colorizer.grey_baseline(rgb), atol=2e-3)
    full = colorizer.colorize_batch(G, rgb, "lab")
    half = colorizer.colorize_batch(G, rgb, "lab", strength=0.5)
    ab = lambda t: color.rgb_to_lab(t)[:, 1:]  # noqa: E731
    close = (ab(half) - ab(full) * 0.5).abs() < 0.5  # except where the full colour left the gamut
    assert close.float().mean() > 0.9


@pytest.fixture
def cls_project(tmp_path, monkeypatch):
    params = copy.deepcopy(PARAMS)
    params["colorize"]["zoo"]["cls"] = CLS
    params["colorize"]["zoo"]["astro"] = {"generator": "resnet18_unet", "color_space": "lab", "discriminator":
                                          "patchgan", "pretrain": {"data": "astro", "mono": 0.5}}
    root = write_project(tmp_path / "proj", params)
    monkeypatch.chdir(root)
    monkeypatch.setenv("ASTROGAN_PARAMS", str(root / "params.yaml"))
    return root


def test_classifier_pretrains_and_finetunes_with_rebalanced_loss(cls_project):
    pretrain.main(["cls"])
    finetune.main(["cls"])
    for phase, csv_name in (("pretrained", "pretrain"), ("finetuned", "finetune")):
        rows = _read_csv(cls_project / f"metrics/plots/{csv_name}/cls.csv")
        assert {"loss_g_class", "loss_g_colourfulness", "loss_g_l1"} <= set(rows[0])
        assert all(float(r["loss_g_class"]) > 0 for r in rows)
        card = json.loads((cls_project / f"models/colorize/cls/{phase}.card.json").read_text())
        assert card["classification"]["bins"] == 261 and card["colourfulness_weight"] == 1.0
        assert card["classification"]["max_weight"] > 1  # rare colours weigh more than the mean (1)
    G, meta = load_generator(cls_project / "models/colorize/cls/finetuned.pt")
    assert isinstance(G, ABClassifier) and meta["color_space"] == "lab"
    out = colorizer.colorize_batch(G, torch.rand(1, 3, 32, 32), "lab")
    assert out.shape == (1, 3, 32, 32) and torch.isfinite(out).all()


def test_astro_pretraining_reads_the_packed_colour_tiles(cls_project):
    pretrain.main(["astro"])
    card = json.loads((cls_project / "models/colorize/astro/pretrained.card.json").read_text())
    assert card["data"]["source"] == "astro" and card["data"]["mono"] == 0.5
    assert card["data"]["astro"]["tiles"] == 3 and "photos" not in card["data"]  # 4 tiles, 1 grey
