"""Guided colour: hint simulation, propagation, the reference palette, the readers, the guided model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline import color, hints
from pipeline.data import Feeder, siblings_of
from pipeline.errors import AstroganError
from pipeline.models.guided_unet import GuidedUNet


def _lab(rgb: torch.Tensor) -> torch.Tensor:
    return color.rgb_to_lab(rgb)


def test_point_count_is_geometric_with_a_share_of_none():
    gen = torch.Generator().manual_seed(0)
    cfg = hints.GuideConfig(p=0.25, none=0.0, max_points=1000)
    counts = torch.tensor([hints.point_count(gen, cfg) for _ in range(4000)], dtype=torch.float)
    assert abs(counts.mean().item() - 3.0) < 0.2          # (1 - p) / p
    assert abs((counts == 0).float().mean().item() - 0.25) < 0.03  # P(0) = p
    cfg = hints.GuideConfig(p=0.25, none=0.5, max_points=1000)
    counts = torch.tensor([hints.point_count(gen, cfg) for _ in range(4000)], dtype=torch.float)
    assert abs((counts == 0).float().mean().item() - (0.5 + 0.5 * 0.25)) < 0.03
    capped = [hints.point_count(gen, hints.GuideConfig(p=0.01, none=0.0, max_points=5)) for _ in range(50)]
    assert max(capped) == 5


def test_sampled_points_carry_their_patch_mean_colour():
    gen = torch.Generator().manual_seed(1)
    lab = _lab(torch.rand(1, 3, 40, 30))[0]
    pts = hints.sample_points(lab, 25, gen, where="normal", patch=(1, 9))
    assert pts.shape == (25, 5)
    for y0, x0, side, a, b in pts.tolist():
        y0, x0, side = int(y0), int(x0), int(side)
        assert 1 <= side <= 9 and 0 <= y0 <= 40 - side and 0 <= x0 <= 30 - side
        patch = lab[1:, y0:y0 + side, x0:x0 + side]
        assert torch.allclose(torch.tensor([a, b]), patch.mean(dim=(1, 2)), atol=1e-4)


def test_hint_map_of_a_tile_is_the_image_map_cropped():
    pts = torch.tensor([[2, 3, 3, 20.0, -10.0], [10, 12, 5, 5.0, 7.0]])
    full = hints.hint_map(pts, 20, 20)
    tile = hints.hint_map(pts, 8, 9, origin=(9, 10))
    assert torch.equal(tile, full[:, 9:17, 10:19])
    assert full[2].sum() == 9 + 25
    assert full[0, 3, 4] == pytest.approx(20 / 110) and full[1, 12, 14] == pytest.approx(7 / 110)


def test_nearest_uses_lightness_and_position():
    L = torch.tensor([[10.0, 90.0, 10.0, 90.0]])
    pts = torch.tensor([[0, 0, 1, 30.0, 0.0], [0, 3, 1, -30.0, 0.0]])
    pL = hints.point_lightness(pts, L)
    ab, dist = hints.nearest(pts, pL, L, (0, 0), unit=100.0)
    assert ab[0, 0].tolist() == [30.0, -30.0, 30.0, -30.0]   # L* decides, not the nearer position
    assert dist[0, 0] == 0 and dist[0, 1] == pytest.approx(0.02) and dist[0, 2] == pytest.approx(0.02)
    none_ab, none_d = hints.nearest(torch.zeros(0, 5), torch.zeros(0), L, (0, 0), unit=1.0)
    assert none_ab.abs().sum() == 0 and torch.isinf(none_d).all()


def test_palette_follows_lightness_and_fills_empty_bins():
    lab = torch.zeros(1, 3, 4, 4)
    lab[0, 0, :2], lab[0, 1, :2] = 20.0, 30.0     # dark pixels: a* 30
    lab[0, 0, 2:], lab[0, 2, 2:] = 80.0, -40.0    # bright pixels: b* -40
    pal = hints.palette(lab)
    assert pal.shape == (1, 2, hints.BINS)
    ab = hints.render(pal, torch.tensor([[[20.0, 80.0, 0.0, 100.0]]]))[0, :, 0]
    assert ab[:, 0].tolist() == pytest.approx([30.0, 0.0])
    assert ab[:, 1].tolist() == pytest.approx([0.0, -40.0])
    assert ab[:, 2].tolist() == pytest.approx([30.0, 0.0])   # L* 0: nearest filled bin (20)
    assert ab[:, 3].tolist() == pytest.approx([0.0, -40.0])


def test_encode_without_guidance_is_the_automatic_input():
    L = torch.rand(8, 8) * 100
    x = hints.encode(L, None)
    assert torch.equal(x[None], hints.automatic(color.normalize_l(L)[None, None]))
    assert torch.equal(hints.prior(x[None]), torch.zeros(1, 2, 8, 8))


def test_prior_is_the_nearest_hint_without_a_reference():
    L = torch.full((16, 16), 50.0)
    pts = torch.tensor([[0, 0, 1, 40.0, 0.0]])
    x = hints.encode(L, hints.Guide(pts, hints.point_lightness(pts, L), None, 10.0))
    assert torch.allclose(hints.prior(x[None])[0, 0], torch.full((16, 16), 40 / 110))


def test_untrained_guided_model_is_its_prior_and_grey_without_hints():
    G = GuidedUNet(factor=1, decoder_channels=(8, 8, 8, 8)).eval()
    gen = torch.Generator().manual_seed(0)
    rgb = torch.rand(2, 6, 32, 32)
    x, y = hints.make_pair(rgb, gen, hints.GuideConfig(none=0.0, p=0.2))
    with torch.no_grad():
        assert torch.allclose(G(x), hints.prior(x).clamp(-1, 1))
        assert G(hints.automatic(x[:, :1])).abs().max() == 0


def test_make_pair_uses_the_second_crop_as_reference():
    gen = torch.Generator().manual_seed(0)
    crop = torch.zeros(1, 3, 16, 16)
    crop[:, 0] = 0.5  # a reddish-grey crop
    ref = torch.zeros(1, 3, 16, 16)
    ref[:, 2] = 1.0   # a blue reference
    cfg = hints.GuideConfig(none=1.0, reference=1.0)
    x, y = hints.make_pair(torch.cat([crop, ref], 1), gen, cfg)
    assert x[0, 9].min() == 1 and x[0, 3].max() == 0  # a reference, no points
    assert x[0, 8].mean() < -0.3                       # its colour is blue (b* < 0), not the crop's


def test_feeder_siblings_give_a_crop_of_the_same_image():
    images = torch.stack([torch.full((3, 8, 8), v, dtype=torch.uint8) for v in (10, 20, 30, 40)])
    feeder = Feeder(images, torch.device("cpu"), siblings=siblings_of(["a", "a", "b", "c"]))
    batch = feeder.next(64, 4, torch.Generator().manual_seed(0))
    assert batch.shape == (64, 6, 4, 4)
    first, second = batch[:, 0, 0, 0].tolist(), batch[:, 3, 0, 0].tolist()
    group = {10: "a", 20: "a", 30: "b", 40: "c"}
    assert all(group[f] == group[s] for f, s in zip(first, second, strict=True))
    assert any(f != s for f, s in zip(first, second, strict=True))


def test_read_hints_names_every_bad_row(tmp_path):
    good = tmp_path / "h.csv"
    good.write_text("x,y,color,radius\n3,4,#ff0000,2\n0,0,00ff00,\n")
    got = hints.read_hints(good)
    assert got == [hints.Hint(3, 4, (255, 0, 0), 2), hints.Hint(0, 0, (0, 255, 0), 1)]
    bad = tmp_path / "bad.csv"
    bad.write_text("x,y,color\n1,2,#12345\nfoo,2,#ffffff\n-1,2,#ffffff\n5,5,#abcdef\n")
    with pytest.raises(hints.HintError) as e:
        hints.read_hints(bad)
    assert len(e.value.lines) == 3
    assert [f"{bad}: row {n}" in line for n, line in zip((2, 3, 4), e.value.lines, strict=True)] == [True] * 3
    header = tmp_path / "header.csv"
    header.write_text("col,row,colour\n1,2,#ffffff\n")
    with pytest.raises(hints.HintError, match="row 1: header"):
        hints.read_hints(header)
    with pytest.raises(hints.HintError, match="cannot read"):
        hints.read_hints(tmp_path / "missing.csv")


def test_hints_outside_the_image_are_named():
    L = np.full((10, 20), 50.0, np.float32)
    guide = hints.hint_points([hints.Hint(19, 9, (255, 0, 0), 3)], L, "h.csv")
    assert guide.points[0, :3].tolist() == [6, 16, 4]   # the patch is clipped to the image
    with pytest.raises(hints.HintError) as e:
        hints.hint_points([hints.Hint(20, 0, (255, 0, 0)), hints.Hint(0, 10, (0, 0, 0))], L, "h.csv")
    assert len(e.value.lines) == 2
    assert "h.csv: hint 1 at x=20, y=0 is outside the 20x10 image" in e.value.lines[0]


def test_reference_palette_refuses_grey():
    grey = np.full((20, 20, 3), 0.4, np.float32)
    with pytest.raises(hints.HintError, match="ref.png: nearly grey"):
        hints.reference_palette(grey, "ref.png")
    with pytest.raises(hints.HintError, match="grey image"):
        hints.reference_palette(grey[..., 0], "ref.png")
    red = np.zeros((20, 20, 3), np.float32)
    red[..., 0] = 0.8
    pal = hints.reference_palette(red, "ref.png")
    assert pal.shape == (2, hints.BINS) and pal[0].min() > 30


def test_guide_config_rejects_bad_params():
    with pytest.raises(AstroganError, match="guide"):
        hints.GuideConfig.from_params({"p": 0})
    with pytest.raises(AstroganError, match="guide"):
        hints.GuideConfig.from_params({"where": "edges"})
    assert hints.GuideConfig.from_params({"patch": [2, 4]}).patch == (2, 4)


def test_guided_entry_trains_through_both_stages_and_evaluates(tmp_path, monkeypatch):
    """Pretrain on photos and tiles, fine-tune as a GAN (D sees the hints too), then guided scores."""
    import copy
    import json

    from pipeline import guided_eval
    from pipeline.models import load_generator
    from pipeline.stages import finetune, pretrain
    from tests.test_colorize_zoo import _use, val_project
    from tests.test_train import PARAMS

    params = copy.deepcopy(PARAMS)
    params["colorize"]["zoo"]["tiny_guided"] = {
        "generator": "guided_unet", "generator_kwargs": {"factor": 2, "decoder_channels": [8, 8, 8, 8]},
        "color_space": "lab", "discriminator": "patchgan", "discriminator_kwargs": {"ndf": 8},
        "guide": {"p": 0.3, "none": 0.2, "patch": [1, 3], "reference": 0.5},
        "pretrain": {"data": "both", "steps": 3, "crop": 32}, "finetune": {"crop": 32, "steps": 2}}
    root = val_project(tmp_path / "p", params)
    _use(root, monkeypatch)
    pretrain.main(["tiny_guided"])
    finetune.main(["tiny_guided"])
    card = json.loads((root / "models/colorize/tiny_guided/finetuned.card.json").read_text())
    assert card["arch_kwargs"]["in_channels"] == hints.CHANNELS
    assert card["discriminator"]["kwargs"]["in_channels"] == hints.CHANNELS + 2
    G, meta = load_generator(root / "models/colorize/tiny_guided/finetuned.pt")
    tiles = torch.randint(0, 256, (3, 3, 64, 64), dtype=torch.uint8)
    r = guided_eval.score(G, tiles, ["a", "a", "b"], counts=(0, 5))
    assert set(r["points"]) == {"0", "5"} and r["reference"]["tiles"] == 2
    assert r["points"]["0"]["nearest"] == r["points"]["0"]["grey"]
    assert r["points"]["5"]["nearest"] < r["points"]["5"]["grey"]
    # several models in one pass (the evaluate stage): each scores as it does alone
    P, _ = load_generator(root / "models/colorize/tiny_guided/pretrained.pt")
    both = guided_eval.score_models({"p": (P, 0.5), "f": (G, 1.0)}, tiles, ["a", "a", "b"], counts=(0, 5))
    assert both["f"] == r
    assert both["p"] == guided_eval.score(P, tiles, ["a", "a", "b"], counts=(0, 5), auto_strength=0.5)
    assert "model" not in guided_eval.score_models({}, tiles, ["a", "a", "b"], counts=(0, 5))["baselines"][
        "points"]["5"]


def test_strength_choice_does_no_harm_on_faint_images():
    """A predictor with the right hue but too much colour: the best strength on the truth would be 1,
    but on the truth's colour scaled to a fifth it loses to grey, so a small strength is chosen."""
    from pipeline.colorizer import choose_strength

    rgb = torch.zeros(4, 3, 16, 16)
    rgb[:, 0], rgb[:, 1], rgb[:, 2] = 0.6, 0.4, 0.4          # a reddish truth, a* > 0
    lab = color.rgb_to_lab(rgb)
    val = (rgb * 255).round().to(torch.uint8)

    def predict(x: torch.Tensor) -> torch.Tensor:           # the truth's L with its a*b* doubled
        out = color.rgb_to_lab(x)
        out[:, 1:] = lab[: len(x), 1:] * 2.0
        return color.lab_to_rgb(out)

    free, per = choose_strength(predict, val, (0.0, 0.1, 0.25, 0.5, 1.0), 2, torch.device("cpu"))
    assert free == 0.5 and per["0.5"] < per["0"]
    safe, _ = choose_strength(predict, val, (0.0, 0.1, 0.25, 0.5, 1.0), 2, torch.device("cpu"), faint=0.2)
    assert safe == 0.1  # 2 * 0.1 = 0.2 of the truth: exactly the faint image's colour


def test_strength_choice_with_confidence_guards_against_lucky_images():
    """Three val images where a strength helps the faint truth and one where the prediction's hue is
    wrong: on average the strength passes, but not at 95 % bootstrap confidence over the images, so a
    smaller one is chosen. Without image ids the confidence rule is refused."""
    from pipeline.colorizer import choose_strength

    rgb = torch.zeros(8, 3, 16, 16)
    rgb[:, 0], rgb[:, 1], rgb[:, 2] = 0.6, 0.4, 0.4          # a reddish truth, a* > 0
    lab = color.rgb_to_lab(rgb)
    sign = torch.tensor([1.0] * 6 + [-2.0] * 2)[:, None, None, None]   # the last image: wrong hue
    val = (rgb * 255).round().to(torch.uint8)
    images = ["a", "a", "b", "b", "c", "c", "d", "d"]

    def predict(x: torch.Tensor) -> torch.Tensor:
        out = color.rgb_to_lab(x)
        out[:, 1:] = lab[: len(x), 1:] * 0.2 * sign[: len(x)]
        return color.lab_to_rgb(out)

    args = (predict, val, (0.0, 0.5, 1.0), 8, torch.device("cpu"), 0.2)
    mean_rule, _ = choose_strength(*args)
    sure, _ = choose_strength(*args, images, 0.95)
    assert mean_rule == 1.0 and sure < mean_rule
    with pytest.raises(ValueError, match="image id"):
        choose_strength(*args, None, 0.95)


def test_the_learned_reference_study_starts_from_the_palette(tmp_path):
    """scripts/reference_learned.py: its models start as the reference palette rendered through L*
    (their gain is measured from there), and its features hold that palette where it says."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts/reference_learned.py"
    spec = importlib.util.spec_from_file_location("reference_learned", path)
    study = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(study)
    gen = torch.Generator().manual_seed(0)
    lab = color.rgb_to_lab(torch.rand(3, 3, 32, 32, generator=gen))
    ref = color.rgb_to_lab(torch.rand(3, 3, 32, 32, generator=gen))
    x, at_L = study.features(lab, ref)
    assert torch.allclose(at_L, hints.render(hints.palette(ref), lab[:, 0]) / color.AB_SCALE)
    assert x.shape[1] == len(study.INPUTS["all"])
    for cols in study.INPUTS.values():
        assert torch.equal(x[:, cols][:, study.PALETTE_CHANNELS], at_L)
    for kind in ("mlp", "cnn"):
        model = study.make(kind, x.shape[1])
        assert torch.equal(model(x), at_L)
        y = lab[:, 1:] / color.AB_SCALE
        assert study.ratio(model, x, y) == study.ratio(None, x, y)
