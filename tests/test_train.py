"""Training steps, random crops, and the pretrain/finetune stages on a tiny fake project (resume included)."""

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

from pipeline import colorizer
from pipeline import train as train_mod
from pipeline.data import random_crops
from pipeline.errors import AstroganError
from pipeline.models import load_generator
from pipeline.models.patchgan import PatchGAN
from pipeline.models.resnet_unet import ResNet18UNet
from pipeline.stages import finetune, pretrain
from tests.conftest import pack_project

NAME = "tiny"
PARAMS = {
    "seed": 0, "device": "cpu", "lr": 0.0002,
    "paths": {"natural": "data/natural", "tiles": "data/tiles", "split": "data/split",
              "packed": "data/packed", "resume": ".resume", "colorize_models": "models/colorize",
              "metrics": "metrics"},
    "model": {"encoder_weights": "none"},
    "colorize": {"pretrain": [NAME], "finetune": [NAME], "zoo": {
        NAME: {"generator": "resnet18_unet", "color_space": "lab", "discriminator": "patchgan"},
        "tiny_rgb": {"generator": "resnet18_unet", "color_space": "rgb", "discriminator": "patchgan"}}},
    "train": {"betas": [0.5, 0.999], "l1_weight": 100, "gan_loss": "vanilla", "precision": "auto",
              "num_workers": 0},
    "pretrain": {"steps": 4, "batch_size": 2, "crop": 32, "checkpoint_every": 2, "log_every": 1},
    "finetune": {"steps": 4, "batch_size": 2, "crop": 32, "checkpoint_every": 2, "log_every": 1},
}


def _smooth_rgb(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A colourful smooth image (gradients + a blob), uint8 (h, w, 3)."""
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    c = rng.uniform(0, 1, (3, 3))
    img = np.stack([c[i, 0] * xx + c[i, 1] * yy + c[i, 2] * np.exp(-((xx - .5) ** 2 + (yy - .5) ** 2) * 8)
                    for i in range(3)], -1)
    return (img / img.max() * 255).astype(np.uint8)


def write_project(root, params=PARAMS, grey=("0", "1", "0", "0")):
    """A fake project: params.yaml, 3 natural photos of different sizes, 4 tiles and a train split."""
    rng = np.random.default_rng(0)
    nat = root / "data" / "natural"
    nat.mkdir(parents=True)
    with open(nat / "manifest.jsonl", "w") as f:
        for i, (h, w) in enumerate([(40, 48), (56, 36), (32, 32)]):
            Image.fromarray(_smooth_rgb(rng, h, w)).save(nat / f"p{i}.png")
            f.write(json.dumps({"id": f"p{i}", "file": f"p{i}.png"}) + "\n")
    tiles, split = root / "data" / "tiles", root / "data" / "split"
    tiles.mkdir(parents=True)
    split.mkdir(parents=True)
    rows = []
    for i, g in enumerate(grey):
        img = _smooth_rgb(rng, 32, 32)
        if g == "1":
            img = np.repeat(img.mean(-1, keepdims=True).astype(np.uint8), 3, -1)
        Image.fromarray(img).save(tiles / f"t{i}.png")
        rows.append({"tile_id": f"t{i}", "image_id": f"im{i // 2}", "x": 0, "y": 0, "size": 32,
                     "content": 0.5, "grey": g})
    with open(split / "train.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    pack_project(root)
    return root


@pytest.fixture
def project(tmp_path, monkeypatch):
    root = write_project(tmp_path / "proj")
    monkeypatch.chdir(root)
    monkeypatch.setenv("ASTROGAN_PARAMS", str(root / "params.yaml"))
    return root


def _read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _crash_after(monkeypatch, fn_name: str, calls: int):
    """Make pipeline.train.<fn_name> raise on its (calls + 1)-th call: a crash mid-run."""
    real, count = getattr(train_mod, fn_name), {"n": 0}

    def wrapped(*args, **kwargs):
        count["n"] += 1
        if count["n"] > calls:
            raise KeyboardInterrupt("simulated crash")
        return real(*args, **kwargs)

    monkeypatch.setattr(train_mod, fn_name, wrapped)


def _fixed_batch(space="lab", n=2, size=32):
    g = torch.Generator().manual_seed(0)
    imgs = torch.from_numpy(np.stack([_smooth_rgb(np.random.default_rng(i), 48, 48) for i in range(3)]))
    rgb = random_crops(imgs.permute(0, 3, 1, 2).contiguous(), n, size, g)
    return colorizer.make_pair(rgb, space)


# --- steps ------------------------------------------------------------------------------------------

def test_l1_steps_lower_the_loss():
    torch.manual_seed(0)
    G = ResNet18UNet()
    x, y = _fixed_batch()
    opt = torch.optim.Adam(G.parameters(), lr=1e-3, betas=(0.5, 0.999))
    auto = train_mod.autocast_for(torch.device("cpu"), "auto")
    losses = [train_mod.l1_step(G, opt, x, y, auto)["loss_g_l1"] for _ in range(8)]
    assert losses[-1] < 0.7 * losses[0], losses


@pytest.mark.parametrize("kind", ["vanilla", "lsgan"])
def test_gan_step_returns_finite_detached_scalars(kind):
    torch.manual_seed(0)
    G, D = ResNet18UNet(), PatchGAN(in_channels=3, ndf=8)
    x, y = _fixed_batch()
    opt_g, opt_d = (torch.optim.Adam(m.parameters(), lr=2e-4, betas=(0.5, 0.999)) for m in (G, D))
    for _ in range(2):
        out = train_mod.gan_step(G, D, opt_g, opt_d, x, y, l1_weight=100,
                                 criterion=train_mod.gan_losses(kind),
                                 autocast=train_mod.autocast_for(torch.device("cpu"), "fp32"))
    assert set(out) == {"loss_d", "loss_d_real", "loss_d_fake", "loss_g_gan", "loss_g_l1"}
    assert all(v.ndim == 0 and not v.requires_grad and math.isfinite(v) for v in out.values())
    out = {k: v.item() for k, v in out.items()}
    assert out["loss_d"] == pytest.approx((out["loss_d_real"] + out["loss_d_fake"]) / 2, rel=1e-5)


def test_gan_step_updates_d_then_g_with_d_frozen():
    torch.manual_seed(0)
    G, D = ResNet18UNet(), PatchGAN(in_channels=3, ndf=8)
    x, y = _fixed_batch()
    opt_g, opt_d = (torch.optim.Adam(m.parameters(), lr=2e-4, betas=(0.5, 0.999)) for m in (G, D))
    snap = lambda m: [p.detach().clone() for p in m.parameters()]  # noqa: E731
    same = lambda m, s: all(torch.equal(p, q) for p, q in zip(m.parameters(), s, strict=True))  # noqa: E731
    g0, d0, seen = snap(G), snap(D), {}
    real_d_step, real_g_step = opt_d.step, opt_g.step

    def d_step(*a, **k):
        real_d_step(*a, **k)
        seen["G unchanged by D step"] = same(G, g0)
        seen["D changed by D step"] = not same(D, d0)
        seen["d_after"], seen["d_grads"] = snap(D), [p.grad.clone() for p in D.parameters()]

    def g_step(*a, **k):
        seen["D frozen during G step"] = not any(p.requires_grad for p in D.parameters())
        seen["G loss left D's grads alone"] = all(
            torch.equal(p.grad, q) for p, q in zip(D.parameters(), seen["d_grads"], strict=True))
        real_g_step(*a, **k)

    opt_d.step, opt_g.step = d_step, g_step
    train_mod.gan_step(G, D, opt_g, opt_d, x, y, l1_weight=100, criterion=train_mod.gan_losses("vanilla"),
                       autocast=train_mod.autocast_for(torch.device("cpu"), "fp32"))
    assert all(seen[k] for k in ("G unchanged by D step", "D changed by D step", "D frozen during G step",
                                 "G loss left D's grads alone")), seen
    assert same(D, seen["d_after"]) and not same(G, g0)
    assert all(p.requires_grad for p in D.parameters())  # unfrozen for the next step


def test_config_and_loss_validation():
    cfg = train_mod.TrainConfig.from_params(PARAMS, "pretrain")
    assert cfg.betas == (0.5, 0.999) and cfg.crop == 32 and cfg.lr == 2e-4
    bad = copy.deepcopy(PARAMS)
    bad["train"]["precision"] = "fp8"
    with pytest.raises(AstroganError, match="train.precision"):
        train_mod.TrainConfig.from_params(bad, "finetune")
    with pytest.raises(AstroganError, match="train.gan_loss='wgan'"):
        train_mod.gan_losses("wgan")
    with pytest.raises(AstroganError, match="known: tiny, tiny_rgb"):
        train_mod.zoo_entry(PARAMS, "nope")


# --- random crops -----------------------------------------------------------------------------------

def test_random_crops_tensor_and_list_with_per_sample_flips():
    ramp = torch.arange(32, dtype=torch.uint8).view(1, 1, 1, 32).expand(1, 3, 32, 32).contiguous()
    g = torch.Generator().manual_seed(0)
    b = random_crops(ramp, 64, 32, g)
    assert b.shape == (64, 3, 32, 32) and b.dtype == torch.float32 and 0 <= b.min() and b.max() <= 1
    increasing = b[:, 0, 0, 1] > b[:, 0, 0, 0]
    assert 0 < int(increasing.sum()) < 64  # some samples flipped left-right, some not, in one batch
    again = random_crops(ramp, 64, 32, torch.Generator().manual_seed(0))
    assert torch.equal(b, again)

    imgs = [torch.randint(0, 256, (3, h, w), dtype=torch.uint8) for h, w in [(40, 48), (33, 70)]]
    lb = random_crops(imgs, 16, 32, torch.Generator().manual_seed(1))
    assert lb.shape == (16, 3, 32, 32)
    # each crop is a (possibly flipped) window of one of the images
    for crop in lb:
        c = (crop * 255).round().to(torch.uint8)
        variants = [c, c.flip(-1), c.flip(-2), c.flip(-1).flip(-2)]
        found = any((im.unfold(1, 32, 1).unfold(2, 32, 1) == v[:, None, None]).all(0).all(-1).all(-1).any()
                    for im in imgs for v in variants)
        assert found
    with pytest.raises(ValueError, match="smaller than the 64 px crop"):
        random_crops(imgs, 2, 64, torch.Generator().manual_seed(0))


# --- stages on a fake project -----------------------------------------------------------------------

def test_pretrain_stage_writes_model_card_and_log(project, monkeypatch, capsys):
    params = copy.deepcopy(PARAMS)
    params["model"]["encoder_weights"] = "imagenet"
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.setenv("TORCH_HOME", str(project / "torch"))
    monkeypatch.setattr(torch.hub, "download_url_to_file",
                        lambda *a, **k: (_ for _ in ()).throw(urllib.error.URLError("offline (test)")))
    pretrain.main([NAME])
    assert "encoder weights: imagenet unavailable (URLError" in capsys.readouterr().out
    out = project / "models" / "colorize" / NAME
    G, meta = load_generator(out / "pretrained.pt")
    card = json.loads((out / "pretrained.card.json").read_text())
    assert meta["card"] == card and meta["step"] == 4 and meta["color_space"] == "lab"
    assert card["encoder_weights"]["requested"] == "imagenet" and card["encoder_weights"]["used"] == "random"
    assert "offline (test)" in card["encoder_weights"]["reason"]
    assert card["data"]["photos"] == 3 and len(card["data"]["manifest_sha256"]) == 64
    assert card["params"]["pretrain"]["steps"] == 4
    assert card["params"]["colorize.zoo.tiny"]["color_space"] == "lab"
    assert set(card["final_losses"]) == {"loss_g_l1"} and "wall_time_s" not in card and card["torch"]
    rows = _read_csv(project / "metrics" / "plots" / "pretrain" / f"{NAME}.csv")
    assert list(rows[0]) == ["step", "loss_g_l1"] and [r["step"] for r in rows] == ["1", "2", "3", "4"]
    assert not (project / ".resume" / "colorize" / NAME / "pretrain.pt").exists()
    assert G(torch.zeros(1, 1, 32, 32)).shape == (1, 2, 32, 32)


def test_stage_errors_are_one_clear_line(project):
    with pytest.raises(AstroganError, match="'nope' is not in params.yaml colorize.zoo"):
        pretrain.main(["nope"])
    with pytest.raises(AstroganError, match="pretrained.pt: model checkpoint not found"):
        finetune.main([NAME])
    (project / "data" / "natural" / "manifest.jsonl").unlink()
    with pytest.raises(AstroganError, match="manifest.jsonl: missing; run `dvc repro natural`"):
        pretrain.main([NAME])


def test_finetune_refuses_an_all_grey_split(tmp_path, monkeypatch):
    root = write_project(tmp_path / "grey", grey=("1", "1", "1", "1"))
    monkeypatch.chdir(root)
    monkeypatch.setenv("ASTROGAN_PARAMS", str(root / "params.yaml"))
    with pytest.raises(AstroganError, match="none of its 4 train tiles has colour"):
        finetune.main([NAME])


def _state(path):
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def _assert_same_weights(a, b):
    sa, sb = _state(a), _state(b)
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


@pytest.fixture
def two_projects(tmp_path, monkeypatch):
    """Two identical fake projects (the second to crash and resume); ASTROGAN_PARAMS set by `use`."""
    a, b = write_project(tmp_path / "a"), write_project(tmp_path / "b")

    def use(root):
        monkeypatch.chdir(root)
        monkeypatch.setenv("ASTROGAN_PARAMS", str(root / "params.yaml"))

    return a, b, use


def test_pretrain_resume_after_crash_equals_uninterrupted(two_projects, monkeypatch, capsys):
    a, b, use = two_projects
    use(a)
    pretrain.main([NAME])
    use(b)
    with monkeypatch.context() as m:
        _crash_after(m, "l1_step", 3)  # checkpoint at step 2, crash during step 4
        with pytest.raises(KeyboardInterrupt):
            pretrain.main([NAME])
    assert (b / ".resume" / "colorize" / NAME / "pretrain.pt").is_file()
    assert [r["step"] for r in _read_csv(b / "metrics/plots/pretrain/tiny.csv")] == ["1", "2", "3"]
    capsys.readouterr()
    pretrain.main([NAME])
    assert f"resuming {NAME} pretrain from step 2" in capsys.readouterr().out
    _assert_same_weights(a / "models/colorize/tiny/pretrained.pt", b / "models/colorize/tiny/pretrained.pt")
    ra, rb = (_read_csv(p / "metrics/plots/pretrain/tiny.csv") for p in (a, b))
    assert [r["step"] for r in rb] == ["1", "2", "3", "4"] and ra == rb


def test_resume_is_refused_when_params_change(project, monkeypatch, capsys):
    with monkeypatch.context() as m:
        _crash_after(m, "l1_step", 3)
        with pytest.raises(KeyboardInterrupt):
            pretrain.main([NAME])
    params = copy.deepcopy(PARAMS)
    params["lr"] = 0.001
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    capsys.readouterr()
    pretrain.main([NAME])
    out = capsys.readouterr().out
    assert "params or data changed since it was written" in out and "resuming" not in out
    assert [r["step"] for r in _read_csv(project / "metrics/plots/pretrain/tiny.csv")] == ["1", "2", "3", "4"]


def test_finetune_resume_after_crash_equals_uninterrupted(two_projects, monkeypatch, capsys):
    a, b, use = two_projects
    use(a)
    pretrain.main([NAME])
    shutil.copytree(a / "models", b / "models")
    finetune.main([NAME])
    use(b)
    with monkeypatch.context() as m:
        _crash_after(m, "gan_step", 3)
        with pytest.raises(KeyboardInterrupt):
            finetune.main([NAME])
    capsys.readouterr()
    finetune.main([NAME])
    assert f"resuming {NAME} finetune from step 2" in capsys.readouterr().out
    _assert_same_weights(a / "models/colorize/tiny/finetuned.pt", b / "models/colorize/tiny/finetuned.pt")
    ra, rb = (_read_csv(p / "metrics/plots/finetune/tiny.csv") for p in (a, b))
    assert list(rb[0]) == ["step", "loss_g_gan", "loss_g_l1", "loss_d", "loss_d_real", "loss_d_fake"]
    assert [r["step"] for r in rb] == ["1", "2", "3", "4"] and ra == rb
    card = json.loads((b / "models/colorize/tiny/finetuned.card.json").read_text())
    assert card["data"]["tiles"] == 3 and card["data"]["grey_skipped"] == 1
    assert card["discriminator"] == {"arch": "patchgan", "kwargs": {"in_channels": 3}}
    assert card["gan_loss"] == "vanilla" and card["encoder_weights"]["requested"] == "none"
    assert not (b / ".resume" / "colorize" / NAME / "finetune.pt").exists()


def test_rgb_model_trains_through_both_phases(project):
    pretrain.main(["tiny_rgb"])
    finetune.main(["tiny_rgb"])
    G, meta = load_generator(project / "models/colorize/tiny_rgb/finetuned.pt")
    assert meta["color_space"] == "rgb" and G(torch.zeros(1, 1, 32, 32)).shape == (1, 3, 32, 32)


def test_time_limit_stops_at_a_log_row_and_the_card_says_so(project, capsys):
    params = copy.deepcopy(PARAMS)
    params["pretrain"].update(steps=50, log_every=2, time_limit_s=1e-6)
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    pretrain.main([NAME])
    assert "time limit 1e-06 s reached at step 2 of 50" in capsys.readouterr().out
    G, meta = load_generator(project / "models" / "colorize" / NAME / "pretrained.pt")
    card = meta["card"]
    assert meta["step"] == 2 and card["steps_run"] == 2 and card["steps"] == 50
    assert card["time_limited"] is True and card["time_limit_s"] == 1e-6
    rows = _read_csv(project / "metrics" / "plots" / "pretrain" / f"{NAME}.csv")
    assert [r["step"] for r in rows] == ["2"]
    params["pretrain"]["time_limit_s"] = -1
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    with pytest.raises(AstroganError, match="pretrain.time_limit_s must be >= 0"):
        pretrain.main([NAME])
