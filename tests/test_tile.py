"""tile: positions and counts, content filter, RGBA / 16-bit / grey inputs, the stage's outputs."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from PIL import Image

from pipeline.errors import AstroganError
from pipeline.fsio import MANIFEST, write_jsonl_atomic
from pipeline.stages import tile
from pipeline.tileset import TileConfig, content_score, tile_positions


def test_positions_row_major_full_tiles_only():
    assert tile_positions(520, 600, 256, 256) == [(0, 0), (0, 256), (256, 0), (256, 256)]
    assert len(tile_positions(520, 600, 256, 128)) == 3 * 3
    assert tile_positions(255, 1000, 256, 256) == []


def test_noisy_black_sky_scores_low_and_nebula_high(rng, real_images):
    sky = np.clip(rng.normal(6, 2.5, (256, 256, 3)), 0, 255).astype(np.uint8)
    assert content_score(sky) < 0.02
    grey_sky = np.clip(rng.normal(90, 2.5, (256, 256, 3)), 0, 255).astype(np.uint8)
    assert content_score(grey_sky) < 0.02  # uniform, whatever its level
    stars = sky.copy()
    for y, x in rng.integers(0, 250, (3, 2)):
        stars[y:y + 3, x:x + 3] = 255
    assert content_score(stars) < 0.02  # three stars are still empty sky
    nebula = np.asarray(Image.open(real_images[1]).convert("RGB"))[160:416, 256:512]  # heic0105a, Horsehead
    assert content_score(nebula) > 0.3


def _write(path, arr, **kw):
    Image.fromarray(arr).save(path, **kw)
    return str(path)


@pytest.fixture
def images(tmp_path, rng, real_images):
    """RGB (2x2 tiles, one quadrant black), RGBA, 16-bit grey TIFF, grey JPEG, one too small."""
    src = tmp_path / "src"
    src.mkdir()
    rgb = np.asarray(Image.open(real_images[1]).convert("RGB"))[:512, :512].copy()
    rgb[256:, 256:] = np.clip(rng.normal(4, 2, (256, 256, 3)), 0, 255).astype(np.uint8)
    rgba = np.zeros((300, 600, 4), np.uint8)
    rgba[..., :3] = np.asarray(Image.open(real_images[2]).convert("RGB"))[:300, :600]
    rgba[..., 3] = 255
    rgba[:, 256:, 3] = 0  # transparent right part: composited on black -> empty sky
    g16 = (np.asarray(Image.open(real_images[3]).convert("L"))[:300, :300].astype(np.uint16) * 250)
    grey = np.asarray(Image.open(real_images[4]).convert("L"))[:256, :512]
    return [
        {"id": "rgb", "path": _write(src / "rgb.png", rgb)},
        {"id": "rgba", "path": _write(src / "rgba.png", rgba)},
        {"id": "g16", "path": _write(src / "g16.tif", g16)},
        {"id": "grey", "path": _write(src / "grey.jpg", np.stack([grey] * 3, -1), quality=90)},
        {"id": "small", "path": _write(src / "small.png", rgb[:200, :500])},
    ]


def test_tile_all_counts_inputs_and_filter(tmp_path, images):
    out = tmp_path / "tiles"
    res = tile.tile_all(images, out, TileConfig(256, 256, 0.02), workers=2)
    rows, m = res["rows"], res["metrics"]
    kept = {r["tile_id"] for r in rows}
    assert {"rgb_0_0", "rgb_0_256", "rgb_256_0", "rgba_0_0", "g16_0_0", "grey_0_0", "grey_0_256"} == kept
    assert m == {"images": 5, "tiles_kept": 7, "tiles_dropped_empty": 2, "images_too_small": 1,
                 "grey_tiles": 3}
    assert {r["tile_id"] for r in rows if r["grey"]} == {"g16_0_0", "grey_0_0", "grey_0_256"}
    for r in rows:
        im = Image.open(out / f"{r['tile_id']}.png")
        assert im.mode == "RGB" and im.size == (256, 256) and r["content"] >= 0.02
    g16 = np.asarray(Image.open(out / "g16_0_0.png"))
    assert g16.max() > 200  # 16-bit scaled to 8-bit, not clipped or blackened
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{t}.png" for t in kept)


def test_stage_writes_csv_and_metrics(project, images):
    write_jsonl_atomic(project.path("unique") / MANIFEST, images)
    tile.main()
    with open(project.path("tiles") / "tiles.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == tile.FIELDS and len(rows) == 7
    assert rows[0]["tile_id"] == "rgb_0_0" and rows[0]["size"] == "256"
    m = json.loads((project.path("metrics") / "data.tile.json").read_text())
    assert m["tiles_kept"] == 7 and m["images_too_small"] == 1


def test_stage_without_dedup_output_says_so(project):
    with pytest.raises(AstroganError, match="dedup"):
        tile.main()
