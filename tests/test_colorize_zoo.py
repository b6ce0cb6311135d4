"""The paper's colorization study: every generator/discriminator pair trains, WGAN-GP's penalty,
validation with early stopping and the best checkpoint, per-entry overrides, the ResNet-50 notice."""

import copy
import csv
import json
import math
import shutil

import pytest
import torch
import yaml
from torch import nn

from pipeline import colorizer
from pipeline import train as train_mod
from pipeline.errors import AstroganError
from pipeline.models import discriminator_class, generator_class, load_generator, out_channels
from pipeline.models.resnet_patch import ResNet50Patch
from pipeline.models.unet import UNet
from pipeline.models.vgg_discriminator import VGGResidualDiscriminator
from pipeline.stages import finetune, pretrain
from tests.conftest import pack_project
from tests.test_train import PARAMS, _crash_after, _fixed_batch, _read_csv, write_project

RESNET50_FILE = "resnet50-11ad3fa6.pth"  # the name torchvision's ResNet50 IMAGENET1K_V2 caches under
CPU_FP32 = train_mod.autocast_for(torch.device("cpu"), "fp32")


# --- models -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("space", ["rgb", "lab"])
def test_unet_shapes_range_and_multiple(space):
    torch.manual_seed(0)
    G = generator_class("unet")(out_channels=out_channels(space), num_feat=8, depth=5).eval()
    assert isinstance(G, UNet) and G.input_multiple == 32
    out = G(torch.rand(2, 1, 64, 32) * 2 - 1)
    assert out.shape == (2, out_channels(space), 64, 32) and out.abs().max() <= 1
    with pytest.raises(ValueError, match="divisible by 32"):
        G(torch.zeros(1, 1, 48, 48))
    widths = [next(m for m in level if isinstance(m, nn.Conv2d)).out_channels for level in G.down]
    assert widths == [8, 16, 32, 64, 64]  # num_feat * min(2**k, 8)
    assert UNet(encoder_weights="imagenet").encoder_weights_used == "random"


def test_vgg_residual_discriminator_grid_and_residual_stages():
    D = discriminator_class("vgg_residual")(in_channels=4, num_feat=8)
    assert isinstance(D, VGGResidualDiscriminator) and D.weights_used == "random"
    assert D(torch.zeros(2, 4, 64, 96)).shape == (2, 1, 4, 6)  # 1/16
    assert [s.down[0].out_channels for s in D.stages] == [8, 16, 32, 64]  # VGG16's 64-128-256-512 / 8
    assert [len([m for m in s.body if isinstance(m, nn.Conv2d)]) for s in D.stages] == [1, 1, 2, 2]
    assert not any(isinstance(m, nn.BatchNorm2d) for m in VGGResidualDiscriminator(
        in_channels=4, num_feat=8, norm="instance").modules())
    with pytest.raises(ValueError, match="input channels"):
        D(torch.zeros(1, 3, 32, 32))


def test_resnet50_patch_grid_without_head():
    D = discriminator_class("resnet50_patch")(in_channels=3, weights=None)
    assert isinstance(D, ResNet50Patch) and D.weights_used == "random" and D.weights_reason == "not requested"
    assert D(torch.zeros(1, 3, 64, 96)).shape == (1, 1, 2, 3)  # 1/32
    cut = ResNet50Patch(in_channels=3, weights=None, cut_layer4=True)
    assert cut(torch.zeros(1, 3, 64, 96)).shape == (1, 1, 4, 6)  # 1/16
    assert not any(isinstance(m, nn.Linear | nn.AdaptiveAvgPool2d) for m in D.modules())


def test_resnet50_imagenet_unavailable_falls_back_with_one_line(offline_hub, capsys):
    D = ResNet50Patch(in_channels=3)
    assert capsys.readouterr().out.splitlines() == [
        "discriminator weights: imagenet unavailable (URLError: <urlopen error offline (test)>); "
        "using random init"]
    assert D.weights_used == "random" and "offline (test)" in D.weights_reason


def test_resnet50_imagenet_weights_come_from_the_hub_cache(offline_hub, capsys):
    from torchvision.models import resnet50

    torch.manual_seed(1)
    reference = resnet50(weights=None).state_dict()
    offline_hub.mkdir(parents=True)
    torch.save(reference, offline_hub / RESNET50_FILE)
    D = ResNet50Patch(in_channels=4)
    assert capsys.readouterr().out == "" and D.weights_used == "imagenet"
    w = reference["conv1.weight"]
    assert torch.allclose(D.features[0].weight, w.sum(1, keepdim=True).repeat(1, 4, 1, 1) / 4)
    assert torch.equal(D.features[6][0].conv1.weight, reference["layer3.0.conv1.weight"])


# --- every pair trains ------------------------------------------------------------------------------

PAIRS = [  # (generator, kwargs, colour space, discriminator, kwargs, gan loss)
    ("unet", {"num_feat": 8, "depth": 5}, "rgb", "vgg_residual", {"num_feat": 8}, "vanilla"),
    ("resnet18_unet", {}, "lab", "resnet50_patch", {"weights": None, "cut_layer4": True}, "vanilla"),
    ("resnet18_unet", {}, "rgb", "patchgan", {"ndf": 8, "norm": "instance"}, "wgan-gp"),
]


@pytest.mark.parametrize(("g_arch", "g_kwargs", "space", "d_arch", "d_kwargs", "gan_loss"), PAIRS,
                         ids=[f"{p[0]}+{p[3]}+{p[5]}" for p in PAIRS])
def test_each_pair_trains_on_a_fixed_batch(g_arch, g_kwargs, space, d_arch, d_kwargs, gan_loss):
    torch.manual_seed(0)
    G = generator_class(g_arch)(out_channels=out_channels(space), **g_kwargs)
    D = discriminator_class(d_arch)(in_channels=1 + out_channels(space), **d_kwargs)
    x, y = _fixed_batch(space)
    opt_g = torch.optim.Adam(G.parameters(), lr=1e-3, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(D.parameters(), lr=2e-4, betas=(0.5, 0.999))
    crit, gen = train_mod.gan_losses(gan_loss, 10.0), torch.Generator().manual_seed(0)
    rows = [train_mod.gan_step(G, D, opt_g, opt_d, x, y, l1_weight=100, criterion=crit, autocast=CPU_FP32,
                               generator=gen) for _ in range(10)]
    assert all(math.isfinite(v) for r in rows for v in r.values())
    assert rows[-1]["loss_g_l1"] < 0.9 * rows[0]["loss_g_l1"], [r["loss_g_l1"] for r in rows]
    G.eval()
    with torch.no_grad():
        out, logits = G(x), D(torch.cat([x, G(x)], 1))
    assert out.shape == y.shape and out.abs().max() <= 1 and logits.shape[:2] == (2, 1)
    rgb = colorizer.to_rgb(x, out, space)
    assert rgb.shape == (2, 3, 32, 32) and 0 <= rgb.min() and rgb.max() <= 1


# --- WGAN-GP ----------------------------------------------------------------------------------------

def test_gradient_penalty_on_a_linear_critic_is_hand_computable():
    torch.manual_seed(0)
    critic = nn.Conv2d(3, 1, 4, bias=False)  # (N, 3, 4, 4) -> (N, 1, 1, 1): D(z) = <w, z>
    real, fake, eps = torch.randn(5, 3, 4, 4), torch.randn(5, 3, 4, 4), torch.rand(5, 1, 1, 1)
    gp = train_mod.gradient_penalty(critic, real, fake, eps)
    norm = critic.weight.detach().flatten().norm()  # grad of <w, z> is w at every z
    assert gp.item() == pytest.approx(((norm - 1) ** 2).item(), rel=1e-5)
    gp.backward()  # it trains the critic (create_graph)
    assert critic.weight.grad is not None and critic.weight.grad.abs().sum() > 0
    with torch.no_grad():
        critic.weight.mul_(1 / norm)
    assert train_mod.gradient_penalty(critic, real, fake, eps).item() == pytest.approx(0, abs=1e-10)


def test_wgan_gp_losses_are_critic_differences_plus_penalty():
    crit = train_mod.gan_losses("wgan-gp", 7.0)
    logits = torch.tensor([[1.0, 3.0]])
    assert crit.gp_weight == 7.0
    assert crit(logits, torch.ones_like(logits)).item() == -2.0
    assert crit(logits, torch.zeros_like(logits)).item() == 2.0
    torch.manual_seed(0)
    G = generator_class("resnet18_unet")()
    D = discriminator_class("patchgan")(in_channels=3, ndf=8, norm="none")
    x, y = _fixed_batch()
    opt_g, opt_d = (torch.optim.SGD(m.parameters(), lr=0.0) for m in (G, D))  # lr 0: D is the same after
    out = train_mod.gan_step(G, D, opt_g, opt_d, x, y, l1_weight=100, criterion=crit, autocast=CPU_FP32,
                             generator=torch.Generator().manual_seed(3))
    out = {k: v.item() for k, v in out.items()}
    eps = torch.rand(2, 1, 1, 1, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        fake = G(x)
    gp = train_mod.gradient_penalty(D, torch.cat([x, y], 1), torch.cat([x, fake], 1), eps).item()
    assert out["loss_d_real"] == pytest.approx(-D(torch.cat([x, y], 1)).mean().item(), rel=1e-4)
    assert out["loss_d_fake"] == pytest.approx(D(torch.cat([x, fake], 1)).mean().item(), rel=1e-4)
    assert out["loss_d"] == pytest.approx(out["loss_d_real"] + out["loss_d_fake"] + 7.0 * gp, rel=1e-4)
    assert out["loss_g_gan"] == pytest.approx(-out["loss_d_fake"], rel=1e-4)


# --- config -----------------------------------------------------------------------------------------

def test_entry_overrides_and_epochs():
    params = copy.deepcopy(PARAMS)
    params["finetune"] |= {"epochs": 3, "eval_every": 2, "patience": 4}
    entry = {"gan_loss": "wgan-gp", "finetune": {"steps": 9, "crop": 16}}
    cfg = train_mod.TrainConfig.from_params(params, "finetune", entry)
    assert (cfg.gan_loss, cfg.steps, cfg.crop, cfg.batch_size, cfg.gp_weight) == ("wgan-gp", 9, 16, 2, 10.0)
    assert (cfg.eval_every, cfg.patience, cfg.epochs) == (2, 4, 3)
    assert cfg.with_epochs(5).steps == 3 * 3  # ceil(5 / 2) steps per epoch
    assert train_mod.TrainConfig.from_params(PARAMS, "finetune").with_epochs(5).steps == 4  # epochs 0
    params["finetune"]["patience"] = -1
    with pytest.raises(AstroganError, match="finetune.patience must be >= 0"):
        train_mod.TrainConfig.from_params(params, "finetune")


# --- validation, early stopping, best checkpoint ----------------------------------------------------

def test_validate_keeps_the_best_and_stops_after_patience():
    G = nn.Linear(1, 1, bias=False)
    best = {"val_l1": None, "step": None, "state": None, "bad": 0, "rows": [], "stopped_early": False}
    stops = []
    for step, v in zip([10, 20, 30, 40, 50], [0.5, 0.3, 0.4, 0.3, 0.6], strict=True):
        with torch.no_grad():
            G.weight.fill_(step)
        stops.append(train_mod._validate(best, step, v, G, patience=3))
    assert stops == [False, False, False, False, True] and best["stopped_early"]
    assert best["step"] == 20 and best["val_l1"] == 0.3 and best["state"]["weight"].item() == 20  # ties lose
    assert [r["step"] for r in best["rows"]] == [10, 20, 30, 40, 50]


def val_project(root, params):
    """test_train's fake project, plus a val split of two colour tiles."""
    write_project(root, params)
    with open(root / "data/split/train.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    with open(root / "data/split/val.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows([rows[0], rows[2]])
    pack_project(root)
    return root


def _use(root, monkeypatch):
    monkeypatch.chdir(root)
    monkeypatch.setenv("ASTROGAN_PARAMS", str(root / "params.yaml"))


def _state(path):
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def _with(params, **finetune):
    out = copy.deepcopy(params)
    out["finetune"] |= finetune
    return out


def test_early_stop_keeps_the_best_step(tmp_path, monkeypatch, capsys):
    """Crafted val L1s 0.5, 0.3, 0.4, 0.6 with patience 2: stop at step 4, finetuned.pt = step 2."""
    ref = val_project(tmp_path / "ref", _with(PARAMS, steps=2, eval_every=0))
    _use(ref, monkeypatch)
    pretrain.main(["tiny"])
    finetune.main(["tiny"])
    run = val_project(tmp_path / "run", _with(PARAMS, steps=8, eval_every=1, patience=2))
    shutil.copytree(ref / "models", run / "models", dirs_exist_ok=True)
    _use(run, monkeypatch)
    vals = iter([0.5, 0.3, 0.4, 0.6, 0.1, 0.1, 0.1, 0.1])
    monkeypatch.setattr(train_mod, "val_l1", lambda *a, **k: next(vals))
    finetune.main(["tiny"])
    assert "early stop at step 4" in capsys.readouterr().out
    out = run / "models/colorize/tiny/finetuned.pt"
    for k, v in _state(ref / "models/colorize/tiny/finetuned.pt").items():
        assert torch.equal(_state(out)[k], v), k
    card = json.loads(out.with_suffix(".card.json").read_text())
    assert card["steps"] == 8 and card["steps_run"] == 4
    assert card["validation"] | {} == {"best_step": 2, "best_val_l1": 0.3, "stopped_early": True,
                                       "evaluations": 4, "eval_every": 1, "patience": 2}
    assert load_generator(out)[1]["step"] == 2 and card["data"]["val"]["tiles"] == 2
    assert _read_csv(run / "metrics/plots/val/tiny.csv") == [
        {"step": str(s), "val_l1": str(v)} for s, v in [(1, 0.5), (2, 0.3), (3, 0.4), (4, 0.6)]]
    assert [r["step"] for r in _read_csv(run / "metrics/plots/finetune/tiny.csv")] == ["1", "2", "3", "4"]


def test_validated_finetune_resumes_bit_for_bit(tmp_path, monkeypatch, capsys):
    params = _with(PARAMS, eval_every=1, patience=0)
    a, b = val_project(tmp_path / "a", params), val_project(tmp_path / "b", params)
    _use(a, monkeypatch)
    pretrain.main(["tiny"])
    shutil.copytree(a / "models", b / "models", dirs_exist_ok=True)
    finetune.main(["tiny"])
    _use(b, monkeypatch)
    with monkeypatch.context() as m:
        _crash_after(m, "gan_step", 3)
        with pytest.raises(KeyboardInterrupt):
            finetune.main(["tiny"])
    capsys.readouterr()
    finetune.main(["tiny"])
    assert "resuming tiny finetune from step 2" in capsys.readouterr().out
    sa, sb = (_state(p / "models/colorize/tiny/finetuned.pt") for p in (a, b))
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    va, vb = (_read_csv(p / "metrics/plots/val/tiny.csv") for p in (a, b))
    assert va == vb and [r["step"] for r in va] == ["1", "2", "3", "4"]
    card = json.loads((b / "models/colorize/tiny/finetuned.card.json").read_text())
    best = min(va, key=lambda r: float(r["val_l1"]))
    assert card["validation"]["best_step"] == int(best["step"]) and not card["validation"]["stopped_early"]


def test_unet_entry_with_vgg_discriminator_and_wgan_through_both_stages(tmp_path, monkeypatch):
    params = copy.deepcopy(PARAMS)
    params["colorize"]["zoo"]["tiny_unet"] = {
        "generator": "unet", "generator_kwargs": {"num_feat": 8, "depth": 5}, "color_space": "rgb",
        "discriminator": "vgg_residual", "discriminator_kwargs": {"num_feat": 8, "norm": "none"},
        "gan_loss": "wgan-gp", "pretrain": {"steps": 2}}
    root = val_project(tmp_path / "p", params)
    _use(root, monkeypatch)
    pretrain.main(["tiny_unet"])
    finetune.main(["tiny_unet"])
    pre = json.loads((root / "models/colorize/tiny_unet/pretrained.card.json").read_text())
    assert pre["steps"] == 2 and pre["arch_kwargs"]["depth"] == 5
    assert pre["encoder_weights"]["used"] == "random"
    card = json.loads((root / "models/colorize/tiny_unet/finetuned.card.json").read_text())
    assert card["gan_loss"] == "wgan-gp" and card["gp_weight"] == 10.0 and card["steps_run"] == 4
    assert card["discriminator"]["kwargs"] == {"in_channels": 4, "num_feat": 8, "norm": "none"}
    assert card["discriminator"]["weights"]["used"] == "random"
    assert "validation" not in card  # eval_every 0 in these params
    G, meta = load_generator(root / "models/colorize/tiny_unet/finetuned.pt")
    assert meta["arch"] == "unet" and G(torch.zeros(1, 1, 32, 32)).shape == (1, 3, 32, 32)
    assert yaml.safe_load((root / "params.yaml").read_text())["colorize"]["zoo"]["tiny_unet"]


def test_time_limit_before_the_first_evaluation_still_chooses_a_checkpoint(tmp_path, monkeypatch, capsys):
    """Stopped by finetune.time_limit_s at step 2, before its first val evaluation (every 5 steps):
    that step is scored, so finetuned.pt and its validation record exist."""
    run = val_project(tmp_path / "run", _with(PARAMS, steps=20, eval_every=5, log_every=2, time_limit_s=1e-6))
    _use(run, monkeypatch)
    pretrain.main(["tiny"])
    finetune.main(["tiny"])
    assert "time limit 1e-06 s reached at step 2 of 20" in capsys.readouterr().out
    out = run / "models/colorize/tiny/finetuned.pt"
    card = json.loads(out.with_suffix(".card.json").read_text())
    assert card["steps_run"] == 2 and card["time_limited"] is True
    assert card["validation"]["best_step"] == 2 and card["validation"]["evaluations"] == 1
    assert load_generator(out)[1]["step"] == 2
    assert [r["step"] for r in _read_csv(run / "metrics/plots/val/tiny.csv")] == ["2"]
