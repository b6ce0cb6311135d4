"""The guided colorizer's reference head (issue 18): it changes colour only where a reference is
given and no hint is near, it learns what the palette misses, and a release gains it without its
other weights, hence its automatic and hint paths, changing."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

from pipeline import color, hints, release, weights
from pipeline.models.guided_unet import GuidedUNet, blur
from pipeline.reference_head import train_head

ROOT = Path(__file__).resolve().parents[1]


def _guided(points: int, reference: bool, size: int = 64, seed: int = 0, flat: bool = False
            ) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    lab = color.rgb_to_lab(torch.rand(1, 3, size, size, generator=gen))
    if flat:
        lab[:, 0] = 50.0
    pts = hints.sample_points(lab[0], points, gen, patch=(3, 3))
    pal = hints.palette(lab)[0] if reference else None
    guide = hints.Guide(pts, hints.point_lightness(pts, lab[0, 0]), pal, hints.unit_of(size, size))
    return hints.encode(lab[0, 0], guide)[None], pts


def test_the_head_changes_colour_only_where_a_reference_is_followed():
    torch.manual_seed(0)
    plain = GuidedUNet(factor=4).eval()
    headed = GuidedUNet(factor=4, reference_head=16).eval()
    missing, unexpected = headed.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and all(k.startswith("reference_head.") for k in missing)
    x, _ = _guided(0, True)
    with torch.no_grad():
        assert torch.equal(plain(x), headed(x))          # a new head starts at zero: the palette
        torch.nn.init.normal_(headed.reference_head.body[-1].weight, std=0.5)
        assert not torch.equal(plain(x), headed(x))      # a trained one corrects it
        for case in (_guided(0, False)[0], _guided(5, False)[0]):  # no reference: the model without it
            assert torch.equal(plain(case), headed(case))
        both, pts = _guided(5, True, flat=True)
        diff = (plain(both) - headed(both)).abs()
        centres = [(int(y0 + 1), int(x0 + 1)) for y0, x0, *_ in pts.tolist()]
        assert diff.max() > 0 and all(diff[0, :, y, x].max() == 0 for y, x in centres)  # a hint wins there


def test_blur_keeps_a_flat_image_flat_and_smooths_a_step():
    flat = torch.full((1, 1, 10, 12), 3.0)
    assert torch.allclose(blur(flat, 8.0), flat)     # wider than the image: edge pixels repeat
    step = torch.zeros(1, 1, 1, 40)
    step[..., 20:] = 1
    out = blur(step.expand(1, 1, 40, 40).contiguous(), 3.0)[0, 0, 0]
    assert out[0] < 1e-3 and out[-1] > 1 - 1e-3 and 0.3 < out[20] < 0.7 and torch.all(out.diff() >= 0)


def _textured_images(n: int, size: int, seed: int) -> np.ndarray:
    """n images of two tiles (N, 3, size, 2 size) whose a* follows the fine texture of L* (L* minus its
    blur), which no palette over L* can follow and the head's features can."""
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.nn.functional.interpolate(torch.rand(n, 1, 3, 6, generator=gen), size=(size, 2 * size),
                                             mode="bilinear", align_corners=False)
    fine = torch.nn.functional.interpolate(torch.rand(n, 1, size // 4, size // 2, generator=gen),
                                           scale_factor=4, mode="nearest")
    L = 25 + 40 * coarse + 25 * fine
    a = 1.6 * (L - blur(L, 12.0))
    lab = torch.cat([L, a, torch.full_like(L, 10.0)], 1)
    return (color.lab_to_rgb(lab).clamp(0, 1) * 255).round().to(torch.uint8).numpy()


def _pack(folder: Path, split: str, images: np.ndarray, size: int) -> None:
    tiles = np.concatenate([images[:, :, :, :size], images[:, :, :, size:]])
    order = np.arange(len(tiles)).reshape(2, -1).T.flatten()     # an image's two tiles side by side
    np.save(folder / f"{split}.npy", np.ascontiguousarray(tiles[order]))
    with open(folder / f"{split}.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["row", "tile_id", "image_id", "grey"])
        w.writerows([i, f"{split}{i // 2}_{i % 2}", f"{split}{i // 2}", 0] for i in range(len(tiles)))


@pytest.fixture
def packed(tmp_path) -> Path:
    folder = tmp_path / "packed"
    folder.mkdir()
    for split, n, seed in (("train", 48, 1), ("val", 8, 2), ("test", 8, 3)):
        _pack(folder, split, _textured_images(n, 64, seed), 64)
    return folder


def test_the_head_learns_what_the_palette_misses_and_keeps_the_best_val_epoch(packed):
    torch.manual_seed(0)
    model = GuidedUNet(factor=4, reference_head=32)
    rec = train_head(model, packed, epochs=100, seed=0)
    assert rec["pairs"] == {"train": 96, "val": 16, "test": 16}
    best = rec["best_on_val"]
    assert best["val"] == min([r["val"] for r in rec["curve"]] + [rec["palette_alone"]["val"]])
    assert best["val"] < 0.7 * rec["palette_alone"]["val"]          # the texture is learnt ...
    assert best["test"] < 0.7 * rec["palette_alone"]["test"]        # ... and holds on unseen images


def test_a_guided_release_gains_a_head_and_keeps_its_other_weights(packed, tmp_path, monkeypatch):
    name = weights.default_release("colorize", ROOT / "weights")
    if name is None or weights.registry(ROOT / "weights")["models"][name]["arch"] != "guided_unet":
        pytest.skip("no guided colorize release")
    folder = tmp_path / "weights"
    shutil.copytree(ROOT / "weights", folder)
    monkeypatch.setenv("ASTROGAN_WEIGHTS", str(folder))
    tiles = torch.from_numpy(np.load(packed / "test.npy")[:2])
    monkeypatch.setattr(release, "default_test_tiles", lambda: (tiles, ["a", "b"]))  # small and quick
    old_entry = weights.registry(folder)["models"][name]
    with safe_open(str(folder / old_entry["file"]), framework="pt") as f:
        old = {k: f.get_tensor(k) for k in f.keys()}
    release.main(["reference-head", name, str(packed), "--epochs", "2", "--width", "8"])
    entry = weights.registry(folder)["models"][name]
    assert entry["arch_kwargs"] == {**old_entry["arch_kwargs"], "reference_head": 8}
    assert entry["sha256"] != old_entry["sha256"] and entry["default"] == old_entry["default"]
    assert entry["command"].endswith(f"reference-head {name} <that run's data/packed> --epochs 2 --width 8 "
                                     "--seed 0")
    assert entry["card"]["reference_head"]["pairs"]["train"] == 96
    with safe_open(str(folder / entry["file"]), framework="pt") as f:
        new = {k: f.get_tensor(k) for k in f.keys()}
    kept = {k for k in old if not k.startswith("reference_head.")}
    assert {k for k in new if not k.startswith("reference_head.")} == kept
    assert all(torch.equal(new[k], old[k]) for k in kept)
    model, _ = weights.load_release(name)
    assert model.reference_head is not None
    run = entry["metrics"]["release_run_test"]["guided"]["reference"]
    assert run["tiles"] == 16 and run["model_vs_grey"] > 0
    # a second run replaces the head and does not stack the command
    release.main(["reference-head", name, str(packed), "--epochs", "1", "--width", "8"])
    again = weights.registry(folder)["models"][name]
    assert again["command"].count("reference-head") == 1
    assert again["reproducible"].count("reference head") == 1


def test_reference_halves_scores_a_release_with_and_without_its_head(tmp_path, monkeypatch):
    """scripts/reference_halves.py on two small colour images and one grey one (left out)."""
    import importlib.util

    from PIL import Image

    name = weights.default_release("colorize", ROOT / "weights")
    models = weights.registry(ROOT / "weights")["models"]
    if name is None or "reference_head" not in models[name]["arch_kwargs"]:
        pytest.skip("no guided colorize release with a reference head")
    monkeypatch.setenv("ASTROGAN_WEIGHTS", str(ROOT / "weights"))
    images = _textured_images(2, 96, seed=5)
    for i, im in enumerate(images):
        Image.fromarray(im.transpose(1, 2, 0)).save(tmp_path / f"im{i}.png")
    Image.fromarray(images[0].mean(0).astype(np.uint8)).save(tmp_path / "grey.png")
    spec = importlib.util.spec_from_file_location("reference_halves", ROOT / "scripts/reference_halves.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = mod.halves(sorted(tmp_path.glob("*.png")), f"release:{name}")
    assert out["images"] == 2 and [r["image"] for r in out["per_image"]] == ["im0", "im1"]
    h = out["head_minus_palette"]
    assert h["better"] + h["worse"] <= 2 and h["best"] <= h["median"] <= h["worst"]
    for r in out["per_image"]:
        assert r["head"] != r["palette"] and 0 < r["palette"] and 0 < r["grey"]
