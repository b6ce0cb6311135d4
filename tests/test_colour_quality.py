"""Issue 10's options wired into the zoo: the a*b classifier (Zhang et al.), its rebalanced loss in
both phases, the colourfulness term, astro pretraining with single-filter grey inputs, strength."""

from __future__ import annotations

import copy
import json

import pytest
import torch
import yaml

from pipeline import abclass, color, colorizer
from pipeline.errors import AstroganError
from pipeline.models import load_generator
from pipeline.models.ab_classifier import ABClassifier
from pipeline.models.patchgan import PatchGAN
from pipeline.models.resnet_unet import ResNet18UNet
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


# --- colour at a fraction of the resolution (generator_kwargs.factor) --------------------------------

def test_factor_generators_see_the_pooled_input_and_upsample_their_colour():
    torch.manual_seed(0)
    x = torch.rand(2, 1, 128, 128) * 2 - 1
    G = ResNet18UNet(factor=4).eval()
    assert G.input_multiple == 64
    with torch.no_grad():
        out = G(x)
        low = G.body(torch.nn.functional.avg_pool2d(x, 4))
    assert out.shape == (2, 2, 128, 128) and low.shape == (2, 2, 32, 32)
    assert torch.allclose(out, torch.nn.functional.interpolate(low, size=(128, 128), mode="bilinear"))
    with pytest.raises(ValueError, match="divisible by 64"):
        G(torch.zeros(1, 1, 96, 96))
    C = ABClassifier(factor=4, T=0.38).train()
    ab = C(x)
    assert C.input_multiple == 64 and ab.shape == (2, 2, 128, 128) and C.last_logits.shape == (2, 261, 32, 32)
    want = abclass.annealed_mean(C.last_logits.float(), C.centres, 0.38) / color.AB_SCALE
    assert torch.allclose(ab, torch.nn.functional.interpolate(want, size=(128, 128), mode="bilinear"))
    # the classification target is the true a*b area-averaged to the logits' grid
    y = torch.zeros(1, 2, 8, 8)
    y[..., :4, :] = 40.0
    want = torch.tensor([[40.0, 40.0], [0.0, 0.0]]).expand(1, 2, 2, 2)
    assert torch.equal(colorizer._at(y, torch.zeros(1, 261, 2, 2)), want)
    assert colorizer._at(y, torch.zeros(1, 261, 8, 8)) is y
    with pytest.raises(ValueError, match="factor"):
        ResNet18UNet(factor=0)


def test_patchgan_downsample_judges_the_pooled_pair():
    torch.manual_seed(0)
    D4 = PatchGAN(in_channels=3, ndf=8, downsample=4).eval()
    D1 = PatchGAN(in_channels=3, ndf=8).eval()
    D1.load_state_dict(D4.state_dict())
    x = torch.rand(2, 3, 128, 128)
    with torch.no_grad():
        assert torch.allclose(D4(x), D1(torch.nn.functional.avg_pool2d(x, 4)))


@pytest.mark.parametrize("build, name, bad", [
    (lambda v: ResNet18UNet(factor=v), "factor", 0),
    (lambda v: ABClassifier(factor=v), "factor", 1.5),
    (lambda v: PatchGAN(in_channels=3, downsample=v), "downsample", -2),
])
def test_a_pooling_factor_that_is_not_a_whole_number_from_1_is_refused(build, name, bad):
    with pytest.raises(ValueError, match=rf"^{name}={bad}; use an integer >= 1$"):
        build(bad)
    kept = getattr(build(2.0), name)               # 2.0 from a YAML file is the integer 2
    assert kept == 2 and isinstance(kept, int)


def test_factor_entries_train_through_both_stages_and_a_bad_crop_says_so(cls_project, monkeypatch):
    params = yaml.safe_load((cls_project / "params.yaml").read_text())
    zoo = params["colorize"]["zoo"]
    zoo["low"] = {"generator": "resnet18_unet", "generator_kwargs": {"factor": 2}, "color_space": "lab",
                  "discriminator": "patchgan",
                  "discriminator_kwargs": {"ndf": 8, "downsample": 2, "n_layers": 2}}
    zoo["low_cls"] = {**CLS, "generator_kwargs": {"backbone": "resnet18_unet", "T": 0.38, "factor": 2},
                      "colourfulness_weight": 0.0}
    zoo["too_coarse"] = {"generator": "resnet18_unet", "generator_kwargs": {"factor": 4},
                         "color_space": "lab", "discriminator": "patchgan"}
    (cls_project / "params.yaml").write_text(yaml.safe_dump(params))
    for name in ("low", "low_cls"):
        pretrain.main([name])
        finetune.main([name])
        G, meta = load_generator(cls_project / f"models/colorize/{name}/finetuned.pt")
        assert meta["arch_kwargs"]["factor"] == 2 and G.input_multiple == 32
        out = colorizer.colorize_batch(G, torch.rand(1, 3, 64, 64), "lab")
        assert out.shape == (1, 3, 64, 64) and torch.isfinite(out).all()
    rows = _read_csv(cls_project / "metrics/plots/finetune/low_cls.csv")
    assert all(float(r["loss_g_class"]) > 0 for r in rows)
    card = json.loads((cls_project / "models/colorize/low/finetuned.card.json").read_text())
    assert card["discriminator"]["kwargs"]["downsample"] == 2
    with pytest.raises(AstroganError, match="32 px crop of too_coarse .pretrain. is not a multiple of 64"):
        pretrain.main(["too_coarse"])
