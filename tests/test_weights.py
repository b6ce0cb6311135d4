"""Release weights (pipeline/weights.py): fp16 safetensors + registry.json, checked before loading,
and the ``astrogan`` command using them by default. Tiny real generators, a temp weights folder."""

from __future__ import annotations

import argparse
import json
import struct

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from skimage import data as skdata

from pipeline import cli, weights
from pipeline.errors import AstroganError
from pipeline.fsio import sha256_file
from pipeline.imageio import read_meta
from pipeline.models import generator_class, save_generator

SR_KWARGS = {"num_feat": 8, "num_block": 1, "scale": 4}
COLOR_KWARGS = {"out_channels": 2, "in_channels": 1, "encoder_weights": "imagenet",
                "decoder_channels": [16, 8, 8, 8]}
EXTRA = {"command": "dvc repro sr_finetune@edsr", "reproducible": "bit-for-bit on the same device type",
         "data": {"source": "esahubble", "manifest_sha256": "ab" * 32, "images": 3,
                  "licence": "CC BY 4.0", "credit": "ESA/Hubble"},
         "metrics": {"finetuned": {"psnr_rgb": 30.5, "ssim_rgb": 0.81}}}


@pytest.fixture
def wdir(tmp_path, monkeypatch):
    folder = tmp_path / "weights"
    monkeypatch.setenv("ASTROGAN_WEIGHTS", str(folder))
    return folder


def checkpoint(tmp_path, arch: str = "edsr", seed: int = 0, name: str = "tiny"):
    """A trained-looking checkpoint of a tiny real generator: (path, the fp32 model in eval mode)."""
    torch.manual_seed(seed)
    if arch == "edsr":
        kwargs, task = SR_KWARGS, "superres"
        G = generator_class(arch)(**kwargs)
        card = {"name": name, "task": task, "scale": 4, "crop": 64, "params": {"lr": 2e-4}, "steps_run": 9,
                "device": "cpu", "seed": seed}
    else:
        kwargs, task = COLOR_KWARGS, "colorize"
        G = generator_class(arch)(**{**kwargs, "encoder_weights": None})
        G.train()(torch.rand(2, 1, 32, 32))  # BatchNorm running stats off their defaults
        card = {"name": name, "crop": 96, "params": {"lr": 1e-4}, "steps_run": 5, "device": "cpu"}
    with torch.no_grad():
        for p in G.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    path = tmp_path / "models" / name / f"{seed}" / "finetuned.pt"
    save_generator(path, G, arch=arch, arch_kwargs=kwargs, color_space="rgb" if task == "superres" else "lab",
                   step=7, card=card)
    return path, G.eval()


def rounded(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` with every float tensor rounded to fp16 and back: what the release file holds."""
    state = {k: v.half().float() if v.is_floating_point() else v for k, v in model.state_dict().items()}
    model.load_state_dict(state)
    return model


@pytest.mark.parametrize("arch,task", [("edsr", "superres"), ("resnet18_unet", "colorize")])
def test_export_then_load_round_trip_in_fp16(arch, task, tmp_path, wdir):
    ckpt, G = checkpoint(tmp_path, arch)
    entry = weights.export(ckpt, "tiny", wdir, task=task, extra={**EXTRA, "default": True})
    file = wdir / "tiny.safetensors"
    assert entry["sha256"] == sha256_file(file) and entry["bytes"] == file.stat().st_size
    assert json.loads((wdir / "registry.json").read_text()) == {"format": 1, "models": {"tiny": entry}}
    for key in ("task", "file", "arch", "arch_kwargs", "color_space", "params", "data", "steps", "device",
                "command", "reproducible", "metrics", "default"):
        assert key in entry, key
    assert entry["task"] == task and entry["default"] is True and entry["steps"] == entry["card"]["steps_run"]
    assert entry["params"] == torch.load(ckpt, weights_only=True)["card"]["params"]
    assert entry["data"]["licence"] == "CC BY 4.0" and entry["data"]["credit"] == "ESA/Hubble"
    assert ("scale" in entry) == (task == "superres")

    with safe_open(str(file), framework="pt") as f:
        dtypes = {k: f.get_slice(k).get_dtype() for k in f.keys()}
        header = f.metadata()
    ints = {k for k, v in G.state_dict().items() if not v.is_floating_point()}
    assert {k for k, d in dtypes.items() if d != "F16"} == ints
    assert all(dtypes[k] == "I64" for k in ints) and (arch == "edsr" or ints)  # BatchNorm's counters
    assert header["name"] == "tiny" and header["arch"] == arch and header["task"] == task
    assert json.loads(header["arch_kwargs"]) == entry["arch_kwargs"]
    assert header.get("scale") == ("4" if task == "superres" else None)

    H, meta = weights.load_release("tiny")
    assert not H.training and all(p.dtype == torch.float32 for p in H.parameters())
    assert meta["arch"] == arch and meta["color_space"] == entry["color_space"] and meta["step"] == 7
    assert meta["card"]["task"] == task and meta["card"]["release"] == entry
    assert meta["sha256"] == entry["sha256"]
    x = torch.rand(1, 3, 12, 16) if task == "superres" else torch.rand(1, 1, 32, 48) * 2 - 1
    with torch.no_grad():
        y32, y16 = G(x), H(x)
        assert torch.equal(y16, rounded(G)(x)), "the file holds the fp16-rounded weights, nothing else"
    assert (y16 - y32).abs().max() <= 1e-2 * max(1.0, y32.abs().max().item())


def test_loading_uses_no_pickle(tmp_path, wdir, monkeypatch):
    ckpt, _ = checkpoint(tmp_path)
    weights.export(ckpt, "tiny", wdir, task="superres", extra=EXTRA)
    raw = (wdir / "tiny.safetensors").read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    assert raw[8:9] == b"{" and 8 + n <= len(raw) and json.loads(raw[8:8 + n])
    assert not raw.startswith((b"PK", b"\x80"))  # neither torch's zip nor a bare pickle

    def no_pickle(*args, **kwargs):
        raise AssertionError("torch.load called")

    monkeypatch.setattr(torch, "load", no_pickle)
    model, meta = weights.load_release("release:tiny", "cpu")
    assert meta["release"] == "tiny" and meta["card"]["scale"] == 4


def test_a_changed_or_missing_file_fails_loudly(tmp_path, wdir):
    ckpt, _ = checkpoint(tmp_path)
    weights.export(ckpt, "tiny", wdir, task="superres", extra=EXTRA)
    file = wdir / "tiny.safetensors"
    raw = bytearray(file.read_bytes())
    raw[-3] ^= 0x01  # one bit of one weight
    file.write_bytes(bytes(raw))
    with pytest.raises(AstroganError) as e:
        weights.load_release("tiny")
    msg = str(e.value)
    assert "\n" not in msg and "tiny.safetensors: sha256 " in msg and "does not match the registry" in msg
    assert "corrupt or was changed" in msg and "git checkout -- " in msg
    file.unlink()
    with pytest.raises(AstroganError) as e:
        weights.load_release("tiny")
    assert "\n" not in str(e.value) and "tiny.safetensors: file missing" in str(e.value)
    with pytest.raises(AstroganError, match="no release 'other' in .*; known: tiny"):
        weights.load_release("other")


def test_a_lone_file_loads_from_its_header_with_a_warning(tmp_path, wdir):
    ckpt, G = checkpoint(tmp_path)
    weights.export(ckpt, "tiny", wdir, task="superres", extra=EXTRA)
    lone = tmp_path / "elsewhere" / "mine.safetensors"
    lone.parent.mkdir()
    lone.write_bytes((wdir / "tiny.safetensors").read_bytes())
    with pytest.warns(UserWarning, match="no checksum was checked"):
        H, meta = weights.load_release(lone)
    card = weights.describe(lone)
    assert not card["registered"] and card["sha256"] == sha256_file(lone) and card["arch"] == "edsr"
    assert meta["sha256"] is None and meta["card"]["scale"] == 4 and meta["card"]["crop"] == 64
    H2, meta2 = weights.load_release(wdir / "tiny.safetensors")  # registered: found by file name
    assert meta2["release"] == "tiny" and meta2["sha256"] == sha256_file(lone)
    x = torch.rand(1, 3, 8, 8)
    with torch.no_grad():
        assert torch.equal(H(x), H2(x))


def test_the_size_cap_is_enforced(tmp_path, wdir, monkeypatch):
    ckpt, _ = checkpoint(tmp_path)
    first = weights.export(ckpt, "a", wdir, task="superres", extra=EXTRA)
    monkeypatch.setattr(weights, "MAX_TOTAL_BYTES", first["bytes"] + 100)
    weights.export(ckpt, "a", wdir, task="superres", extra=EXTRA)  # replacing a file: counted once
    before = (wdir / "registry.json").read_text()
    with pytest.raises(AstroganError, match=r"over the .*-byte cap"):
        weights.export(ckpt, "b", wdir, task="superres", extra=EXTRA)
    assert (wdir / "registry.json").read_text() == before
    assert sorted(p.name for p in wdir.iterdir()) == ["a.safetensors", "registry.json"]  # no temp left
    assert weights.MAX_TOTAL_BYTES < 25 * 2**20


def test_export_refuses_incomplete_or_wrong_entries(tmp_path, wdir):
    ckpt, _ = checkpoint(tmp_path)
    with pytest.raises(AstroganError, match="extra lacks command, data.credit"):
        weights.export(ckpt, "x", wdir, task="superres",
                       extra={**EXTRA, "command": "", "data": {"source": "s", "licence": "l"}})
    with pytest.raises(AstroganError, match="a superres model, not colorize"):
        weights.export(ckpt, "x", wdir, task="colorize", extra=EXTRA)
    with pytest.raises(AstroganError, match="extra may not set sha256"):
        weights.export(ckpt, "x", wdir, task="superres", extra={**EXTRA, "sha256": "0"})
    with pytest.raises(AstroganError, match="release name"):
        weights.export(ckpt, "../x", wdir, task="superres", extra=EXTRA)
    assert not wdir.exists() or not any(wdir.iterdir())


def test_default_release_per_task(tmp_path, wdir):
    assert weights.default_release("superres") is None  # no registry: no release, no error
    ckpt, _ = checkpoint(tmp_path)
    weights.export(ckpt, "a", wdir, task="superres", extra=EXTRA)
    assert weights.default_release("superres") == "a"  # the only one
    assert weights.default_release("colorize") is None
    weights.export(ckpt, "b", wdir, task="superres", extra=EXTRA)
    assert weights.default_release("superres") is None  # two, neither marked
    weights.export(ckpt, "b", wdir, task="superres", extra={**EXTRA, "default": True})
    weights.export(ckpt, "a", wdir, task="superres", extra={**EXTRA, "default": True})
    models = weights.registry()["models"]
    assert weights.default_release("superres") == "a" and models["b"]["default"] is False


@pytest.fixture
def released(tmp_path, wdir):
    """A weights folder with one tiny 4x model marked default, and a small image."""
    ckpt, _ = checkpoint(tmp_path)
    entry = weights.export(ckpt, "tiny_sr", wdir, task="superres", extra={**EXTRA, "default": True})
    img = tmp_path / "in.png"
    Image.fromarray(skdata.hubble_deep_field()[:20, :28]).save(img)
    return entry, img


def test_cli_uses_the_default_release(released, tmp_path, capsys):
    entry, img = released
    out = tmp_path / "out.png"
    assert cli.main(["upscale", str(img), "-o", str(out), "--project", str(tmp_path)]) == 0
    err = capsys.readouterr().err
    assert "model: release tiny_sr (" in err and "tiny_sr.safetensors, sha256 verified); device cpu" in err
    assert np.asarray(Image.open(out)).shape == (80, 112, 3)
    meta = read_meta(out)
    assert meta["release"] == "tiny_sr" and meta["model_sha256"] == entry["sha256"]
    assert meta["model"].endswith("tiny_sr.safetensors")
    for spec in ("release:tiny_sr", "tiny_sr", str(tmp_path / "weights/tiny_sr.safetensors")):
        assert cli.main(["upscale", str(img), "-o", str(tmp_path / "o2.png"), "--model", spec, "-q"]) == 0
        assert np.array_equal(np.asarray(Image.open(tmp_path / "o2.png")), np.asarray(Image.open(out)))


def test_cli_best_and_other_tasks_use_the_project(released, tmp_path, capsys):
    _, img = released
    for args in (["upscale", "--model", "best"], ["colorize"]):  # no colorize release: the project's best
        code = cli.main([args[0], str(img), "-o", str(tmp_path / "o.png"), "--project", str(tmp_path),
                         *args[1:]])
        err = capsys.readouterr().err
        assert code == cli.EXIT_NO_MODEL and "make repro" in err and err.count("\n") == 1
    assert cli.main(["colorize", str(img), "-o", str(tmp_path / "o.png"), "--model", "tiny_sr"]) == 101
    assert "release tiny_sr: a superres model; use `astrogan upscale`" in capsys.readouterr().err
    assert cli.main(["upscale", str(img), "-o", str(tmp_path / "o.png"), "--model", "nope"]) == 101
    assert "nope: no such model file or folder, nor a release in" in capsys.readouterr().err


def test_cli_colorizes_with_a_release_at_the_default_tiling(tmp_path, wdir, capsys):
    ckpt, _ = checkpoint(tmp_path, "resnet18_unet")
    weights.export(ckpt, "tiny_col", wdir, task="colorize", extra=EXTRA)  # the only colorizer: the default
    img = tmp_path / "moon.png"
    Image.fromarray(skdata.moon()[:40, :50]).save(img)
    assert cli.main(["colorize", str(img), "-o", str(tmp_path / "c.png"), "--project", str(tmp_path)]) == 0
    assert "model: release tiny_col (" in capsys.readouterr().err
    meta = read_meta(tmp_path / "c.png")
    # the default tiling: the card's crop (96) or the evaluate stage's 256 px, the larger
    assert meta["tile"] == 256 and meta["overlap"] == 128 and meta["release"] == "tiny_col"
    assert np.asarray(Image.open(tmp_path / "c.png")).shape == (40, 50, 3)


def test_default_tiling_reads_the_tile_size_from_params(tmp_path, wdir, monkeypatch):
    """The evaluate stage's tile size is params ``tile.size`` of the checkout, not a copy of it; an
    install without params.yaml tiles by the card's crop, and with neither the CLI asks for --tile."""
    from pipeline import inference as inf

    ckpt, _ = checkpoint(tmp_path, "resnet18_unet")
    weights.export(ckpt, "tiny_col", wdir, task="colorize", extra=EXTRA)
    lm, _ = inf.load_release_model("tiny_col", "colorize", torch.device("cpu"))
    params = tmp_path / "params.yaml"
    monkeypatch.setattr(inf, "CHECKOUT_PARAMS", params)
    for text, want in (("tile: {size: 320, stride: 320, min_content: 0.05}\n", (320, 160)), (None, (96, 48))):
        if text:
            params.write_text(text)
        else:
            params.unlink()
        inf.eval_tile.cache_clear()
        assert inf.default_tiling(lm) == want
    monkeypatch.setitem(lm.meta["card"], "crop", None)
    with pytest.raises(inf.ModelError, match="no training crop in its card and no params.yaml"):
        inf.default_tiling(lm)
    args = argparse.Namespace(tile=None, overlap=None)
    assert "give --tile" in cli._tiling(args, lm)
    args = argparse.Namespace(tile=128, overlap=16)
    assert cli._tiling(args, lm) is None and (args.tile, args.overlap) == (128, 16)
    inf.eval_tile.cache_clear()


def test_cli_refuses_a_corrupt_release(released, tmp_path, capsys):
    _, img = released
    file = tmp_path / "weights/tiny_sr.safetensors"
    file.write_bytes(file.read_bytes()[:-1] + b"\x00")
    assert cli.main(["upscale", str(img), "-o", str(tmp_path / "o.png")]) == cli.EXIT_NO_MODEL
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "does not match the registry" in err and not (tmp_path / "o.png").exists()
    assert cli.main(["info", "tiny_sr"]) == cli.EXIT_NO_MODEL
    assert "does not match the registry" in capsys.readouterr().out
    assert cli.main(["info"]) == cli.EXIT_NO_MODEL
    assert "BAD FILE" in capsys.readouterr().out


def test_info_lists_releases_and_prints_a_card(released, tmp_path, capsys):
    entry, _ = released
    assert cli.main(["info"]) == 0
    listing = capsys.readouterr().out
    lines = listing.splitlines()
    at = next(i for i, line in enumerate(lines) if "tiny_sr" in line)
    row = lines[at]
    assert "superres" in row and "default" in row and entry["sha256"][:12] in row and row.endswith(" ok")
    assert f"{entry['bytes']:,} B" in row
    # short rows (`astrogan info NAME` shows everything); the header holds the folder, as long as it is
    assert max(len(line) for line in lines[1:]) <= 120 and lines[0].startswith("release weights in ")
    assert cli.main(["info", "release:tiny_sr"]) == 0
    card = capsys.readouterr().out
    for text in (entry["command"], "ESA/Hubble", "CC BY 4.0", entry["sha256"], "the default superres model",
                 '"psnr_rgb": 30.5', "reproducible: bit-for-bit"):
        assert text in card, text
    assert cli.main(["info", str(tmp_path / "weights/tiny_sr.safetensors"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["check"] == "ok" and info["release"] == "tiny_sr" and info["sha256"] == entry["sha256"]
    assert cli.main(["info", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["models"]["tiny_sr"]["check"] == "ok"


def test_info_with_no_registry_says_what_is_used(wdir, capsys):
    assert cli.main(["info"]) == 0
    assert "no release weights in" in capsys.readouterr().out


@pytest.mark.parametrize("arch,kwargs,cin", [
    ("edsr", SR_KWARGS, 3), ("wdsr", SR_KWARGS, 3), ("srresnet", SR_KWARGS, 3),
    ("resnet18_unet", {**COLOR_KWARGS, "encoder_weights": None}, 1),
    ("unet", {"out_channels": 3, "num_feat": 8, "depth": 3}, 1),
    ("guided_unet", {"encoder_weights": None, "decoder_channels": [16, 8, 8, 8], "factor": 2}, 10),
    ("ab_classifier", {"backbone_kwargs": {"decoder_channels": [16, 8, 8, 8]}, "grid": 20.0}, 1),
])
def test_a_release_is_built_without_initialising_what_the_file_replaces(arch, kwargs, cin, tmp_path):
    """Release models are built with torch.nn.init's fills off (weights._no_random_init) and then take
    the file's tensors: the model is exactly the one the tensors describe, a file that lacks a tensor
    is refused, and the fills are back afterwards."""
    torch.manual_seed(0)
    G = generator_class(arch)(**kwargs)
    G.train()(torch.rand(2, cin, 64, 64))  # BatchNorm statistics off their defaults
    state = {k: v.clone() for k, v in G.state_dict().items()}
    H = weights._build({"arch": arch, "arch_kwargs": kwargs}, state, tmp_path / "x.safetensors").eval()
    assert not any(t.is_meta for t in (*H.parameters(), *H.buffers()))
    assert H.state_dict().keys() == state.keys()
    x = torch.rand(1, cin, 64, 64)
    with torch.no_grad():
        assert torch.equal(H(x), G.eval()(x))
    with pytest.raises(weights.ReleaseError, match="do not fit"):
        weights._build({"arch": arch, "arch_kwargs": kwargs}, dict(list(state.items())[1:]), tmp_path / "y")
    w = torch.zeros(4, 4)
    torch.nn.init.normal_(w)
    assert w.abs().sum() > 0, "torch.nn.init is restored"
