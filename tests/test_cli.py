"""``astrogan`` driven as a user drives it: real images, a real generator, every kind of bad input.

The colorize tests run the command in a subprocess on a throw-away project holding a real
ResNet18UNet checkpoint (random weights, the head scaled x10 so that the colour it predicts depends
visibly on context, which is what makes tile seams possible) and a metrics file naming it. Until
the super-resolution models land, ``upscale`` runs in-process with a tiny 4x generator registered
in the model zoo by monkeypatching. Every test runs with ``ASTROGAN_WEIGHTS`` pointing at an empty
folder, so the repository's release weights (weights/, tested in test_weights.py) never stand in for
the project's models: no --model means the best model in the project's metrics/, as before releases.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image
from skimage import color as skcolor
from skimage import data as skdata
from torch import nn

from pipeline import cli
from pipeline.fsio import sha256_file
from pipeline.imageio import read_meta
from pipeline.models import save_generator
from pipeline.models.resnet_unet import ResNet18UNet
from pipeline.tiling import tile_starts

ROOT = Path(__file__).resolve().parents[1]
ASTROPY_DATA = Path(__import__("astropy").__file__).parent / "io/fits"
M13 = ASTROPY_DATA / "hdu/compressed/tests/data/m13.fits"
TABLE_FITS = ASTROPY_DATA / "tests/data/tb.fits"


def astrogan(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "pipeline", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


@pytest.fixture(autouse=True)
def no_release_weights(tmp_path_factory, monkeypatch) -> None:
    """An empty weights folder: subprocesses inherit it through the environment."""
    monkeypatch.setenv("ASTROGAN_WEIGHTS", str(tmp_path_factory.mktemp("no_weights")))


@pytest.fixture(scope="module")
def proj(tmp_path_factory) -> Path:
    """A project with one colorizer (models/colorize/tiny/finetuned.pt) scored in metrics/."""
    root = tmp_path_factory.mktemp("proj")
    torch.manual_seed(0)
    model = ResNet18UNet(out_channels=2).eval()
    with torch.no_grad():
        model.head[0].weight.mul_(10)
        model.head[0].bias.mul_(10)
    save_generator(root / "models/colorize/tiny/finetuned.pt", model, arch="resnet18_unet",
                   arch_kwargs={"out_channels": 2, "in_channels": 1}, color_space="lab", step=7,
                   card={"name": "tiny", "phase": "finetune"})
    (root / "metrics").mkdir()
    (root / "metrics/colorization.json").write_text(json.dumps(
        {"test_tiles": 3, "fid_reason": "few", "grey": {"ab_l1": 8.0},
         "tiny": {"finetuned": {"ab_l1": 9.5}}, "gone": {"finetuned": {"ab_l1": 1.0}}}))  # no .pt: skipped
    return root


def m13_crop(path: Path, size: int = 128) -> Path:
    """astropy's M13 FITS (real int16 data and header), cut to ``size`` px square to keep tests fast."""
    from astropy.io import fits

    with fits.open(M13) as hdul:
        fits.PrimaryHDU(hdul[0].data[:size, :size], hdul[0].header).writeto(path)
    return path


def save(path: Path, a: np.ndarray, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(a).save(path, **kw)
    return path


def test_colorize_a_batch_of_real_and_bad_inputs(proj, tmp_path):
    src = tmp_path / "in"
    hubble = skdata.hubble_deep_field()[300:420, 400:560]           # colour, 160x120
    grey = skdata.moon()[100:190, 200:300]                          # grey, 100x90
    save(src / "hubble.jpg", hubble, quality=95)
    save(src / "sub" / "moon.png", grey)
    tifffile.imwrite(src / "moon16.tif", grey.astype(np.uint16) * 257)
    m13_crop(src / "m13.fits")
    bad = {"empty.png": b"", "notes.png": b"not an image\n" * 10, "table.fits": TABLE_FITS.read_bytes(),
           "cut.jpg": (src / "hubble.jpg").read_bytes()[:2000]}
    for name, content in bad.items():
        (src / name).write_bytes(content)
    from astropy.io import fits
    fits.PrimaryHDU(np.zeros((0, 4), np.float32)).writeto(src / "zero.fits")
    save(src / "huge.png", np.zeros((300, 400), np.uint8))

    r = astrogan("colorize", "in", "missing.png", "-o", "out", "-r", "--tile", "64", "--overlap", "16",
                 "--max-pixels", "100000", "--project", str(proj), cwd=tmp_path)
    failed = ["empty.png", "notes.png", "table.fits", "cut.jpg", "zero.fits", "huge.png", "missing.png"]
    assert r.returncode == len(failed), r.stderr
    errors = [line for line in r.stderr.splitlines() if line.startswith("astrogan: ")]
    assert len(errors) == len(failed)
    for name, why in zip(failed, ["empty file", "not a recognised image", "no image HDU", "truncated",
                                  "zero size", "exceeds --max-pixels", "no such file"], strict=True):
        assert any(name in e and why in e for e in errors), (name, why, errors)
    assert "lowest ab_l1 9.5" in r.stderr and "does NOT beat the grey baseline" in r.stderr
    assert "hubble.jpg: colour input: converted to grey" in r.stderr

    out = tmp_path / "out"
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png")) == [
        "hubble.png", "m13.png", "moon16.png", "sub/moon.png"]
    expected = [("hubble.png", (120, 160, 3), np.uint8), ("sub/moon.png", (90, 100, 3), np.uint8),
                ("m13.png", (128, 128, 3), np.uint16), ("moon16.png", (90, 100, 3), np.uint16)]
    for name, shape, dtype in expected:
        a = np.asarray(Image.open(out / name)) if dtype == np.uint8 else None
        if a is None:  # Pillow reads 16-bit RGB PNG at 8 bits; check the header's bit depth instead
            with Image.open(out / name) as im:
                assert im.size == shape[1::-1] and im.info.get("astrogan")
            assert (out / name).read_bytes()[24] == 16, f"{name}: 16-bit PNG expected"
        else:
            assert a.shape == shape and a.dtype == dtype
    meta = read_meta(out / "m13.png")
    assert meta["input"]["stretch"] == "asinh" and meta["input"]["format"] == "FITS"
    assert meta["model_sha256"] == sha256_file(proj / "models/colorize/tiny/finetuned.pt")
    assert meta["source"].endswith("m13.fits") and meta["tile"] == 64
    # Colorizing keeps the input's lightness: L of the output is L of the grey input.
    rgb = np.asarray(Image.open(out / "sub/moon.png")) / 255.0
    L_out = skcolor.rgb2lab(rgb)[..., 0]
    L_in = skcolor.rgb2lab(np.repeat(grey[..., None] / 255.0, 3, 2))[..., 0]
    assert np.abs(L_out - L_in).max() < 1.0
    assert np.abs(skcolor.rgb2lab(rgb)[..., 1:]).mean() > 2, "the model's colour reaches the output"


def test_seams_are_invisible_on_a_smooth_input(proj, tmp_path):
    w = 256
    ramp = np.broadcast_to(np.linspace(40, 215, w), (64, w)).round().astype(np.uint8)
    save(tmp_path / "ramp.png", ramp)
    r = astrogan("colorize", "ramp.png", "-o", "blended.png", "--tile", "64", "--overlap", "16",
                 "--project", str(proj), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    code = cli.main(["colorize", str(tmp_path / "ramp.png"), "-o", str(tmp_path / "plain.png"),
                     "--tile", "64", "--overlap", "0", "--project", str(proj), "-q"])
    assert code == 0

    def seam(name: str, overlap: int) -> tuple[float, float]:
        a = np.asarray(Image.open(tmp_path / name)).astype(float)
        starts = tile_starts(w, 64, overlap)
        cuts = sorted(set(starts[1:]) | {s + 64 for s in starts[:-1]})
        d = np.abs(np.diff(a, axis=1))
        return d[:, [c - 1 for c in cuts]].max(), np.percentile(np.delete(d, [c - 1 for c in cuts], 1), 99)

    at, elsewhere = seam("blended.png", 16)
    assert at <= elsewhere + 1, f"step {at} at tile borders vs {elsewhere} elsewhere (8-bit levels)"
    at0, elsewhere0 = seam("plain.png", 0)
    assert at0 > elsewhere0 + 4, "without overlap this model's tiles disagree: the measure sees seams"


def test_an_output_that_is_an_input_is_refused(proj, tmp_path):
    a = save(tmp_path / "a.png", skdata.moon()[:64, :64])
    (tmp_path / "link.png").symlink_to(a)
    os.link(a, tmp_path / "hard.png")
    before = a.read_bytes()
    for out in ("a.png", "link.png", "hard.png"):
        assert cli.main(["colorize", str(a), "-o", str(tmp_path / out), "--project", str(proj), "-q"]) == 1
    assert a.read_bytes() == before
    # A folder into itself: every output would replace its input; a.png's and hard.png's are refused.
    save(tmp_path / "b.jpg", skdata.moon()[:48, :48])
    assert cli.main(["colorize", str(tmp_path), "-o", str(tmp_path), "--project", str(proj), "-q"]) == 3
    assert a.read_bytes() == before and (tmp_path / "b.png").is_file()


def test_outputs_keep_names_and_clashing_names_keep_their_suffix(proj, tmp_path):
    save(tmp_path / "in/x.png", skdata.moon()[:40, :40])
    save(tmp_path / "in/x.jpg", skdata.moon()[:40, :40])
    out = tmp_path / "out"
    assert cli.main(["colorize", str(tmp_path / "in"), "-o", str(out), "--format", "tiff",
                     "--project", str(proj), "-q"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["x.png.tif", "x.tif"]
    assert tifffile.imread(out / "x.tif").shape == (40, 40, 3)
    assert cli.main(["colorize", str(tmp_path / "in"), "-o", str(tmp_path / "one.png"),
                     "--project", str(proj), "-q"]) == 2, "one output file for two inputs is refused"


def test_tiling_flags_that_do_not_fit_are_refused(proj, tmp_path, capsys):
    a = str(save(tmp_path / "a.png", skdata.moon()[:32, :32]))
    args = ["colorize", a, "-o", str(tmp_path / "o"), "--project", str(proj)]
    assert cli.main([*args, "--tile", "64", "--overlap", "40"]) == 2
    assert "--overlap 40 must be between 0 and tile/2 (32)" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        cli.main([*args, "--percentiles", "99", "1"])
    assert e.value.code == 2
    assert not (tmp_path / "o").exists()


def test_no_trained_model_is_one_clear_line(tmp_path):
    save(tmp_path / "a.png", skdata.moon()[:32, :32])
    r = astrogan("colorize", "a.png", "-o", "out", cwd=tmp_path)
    assert r.returncode == cli.EXIT_NO_MODEL
    assert r.stderr.strip().count("\n") == 0 and "make repro" in r.stderr


def test_info_shows_card_checksum_step_and_metrics(proj, capsys):
    r = astrogan("info", "models/colorize/tiny", "--json", cwd=proj)
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["sha256"] == sha256_file(proj / "models/colorize/tiny/finetuned.pt")
    assert info["step"] == 7 and info["card"]["name"] == "tiny" and info["metrics"] == {"ab_l1": 9.5}
    assert cli.main(["info", str(proj / "models/colorize/tiny/finetuned.pt"), "--project", str(proj)]) == 0
    text = capsys.readouterr().out
    assert "sha256:   " + info["sha256"] in text and '"ab_l1": 9.5' in text


def test_console_script_is_installed():
    exe = Path(sys.executable).parent / "astrogan"
    if not exe.exists():
        pytest.skip("astrogan console script not installed (pip install -e .)")
    r = subprocess.run([str(exe), "--help"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "colorize" in r.stdout and "upscale" in r.stdout


class TinySR(nn.Module):
    """A 4x generator for tests: bicubic upsampling plus a learned 3x3-conv pixel-shuffle residual."""

    def __init__(self, *, num_feat: int = 8, encoder_weights=None):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, num_feat, 3, padding=1), nn.ReLU(),
                                  nn.Conv2d(num_feat, 48, 3, padding=1), nn.PixelShuffle(4))

    def forward(self, x):
        up = nn.functional.interpolate(x, scale_factor=4, mode="bicubic", align_corners=False)
        return up + 0.1 * self.body(x)


@pytest.fixture
def sr_proj(proj, tmp_path, monkeypatch) -> Path:
    """A project with two tiny SR models scored in metrics/superres.json, plus the colorizer."""
    from pipeline import models

    zoo = models._generators()
    monkeypatch.setattr(models, "_generators", lambda: {**zoo, "tiny_sr": TinySR})
    shutil.copytree(proj / "models", tmp_path / "models")
    shutil.copytree(proj / "metrics", tmp_path / "metrics")
    torch.manual_seed(0)
    for name in ("good", "worse"):
        save_generator(tmp_path / f"models/superres/{name}/finetuned.pt", TinySR(), arch="tiny_sr",
                       arch_kwargs={"num_feat": 8}, color_space="rgb", step=3,
                       card={"name": name, "task": "superres", "scale": 4})
    (tmp_path / "metrics/superres.json").write_text(json.dumps(
        {"test_tiles": 2, "fid_reason": "few", "bicubic": {"psnr_rgb": 25.0}, "nearest": {"psnr_rgb": 23.0},
         "good": {"finetuned": {"psnr_rgb": 27.5}}, "worse": {"finetuned": {"psnr_rgb": 26.0}}}))
    return tmp_path


def test_upscale_gives_4x_outputs_grey_stays_grey(sr_proj, capsys):
    grey = save(sr_proj / "in/moon.png", skdata.moon()[:50, :70])
    save(sr_proj / "in/hubble.jpg", skdata.hubble_deep_field()[:40, :60])
    m13_crop(sr_proj / "in/m13.fits", 40)
    out = sr_proj / "out"
    code = cli.main(["upscale", str(sr_proj / "in"), "-o", str(out), "--tile", "32", "--overlap", "8",
                     "--project", str(sr_proj)])
    assert code == 0
    assert "models/superres/good/finetuned.pt (highest psnr_rgb 27.5" in capsys.readouterr().err
    a = np.asarray(Image.open(out / "moon.png"))
    assert a.shape == (200, 280) and a.dtype == np.uint8
    assert np.asarray(Image.open(out / "hubble.png")).shape == (160, 240, 3)
    with Image.open(out / "m13.png") as im:
        assert im.size == (160, 160) and im.mode in ("I;16", "I;16B", "I")  # FITS -> 16-bit grey
    assert read_meta(out / "m13.png")["input"]["stretch"] == "asinh"
    # Tiles agree with one whole-image pass up to the conv border effects the window hides.
    assert cli.main(["upscale", str(grey), "-o", str(sr_proj / "whole.png"), "--tile", "128", "--overlap",
                     "0", "--project", str(sr_proj), "-q", "--bit-depth", "16"]) == 0
    whole = np.asarray(Image.open(sr_proj / "whole.png")).astype(float) / 257
    assert whole.shape == (200, 280)
    assert np.abs(whole - a).max() <= 2


def test_models_are_used_for_their_own_task_only(sr_proj, capsys):
    img = str(save(sr_proj / "a.png", skdata.moon()[:32, :32]))
    sr = str(sr_proj / "models/superres/good")
    assert cli.main(["colorize", img, "-o", str(sr_proj / "o"), "--model", sr]) == cli.EXIT_NO_MODEL
    assert "use `astrogan upscale`" in capsys.readouterr().err
    col = str(sr_proj / "models/colorize/tiny")
    assert cli.main(["upscale", img, "-o", str(sr_proj / "o"), "--model", col]) == cli.EXIT_NO_MODEL
    assert "use `astrogan colorize`" in capsys.readouterr().err


@pytest.mark.parametrize("arch", ["srresnet", "edsr", "wdsr", "rcan"])
def test_upscale_with_the_zoo_sr_architectures(arch, tmp_path):
    """The real SR generators, tiny widths: odd-sized tiles in, 4x out, through the whole command."""
    from pipeline.models import _generators

    zoo = _generators()
    if arch not in zoo:
        pytest.skip(f"{arch} is not in pipeline.models yet")
    torch.manual_seed(0)
    model = zoo[arch](num_feat=8, num_block=1).eval()
    ckpt = tmp_path / f"models/superres/{arch}/finetuned.pt"
    save_generator(ckpt, model, arch=arch, arch_kwargs={"num_feat": 8, "num_block": 1}, color_space="rgb",
                   step=1, card={"name": arch, "task": "superres", "scale": 4})
    save(tmp_path / "in.png", skdata.hubble_deep_field()[:37, :53])
    assert cli.main(["upscale", str(tmp_path / "in.png"), "-o", str(tmp_path / "out.png"),
                     "--model", str(ckpt), "--tile", "24", "--overlap", "6", "-q"]) == 0
    assert np.asarray(Image.open(tmp_path / "out.png")).shape == (148, 212, 3)


def test_colorize_strength_defaults_to_the_one_chosen_on_val(proj, tmp_path, capsys):
    """The evaluate stage records <name>.<phase>_val_strength; with no --strength the CLI uses it
    (here 0: the output is the grey input), and an explicit --strength wins."""
    project = tmp_path / "p"
    shutil.copytree(proj, project)
    metrics = json.loads((project / "metrics/colorization.json").read_text())
    metrics["tiny"]["finetuned_val_strength"] = {"strength": 0.0, "ab_l1": 7.5}
    (project / "metrics/colorization.json").write_text(json.dumps(metrics))
    src = save(tmp_path / "in.png", (skdata.astronaut()[:64, :64]))
    assert cli.main(["colorize", str(src), "-o", str(tmp_path / "a.png"), "--project", str(project)]) == 0
    err = capsys.readouterr().err
    assert "strength 0 (chosen on the val tiles" in err
    assert ("does NOT beat the grey baseline (a*b = 0) at 8; at its val-chosen strength 0: ab_l1 7.5, "
            "beats it") in err
    out = np.asarray(Image.open(tmp_path / "a.png")).astype(int)
    assert np.abs(out[..., 0] - out[..., 1]).max() <= 2 and np.abs(out[..., 1] - out[..., 2]).max() <= 2
    assert cli.main(["colorize", str(src), "-o", str(tmp_path / "b.png"), "--project", str(project),
                     "--strength", "1"]) == 0
    out = np.asarray(Image.open(tmp_path / "b.png")).astype(int)
    assert np.abs(out[..., 0] - out[..., 2]).max() > 10
