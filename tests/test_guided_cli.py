"""``astrogan colorize --hints / --reference`` as a user runs it, on an untrained guided model (which is
exactly its non-learned propagation, so the expected colours are known) and on bad inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import color as skcolor

from pipeline import cli, hints
from pipeline.imageio import read_meta
from pipeline.models import save_generator
from pipeline.models.guided_unet import GuidedUNet
from pipeline.models.resnet_unet import ResNet18UNet


@pytest.fixture(autouse=True)
def no_release_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("ASTROGAN_WEIGHTS", str(tmp_path / "no_weights"))


@pytest.fixture
def guided(tmp_path):
    path = tmp_path / "guided.pt"
    model = GuidedUNet(factor=1, decoder_channels=(8, 8, 8, 8))
    kwargs = {"factor": 1, "decoder_channels": [8, 8, 8, 8]}
    save_generator(path, model, arch="guided_unet", arch_kwargs=kwargs, color_space="lab", step=0,
                   card={"crop": 64})
    return path


def _grey(tmp_path, h=150, w=200):
    yy, xx = np.mgrid[0:h, 0:w]
    img = ((yy + xx) % 97 + 80).astype(np.uint8)
    Image.fromarray(img).save(tmp_path / "in.png")
    return tmp_path / "in.png"


def test_hints_colour_the_image_across_tiles(guided, tmp_path, capsys):
    src = _grey(tmp_path)
    (tmp_path / "h.csv").write_text("x,y,color,radius\n10,20,#c05050,2\n190,140,#5060c0,\n")
    out = tmp_path / "out.png"
    assert cli.main(["colorize", str(src), "-o", str(out), "--model", str(guided), "--hints",
                     str(tmp_path / "h.csv"), "--tile", "64", "--overlap", "16", "-q"]) == 0
    lab = skcolor.rgb2lab(np.asarray(Image.open(out)) / 255.0)
    for (x, y), colour in (((10, 20), (0xc0, 0x50, 0x50)), ((190, 140), (0x50, 0x60, 0xc0))):
        want = skcolor.rgb2lab(np.array([[colour]], dtype=np.float64) / 255.0)[0, 0, 1:]
        assert np.abs(lab[y, x, 1:] - want).max() < 3   # the hint's colour, at any tile
    assert lab[..., 1:].std() > 5                        # the colour spreads from the points
    meta = read_meta(out)
    assert meta["hints"]["points"] == [[10, 20, "#c05050", 2], [190, 140, "#5060c0", 1]]
    assert meta["strength"] == 1.0


def test_reference_alone_and_with_hints(guided, tmp_path):
    src = _grey(tmp_path)
    ref = np.zeros((40, 40, 3), np.uint8)
    ref[..., 1] = 200   # green
    Image.fromarray(ref).save(tmp_path / "ref.png")
    out = tmp_path / "out.png"
    assert cli.main(["colorize", str(src), "-o", str(out), "--model", str(guided), "--reference",
                     str(tmp_path / "ref.png"), "-q"]) == 0
    a = skcolor.rgb2lab(np.asarray(Image.open(out)) / 255.0)[..., 1]
    assert a.mean() < -10   # green: a* < 0
    (tmp_path / "h.csv").write_text("x,y,color\n5,5,#ff0000\n")
    assert cli.main(["colorize", str(src), "-o", str(out), "--model", str(guided), "--reference",
                     str(tmp_path / "ref.png"), "--hints", str(tmp_path / "h.csv"), "--strength", "0.5",
                     "-q"]) == 0
    assert read_meta(out)["strength"] == 0.5 and "reference" in read_meta(out)


def test_bad_hints_and_references_get_one_line_each(guided, tmp_path, capsys):
    src = _grey(tmp_path)
    bad = tmp_path / "bad.csv"
    bad.write_text("x,y,color\n1,2,red\n3,4,#00ff00\nx,5,#000000\n")
    assert cli.main(["colorize", str(src), "-o", str(tmp_path / "o.png"), "--model", str(guided),
                     "--hints", str(bad)]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("astrogan:")]
    assert err == [f"astrogan: {bad}: row 2: colour 'red' is not #rrggbb",
                   f"astrogan: {bad}: row 4: 'x,5,#000000' is not x,y,color with whole-number x, y "
                   "(and radius)"]
    outside = tmp_path / "outside.csv"
    outside.write_text("x,y,color\n500,2,#ff0000\n")
    assert cli.main(["colorize", str(src), "-o", str(tmp_path / "o.png"), "--model", str(guided),
                     "--hints", str(outside), "-q"]) == 1
    assert "hint 1 at x=500, y=2 is outside the 200x150 image" in capsys.readouterr().err
    assert not (tmp_path / "o.png").exists()
    Image.fromarray(np.full((20, 20, 3), 90, np.uint8)).save(tmp_path / "grey.png")
    assert cli.main(["colorize", str(src), "-o", str(tmp_path / "o.png"), "--model", str(guided),
                     "--reference", str(tmp_path / "grey.png")]) == 2
    assert "grey.png: a grey image has no colours to follow" in capsys.readouterr().err
    assert cli.main(["colorize", str(src), "-o", str(tmp_path / "o.png"), "--model", str(guided),
                     "--reference", str(tmp_path / "missing.png")]) == 2
    assert "missing.png: no such file" in capsys.readouterr().err
    assert cli.main(["colorize", str(src), "-o", str(tmp_path / "o.png"), "--model", str(guided),
                     "--strength", "-1"]) == 2
    assert "--strength -1: use a value >= 0" in capsys.readouterr().err


def test_a_model_without_hints_refuses_them(tmp_path, capsys):
    path = tmp_path / "plain.pt"
    save_generator(path, ResNet18UNet(out_channels=2), arch="resnet18_unet", arch_kwargs={"out_channels": 2},
                   color_space="lab", step=0, card={"crop": 64})
    (tmp_path / "h.csv").write_text("x,y,color\n1,1,#ff0000\n")
    assert cli.main(["colorize", str(_grey(tmp_path)), "-o", str(tmp_path / "o.png"), "--model", str(path),
                     "--hints", str(tmp_path / "h.csv")]) == 2
    assert "takes no colour hints" in capsys.readouterr().err


def test_no_hint_path_equals_the_automatic_model(guided, tmp_path):
    """A guided model with no hints gets the automatic input: the same output as hints.automatic."""
    from pipeline import inference as inf

    lm, _ = inf.open_model(str(guided), tmp_path, "colorize", torch.device("cpu"))
    torch.manual_seed(0)
    with torch.no_grad():  # give the learned part something to say
        for p in lm.model.net.head.parameters():
            p.normal_(0, 0.05)
    data = np.random.default_rng(0).uniform(0, 1, (64, 64)).astype(np.float32)
    plain = inf.colorize_image(lm, data, tile=64, overlap=0)
    empty = inf.colorize_image(lm, data, tile=64, overlap=0, points=[], reference=None)
    L = torch.from_numpy(inf.lightness(data))
    with torch.no_grad():
        ab = lm.model(hints.automatic(((L / 50) - 1)[None, None]))
    assert np.array_equal(plain, empty) and ab.abs().max() > 0.01


def test_an_output_named_like_a_jpeg_is_refused_not_made_a_folder(guided, tmp_path, capsys):
    src = _grey(tmp_path)
    assert cli.main(["colorize", str(src), "-o", str(tmp_path / "out.jpg"), "--model", str(guided)]) == 2
    assert "outputs are PNG or TIFF" in capsys.readouterr().err and not (tmp_path / "out.jpg").exists()


def test_info_piped_into_a_reader_that_stops_is_quiet(monkeypatch):
    """`astrogan info | head -1`: the reader has gone; the command ends quietly, no traceback."""
    import os
    import sys

    read, write = os.pipe()
    os.close(read)  # the reader stopped: every write now fails with EPIPE
    out = open(write, "w", buffering=1)  # noqa: SIM115 - closed below
    monkeypatch.setattr(sys, "stdout", out)
    try:
        assert cli.main(["info"]) == 1
    finally:
        out.close()
