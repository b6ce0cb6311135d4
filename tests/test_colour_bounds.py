"""pipeline/colour_bounds.py: grey, the L* lookup and the oracles on hand-made flat tiles."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline import color, colour_bounds
from pipeline.errors import AstroganError

RED, BLUE, GREEN = (200, 60, 60), (60, 60, 200), (60, 160, 60)


def _pack(folder: Path, split: str, tiles: list[tuple[str, tuple[int, int, int]]]) -> None:
    arr = np.stack([np.broadcast_to(np.array(rgb, np.uint8)[:, None, None], (3, 8, 8)) for _, rgb in tiles])
    np.save(folder / f"{split}.npy", arr)
    with open(folder / f"{split}.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["row", "tile_id", "image_id", "grey"])
        w.writerows([i, f"{image}_{i}", image, 0] for i, (image, _) in enumerate(tiles))


def _ab(rgb) -> torch.Tensor:
    return color.rgb_to_lab(torch.tensor(rgb, dtype=torch.float32).view(1, 3, 1, 1) / 255)[0, 1:, 0, 0]


def test_bounds_on_flat_tiles_are_hand_computable(tmp_path):
    _pack(tmp_path, "test", [("a", RED), ("a", BLUE), ("b", GREEN)])
    _pack(tmp_path, "train", [("c", RED), ("d", BLUE), ("e", GREEN)])
    found = colour_bounds.bounds(tmp_path, "test", stride=2, width=2.0)
    red, blue, green = _ab(RED), _ab(BLUE), _ab(GREEN)
    grey = float((red.abs().sum() + blue.abs().sum() + green.abs().sum()) / 6)
    # image a is half red, half blue: its median per channel is the lower of the two (torch's median),
    # so each channel is exact on one tile and off by |red - blue| on the other
    image_const = float((red - blue).abs().sum() / 6)
    ab_l1 = found["ab_l1"]
    assert found["tiles"] == 3 and found["images"] == 2
    assert ab_l1["grey"] == pytest.approx(grey, abs=1e-3)
    assert ab_l1["oracle_image_constant"] == pytest.approx(image_const, abs=1e-3)
    assert ab_l1["oracle_tile_constant"] == pytest.approx(0, abs=1e-3)
    assert ab_l1["oracle_tile_lookup"] == pytest.approx(0, abs=1e-3)
    # image a's two colours have distinct L*, so its own table per L* bin is exact
    assert ab_l1["oracle_image_lookup"] == pytest.approx(0, abs=1e-3)
    # the three colours have distinct L*, so the train lookup (the same colours) is exact here
    assert ab_l1["lookup"] == pytest.approx(0, abs=1e-3)
    assert found["ratio_to_grey"]["oracle_image_constant"] == pytest.approx(image_const / grey, abs=1e-3)


def test_retrieval_borrows_the_palette_of_the_train_tiles_that_look_alike(tmp_path):
    # flat tiles of distinct L*: with k = 1 each test tile borrows the one train tile of its own L*
    _pack(tmp_path, "test", [("a", RED), ("b", GREEN)])
    _pack(tmp_path, "train", [("c", RED), ("d", BLUE), ("e", GREEN)])
    retrieval = colour_bounds.bounds(tmp_path, "test", stride=2, k=1)["ab_l1"]["retrieval"]
    assert retrieval == pytest.approx(0, abs=1e-3)
    # with k = 3 the red test tile borrows from all three; only red has its L*, so still exact
    retrieval = colour_bounds.bounds(tmp_path, "test", stride=2, k=3)["ab_l1"]["retrieval"]
    assert retrieval == pytest.approx(0, abs=1e-3)
    # a train set with one tile, BLUE: the red test tile's L* bin is never seen there, so the lookup
    # fallback is used: grey (a*b* = 0), the same as the lookup predictor
    _pack(tmp_path, "train", [("d", BLUE)])
    found = colour_bounds.bounds(tmp_path, "test", stride=2, k=5)["ab_l1"]
    red, green = _ab(RED), _ab(GREEN)
    assert found["retrieval"] == pytest.approx(float((red.abs().sum() + green.abs().sum()) / 4), abs=1e-3)
    assert found["retrieval"] == pytest.approx(found["lookup"], abs=1e-3)
    with pytest.raises(AstroganError, match="--k 0 --palettes 4: each needs 1 or more"):
        colour_bounds.bounds(tmp_path, "test", k=0)


def _rgb(L, a, b) -> tuple[int, int, int]:
    rgb = color.lab_to_rgb(torch.tensor([L, a, b], dtype=torch.float32).view(1, 3, 1, 1))[0, :, 0, 0]
    return tuple(int(v) for v in (rgb * 255).round().clamp(0, 255))


def test_palette_choice_picks_the_right_type_where_one_table_cannot(tmp_path):
    # two train images of the same L* and opposite a*: one table (the lookup) must pick one of them
    # (torch's median of two is the lower), the palette oracle with two types picks the right one
    warm, cold = _rgb(50, 30, 0), _rgb(50, -30, 0)
    _pack(tmp_path, "test", [("a", warm), ("b", cold)])
    _pack(tmp_path, "train", [("c", warm), ("d", cold)])
    two = colour_bounds.bounds(tmp_path, "test", stride=2, n_palettes=2)
    one = colour_bounds.bounds(tmp_path, "test", stride=2, n_palettes=1)
    assert two["palettes"] == 2 and one["palettes"] == 1
    assert two["ab_l1"]["oracle_palette_choice"] == pytest.approx(0, abs=1e-3)
    # one type is the median of the two palettes, the same table as the lookup: exact on the cold
    # image, off by |warm - cold| on the warm one
    off = float((_ab(warm) - _ab(cold)).abs().sum() / 4)
    assert one["ab_l1"]["oracle_palette_choice"] == pytest.approx(off, abs=1e-3)
    assert one["ab_l1"]["lookup"] == pytest.approx(off, abs=1e-3)
    # more types than train images: as many as there are images
    assert colour_bounds.bounds(tmp_path, "test", stride=2, n_palettes=9)["palettes"] == 2


def test_cli_writes_the_json_and_a_missing_split_says_so(tmp_path, capsys):
    _pack(tmp_path, "test", [("a", RED)])
    _pack(tmp_path, "train", [("c", BLUE)])
    colour_bounds.main([str(tmp_path), "--out", str(tmp_path / "b.json")])
    saved = json.loads((tmp_path / "b.json").read_text())
    assert saved["ab_l1"]["lookup"] > 0 and saved == json.loads(capsys.readouterr().out)
    with pytest.raises(AstroganError, match="packed tiles missing"):
        colour_bounds.main([str(tmp_path), "--split", "val"])
