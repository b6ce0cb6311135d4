"""Degradation, SR metrics against scikit-image, the perceptual-loss fallback, SR training steps, and
the sr_pretrain / sr_finetune / sr_evaluate stages on a tiny fake project (resume included)."""

import copy
import csv
import json
import math
import shutil
import urllib.error

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from skimage.color import rgb2ycbcr
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from pipeline import superres
from pipeline import train as train_mod
from pipeline.errors import AstroganError
from pipeline.models import load_generator
from pipeline.models.edsr import EDSR
from pipeline.models.srresnet import SRGANDiscriminator
from pipeline.params import load_params
from pipeline.report import render_superres_report
from pipeline.stages import sr_evaluate, sr_finetune, sr_pretrain
from tests.conftest import pack_project

SIZE = 32
TINY_G = {"num_feat": 8, "num_block": 2, "global_skip": True}
TINY_D = {"num_feat": 8, "pool": 2, "fc": 16}
PARAMS = {
    "seed": 0, "device": "cpu", "lr": 0.0002,
    "paths": {"tiles": "data/tiles", "split": "data/split", "packed": "data/packed",
              "resume": ".resume",
              "superres_models": "models/superres", "metrics": "metrics"},
    "tile": {"size": SIZE},
    "train": {"betas": [0.5, 0.999], "l1_weight": 100, "gan_loss": "vanilla", "precision": "auto",
              "num_workers": 0},
    "superres": {"models": ["sr", "ed"], "scale": 4, "degradation": {"blur_sigma": 0, "noise_sigma": 2},
                 "pixel_loss": "l1", "adversarial_weight": 0.001, "perceptual_weight": 0.006,
                 "perceptual_layer": "relu2_2", "zoo": {
                     "sr": {"generator": "srresnet", "generator_kwargs": TINY_G, "discriminator": "srgan",
                            "discriminator_kwargs": TINY_D},
                     "ed": {"generator": "edsr", "generator_kwargs": TINY_G, "discriminator": "srgan",
                            "discriminator_kwargs": TINY_D}}},
    "sr_pretrain": {"steps": 4, "batch_size": 2, "crop": 16, "checkpoint_every": 2, "log_every": 1},
    "sr_finetune": {"steps": 4, "batch_size": 2, "crop": 16, "checkpoint_every": 2, "log_every": 1},
    "sr_evaluate": {"batch_size": 3, "grid_samples": 2, "zoom": 16, "fid_dims": 2048},
}


def _image(rng, h=SIZE, w=SIZE):
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    c = rng.uniform(0, 1, (3, 3))
    img = np.stack([c[i, 0] * np.sin(9 * xx) + c[i, 1] * yy ** 2 + c[i, 2] * rng.uniform(0, .3, (h, w))
                    for i in range(3)], -1)
    return (img / img.max() * 255).clip(0, 255).astype(np.uint8)


def write_project(root, params=PARAMS):
    rng = np.random.default_rng(0)
    tiles, split = root / "data" / "tiles", root / "data" / "split"
    tiles.mkdir(parents=True)
    split.mkdir(parents=True)
    rows = {"train": [], "test": []}
    for i in range(7):
        img = _image(rng)
        if i == 5:
            img = np.repeat(img[..., :1], 3, -1)  # a grey tile: SR uses it too
        Image.fromarray(img).save(tiles / f"t{i}.png")
        rows["test" if i >= 4 else "train"].append({"tile_id": f"t{i}", "image_id": f"im{i // 2}",
                                                    "grey": "1" if i == 5 else "0"})
    for name, rs in rows.items():
        with open(split / f"{name}.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rs[0]))
            w.writeheader()
            w.writerows(rs)
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    pack_project(root)
    return root


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """An empty torch hub cache whose downloads fail as they do without network."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(torch.hub, "download_url_to_file",
                        lambda *a, **k: (_ for _ in ()).throw(urllib.error.URLError("offline (test)")))


@pytest.fixture
def use(monkeypatch):
    def _use(root):
        monkeypatch.chdir(root)
        monkeypatch.setenv("ASTROGAN_PARAMS", str(root / "params.yaml"))
    return _use


# --- degradation and baselines --------------------------------------------------------------------

def test_degradation_shapes_range_and_determinism():
    hr = torch.rand(3, 3, 64, 48)
    clean = superres.degrade(hr, superres.Degradation())
    assert clean.shape == (3, 3, 16, 12) and 0 <= clean.min() and clean.max() <= 1
    assert torch.equal(clean * 255, (clean * 255).round())  # 8-bit
    flat = superres.degrade(torch.full((1, 3, 32, 32), 0.4), superres.Degradation())
    assert torch.allclose(flat, torch.full_like(flat, round(0.4 * 255) / 255))
    noisy = superres.Degradation(blur_sigma=1.0, noise_sigma=5.0)
    a = superres.degrade(hr, noisy, torch.Generator().manual_seed(3))
    b = superres.degrade(hr, noisy, torch.Generator().manual_seed(3))
    c = superres.degrade(hr, noisy, torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert 2 < float((a - superres.degrade(hr, superres.Degradation(blur_sigma=1.0))).std() * 255) < 8
    with pytest.raises(ValueError, match="needs a torch.Generator"):
        superres.degrade(hr, noisy)
    with pytest.raises(ValueError, match="not a multiple of the scale 4"):
        superres.degrade(torch.rand(1, 3, 30, 32), superres.Degradation())
    x, y = superres.make_pair(hr, superres.Degradation())
    assert torch.equal(y, hr) and torch.equal(x, clean)


def test_blur_matches_scipy():
    from scipy.ndimage import gaussian_filter

    img = torch.rand(1, 1, 20, 24, dtype=torch.float64)
    ours = superres.gaussian_blur(img, 1.3)[0, 0].numpy()
    ref = gaussian_filter(img[0, 0].numpy(), 1.3, mode="mirror", truncate=4.0)
    assert np.abs(ours - ref).max() < 1e-12


def test_baselines():
    lr = torch.rand(2, 3, 8, 8)
    assert torch.equal(superres.nearest(lr, 4)[..., ::4, ::4], lr)
    b = superres.bicubic(lr, 4)
    assert b.shape == (2, 3, 32, 32) and 0 <= b.min() and b.max() <= 1


# --- metrics against scikit-image -----------------------------------------------------------------

def test_y_psnr_ssim_match_skimage(rng):
    pred = rng.uniform(0, 1, (2, 40, 36, 3))
    truth = np.clip(pred + rng.normal(0, 0.05, pred.shape), 0, 1)
    m = superres.sr_tile_metrics(torch.from_numpy(pred).permute(0, 3, 1, 2),
                                 torch.from_numpy(truth).permute(0, 3, 1, 2), border=4)
    for i in range(2):
        yp, yt = (rgb2ycbcr(a[i])[4:-4, 4:-4, 0] for a in (pred, truth))
        assert abs(float(m["psnr_y"][i]) - peak_signal_noise_ratio(yt, yp, data_range=255)) < 1e-3
        ref = structural_similarity(yt, yp, data_range=255, gaussian_weights=True, sigma=1.5,
                                    use_sample_covariance=False)
        assert abs(float(m["ssim_y"][i]) - ref) < 1e-3
        p8, t8 = pred[i, 4:-4, 4:-4] * 255, truth[i, 4:-4, 4:-4] * 255
        assert abs(float(m["psnr_rgb"][i]) - peak_signal_noise_ratio(t8, p8, data_range=255)) < 1e-3
        ref = structural_similarity(t8, p8, data_range=255, channel_axis=2, gaussian_weights=True, sigma=1.5,
                                    use_sample_covariance=False)
        assert abs(float(m["ssim_rgb"][i]) - ref) < 1e-3
        assert abs(float(m["rgb_l1_g"][i]) - np.abs(p8 - t8)[..., 1].mean()) < 1e-9
        assert abs(float(m["rgb_l2"][i]) - ((p8 - t8) ** 2).mean()) < 1e-9


# --- perceptual loss ------------------------------------------------------------------------------

def test_perceptual_loss_offline_is_one_line_and_recorded(offline, capsys):
    module, record = superres.perceptual_loss(0.006)
    out = capsys.readouterr().out
    assert module is None and out.count("\n") == 1
    assert out.startswith("perceptual loss: VGG19 imagenet weights unavailable (URLError")
    assert out.rstrip().endswith("perceptual term dropped")
    assert record["used_weight"] == 0.0 and record["requested_weight"] == 0.006
    assert "offline (test)" in record["reason"]
    assert superres.perceptual_loss(0)[1]["reason"] == "perceptual_weight is 0"


def test_perceptual_module_with_given_weights():
    from torchvision.models.vgg import cfgs, make_layers

    state = {f"features.{k}": v for k, v in make_layers(cfgs["E"]).state_dict().items()}
    loss = superres.VGGPerceptualLoss(state, "relu2_2")
    x = torch.rand(2, 3, 16, 16, requires_grad=True)
    v = loss(x, torch.rand(2, 3, 16, 16))
    v.backward()
    assert v > 0 and x.grad is not None and not any(p.requires_grad for p in loss.parameters())
    assert float(loss(x, x).detach()) == 0


# --- steps ----------------------------------------------------------------------------------------

def _batch(n=4, crop=32):
    rng = np.random.default_rng(0)
    imgs = torch.from_numpy(np.stack([_image(rng, 48, 48) for _ in range(3)])).permute(0, 3, 1, 2)
    from pipeline.data import random_crops

    rgb = random_crops(imgs.contiguous(), n, crop, torch.Generator().manual_seed(0))
    return superres.make_pair(rgb, superres.Degradation())


@pytest.mark.parametrize("pixel", ["l1", "mse"])
def test_pixel_steps_lower_the_loss(pixel):
    torch.manual_seed(0)
    G = EDSR(num_feat=8, num_block=2)
    x, y = _batch()
    opt = torch.optim.Adam(G.parameters(), lr=1e-3)
    auto = train_mod.autocast_for(torch.device("cpu"), "fp32")
    losses = [train_mod.l1_step(G, opt, x, y, auto, pixel)[f"loss_g_{pixel}"] for _ in range(10)]
    assert losses[-1] < 0.7 * losses[0], losses


def test_unconditional_gan_steps_are_finite_and_use_extra_term():
    torch.manual_seed(0)
    G, D = EDSR(num_feat=8, num_block=2, global_skip=True), SRGANDiscriminator(num_feat=8, pool=2, fc=16)
    x, y = _batch()
    opt_g, opt_d = (torch.optim.Adam(m.parameters(), lr=2e-4, betas=(0.5, 0.999)) for m in (G, D))
    calls = []
    extra = ("loss_g_perceptual", lambda f, t, _x: calls.append(f.shape) or 0.5 * (f - t).abs().mean())
    for _ in range(3):
        out = train_mod.gan_step(G, D, opt_g, opt_d, x, y, l1_weight=1.0,
                                 criterion=train_mod.gan_losses("vanilla"),
                                 autocast=train_mod.autocast_for(torch.device("cpu"), "fp32"),
                                 conditional=False, adversarial_weight=1e-3, pixel_loss="mse",
                                 extras=(extra,))
    assert set(out) == {"loss_d", "loss_d_real", "loss_d_fake", "loss_g_gan", "loss_g_mse",
                        "loss_g_perceptual"}
    assert all(v.ndim == 0 and math.isfinite(v) for v in out.values())
    assert calls == [(4, 3, 32, 32)] * 3
    assert train_mod.Objective(pixel_loss="mse", extras=(extra,)).fields(gan=True) == [
        "step", "loss_g_gan", "loss_g_mse", "loss_g_perceptual", "loss_d", "loss_d_real", "loss_d_fake"]
    with pytest.raises(AstroganError, match="pixel loss 'huber'"):
        train_mod.pixel_loss_fn("huber")


# --- stages on a fake project ---------------------------------------------------------------------

def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_sr_stages_end_to_end(tmp_path, use, offline, capsys):
    root = write_project(tmp_path / "p")
    use(root)
    for name in ("sr", "ed"):
        sr_pretrain.main([name])
        sr_finetune.main([name])
    out = capsys.readouterr().out
    assert out.count("perceptual loss: VGG19 imagenet weights unavailable (URLError") == 2
    G, meta = load_generator(root / "models/superres/sr/finetuned.pt")
    card = json.loads((root / "models/superres/sr/finetuned.card.json").read_text())
    assert meta["card"] == card and card["task"] == "superres" and card["scale"] == 4
    assert meta["color_space"] == "rgb" and meta["arch_kwargs"] == {**TINY_G, "scale": 4}
    assert card["perceptual_loss"]["used_weight"] == 0.0 and "offline" in card["perceptual_loss"]["reason"]
    assert card["data"]["tiles"] == 4 and card["degradation"]["noise_sigma"] == 2
    assert card["discriminator"] == {"arch": "srgan", "kwargs": TINY_D}
    assert list(_rows(root / "metrics/plots/sr_finetune/sr.csv")[0]) == [
        "step", "loss_g_gan", "loss_g_l1", "loss_d", "loss_d_real", "loss_d_fake"]
    assert [r["step"] for r in _rows(root / "metrics/plots/sr_pretrain/ed.csv")] == ["1", "2", "3", "4"]
    with torch.no_grad():
        y = G(torch.rand(1, 3, 64, 64))
    assert y.shape == (1, 3, 256, 256)

    sr_evaluate.main()
    m = json.loads((root / "metrics/superres.json").read_text())
    keys = {"rgb_l1", "rgb_l1_r", "rgb_l1_g", "rgb_l1_b", "rgb_l2", "rgb_l2_r", "rgb_l2_g", "rgb_l2_b",
            "psnr_rgb", "ssim_rgb", "psnr_y", "ssim_y", "fid"}
    assert m["test_tiles"] == 3 and m["fid_reason"].startswith("3 tiles <= 2048")
    assert m["bicubic"]["fid"] is None
    assert set(m["bicubic"]) == keys and set(m["nearest"]) == keys
    assert set(m["sr"]) == {"pretrained", "finetuned"} and set(m["ed"]["finetuned"]) == keys
    assert m["bicubic"]["psnr_y"] > m["nearest"]["psnr_y"]
    report = render_superres_report(m, load_params())  # the report stage's SR section
    assert report.startswith("## Super-resolution") and "paper (their data, undefined scale)" in report
    assert "87.109" in report and "bicubic in PSNR (Y)" in report
    png = (root / "metrics/figures/superres_grid.png").read_bytes()
    sr_evaluate.main()
    assert (root / "metrics/figures/superres_grid.png").read_bytes() == png  # deterministic bytes
    assert json.loads((root / "metrics/superres.json").read_text()) == m
    with Image.open(root / "metrics/figures/superres_grid.png") as im:
        assert im.size[0] == 7 * 130 + 2 and im.size[1] == 30 + 4 * 130 + 2  # 7 columns, 2 tiles x 2 rows


@pytest.mark.slow
def test_sr_finetune_resume_after_crash_equals_uninterrupted(tmp_path, use, offline, monkeypatch, capsys):
    a, b = write_project(tmp_path / "a"), write_project(tmp_path / "b")
    use(a)
    sr_pretrain.main(["ed"])
    shutil.copytree(a / "models", b / "models")
    sr_finetune.main(["ed"])
    use(b)
    real, count = train_mod.gan_step, {"n": 0}

    def crashing(*args, **kwargs):
        count["n"] += 1
        if count["n"] > 3:
            raise KeyboardInterrupt("simulated crash")
        return real(*args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(train_mod, "gan_step", crashing)
        with pytest.raises(KeyboardInterrupt):
            sr_finetune.main(["ed"])
    assert (b / ".resume/superres/ed/sr_finetune.pt").is_file()
    capsys.readouterr()
    sr_finetune.main(["ed"])
    assert "resuming ed sr_finetune from step 2" in capsys.readouterr().out
    sa, sb = (torch.load(p / "models/superres/ed/finetuned.pt", weights_only=True)["state_dict"]
              for p in (a, b))
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert _rows(a / "metrics/plots/sr_finetune/ed.csv") == _rows(b / "metrics/plots/sr_finetune/ed.csv")
    assert not (b / ".resume/superres/ed/sr_finetune.pt").exists()


def test_sr_stage_errors_are_one_clear_line(tmp_path, use):
    root = write_project(tmp_path / "p")
    use(root)
    with pytest.raises(AstroganError, match="'nope' is not in params.yaml superres.zoo"):
        sr_pretrain.main(["nope"])
    with pytest.raises(AstroganError, match="pretrained.pt: model checkpoint not found"):
        sr_finetune.main(["sr"])
    bad = copy.deepcopy(PARAMS)
    bad["sr_pretrain"]["crop"] = 18
    (root / "params.yaml").write_text(yaml.safe_dump(bad))
    with pytest.raises(AstroganError, match="HR crop 18 px is not a multiple of superres.scale 4"):
        sr_pretrain.main(["sr"])
