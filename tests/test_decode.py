"""pipeline.decode, the one decoder: one picture saved as 8-bit PNG, 16-bit PNG/TIFF, float TIFF and
FITS looks the same to training (data.load_rgb, the tile stage), to the sources (decode_image) and
to the CLI (read_picture); broken files fail with one line that names them."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import tifffile
from astropy.io import fits
from PIL import Image
from skimage import data as skdata

from pipeline.data import load_rgb
from pipeline.decode import InputError, quantize, read_picture, read_uint8, stretch
from pipeline.imageio import encode_png16
from pipeline.sources.common import BadImage, decode_image
from pipeline.stages import tile
from pipeline.tileset import TileConfig


@pytest.fixture
def picture(rng) -> np.ndarray:
    """A 32x48 colour picture in [0, 1] with detail below 8 bits, its darkest 0 and brightest 1."""
    x = (skdata.hubble_deep_field()[:32, :48].astype(np.float64) + rng.uniform(-0.5, 0.5, (32, 48, 3))) / 255
    x = np.clip(x, 0, 1)
    x[0, 0], x[-1, -1] = 0.0, 1.0
    return x


def _save(folder: Path, x: np.ndarray) -> dict[str, Path]:
    """``x`` as 8-bit PNG, 16-bit TIFF, 16-bit colour PNG, 16-bit grey PNG and float TIFF."""
    v16 = np.round(x * 65535).astype(np.uint16)
    files = {"png8": folder / "p8.png", "tif16": folder / "t16.tif", "png16": folder / "p16.png",
             "grey16": folder / "g16.png", "tif32": folder / "t32.tif"}
    Image.fromarray(np.round(x * 255).astype(np.uint8)).save(files["png8"])
    tifffile.imwrite(files["tif16"], v16, photometric="rgb")
    files["png16"].write_bytes(encode_png16(v16, {}))
    Image.fromarray(v16[..., 1]).save(files["grey16"])  # Pillow writes I;16 grey PNG
    tifffile.imwrite(files["tif32"], x.astype(np.float32), photometric="rgb")
    return files


def test_integer_formats_decode_alike_for_training_sources_and_cli(tmp_path, picture):
    files = _save(tmp_path, picture)
    want8 = np.round(picture * 255)
    for key in ("png8", "tif16", "png16", "grey16"):
        path = files[key]
        pic = read_picture(path)
        assert pic.bit_depth == (8 if key == "png8" else 16), key
        x = picture[..., 1] if key == "grey16" else picture
        # the CLI: over the full integer range (Pillow keeps the high byte of 16-bit colour PNG)
        tol = 1.01 / 255 if key == "png16" else 0.51 / 255
        assert np.abs(pic.data - x).max() <= tol, key
        # training: the CLI's picture quantized to 8 bits, grey repeated
        rgb = load_rgb(path)
        cli8 = quantize(pic.data, 8)
        assert rgb.dtype == np.uint8 and rgb.shape == (32, 48, 3)
        np.testing.assert_array_equal(rgb, cli8 if cli8.ndim == 3 else np.repeat(cli8[..., None], 3, 2))
        want = want8[..., 1:2] if key == "grey16" else want8
        assert np.abs(rgb - want).max() <= 1, key   # the 8-bit file's values, to quantization
        # the sources: the same 8-bit pixels, whatever the file held
        im = decode_image(path.read_bytes(), str(path))
        np.testing.assert_array_equal(np.asarray(im.convert("RGB")), rgb)
    np.testing.assert_array_equal(load_rgb(files["png8"]), want8)  # 8 bits: the file's own bytes


def test_the_tile_stage_cuts_what_the_cli_sees(tmp_path, picture):
    files = _save(tmp_path, picture)
    for key in ("tif16", "tif32"):
        out = tmp_path / f"tiles-{key}"
        out.mkdir()
        res = tile.tile_image((str(files[key]), key, str(out), TileConfig(16, 16, 0.0)))
        assert res["error"] is None and len(res["rows"]) == 6
        expected = quantize(read_picture(files[key]).data, 8)
        for r in res["rows"]:
            got = np.asarray(Image.open(out / f"{r['tile_id']}.png"))
            np.testing.assert_array_equal(got, expected[r["y"]:r["y"] + 16, r["x"]:r["x"] + 16])


def test_float_tiff_and_fits_share_one_stretch(tmp_path, picture):
    """Floats and FITS have no white point: both get the same asinh stretch, on every path."""
    grey = picture[..., 0].astype(np.float32) * 5000 - 100   # counts, negative sky included
    tifffile.imwrite(tmp_path / "g.tif", grey)
    fits.PrimaryHDU(grey[::-1]).writeto(tmp_path / "g.fits")  # FITS rows run bottom-up
    expected, _ = stretch(grey, "asinh")
    for name in ("g.tif", "g.fits"):
        pic = read_picture(tmp_path / name)
        assert pic.meta["stretch"] == "asinh" and pic.bit_depth == 32
        np.testing.assert_allclose(pic.data, expected, atol=1e-6)
        np.testing.assert_array_equal(load_rgb(tmp_path / name)[..., 0], quantize(pic.data, 8))
        im = decode_image((tmp_path / name).read_bytes(), name)
        np.testing.assert_array_equal(np.asarray(im), quantize(pic.data, 8))
    assert decode_image((tmp_path / "g.fits").read_bytes(), "g.fits").info["pil_unsafe"].startswith("FITS")
    # a linear stretch over the whole range gives back the 8-bit picture, to quantization
    colour = read_picture(_save(tmp_path, picture)["tif32"], stretch_kind="linear", percentiles=(0, 100))
    assert np.abs(quantize(colour.data, 8) - np.round(picture * 255)).max() <= 1


def test_16_bit_maps_over_its_full_range_not_the_image_maximum(tmp_path):
    dim = np.linspace(0, 4095, 24 * 32).reshape(24, 32).astype(np.uint16)  # 12-bit data, 16-bit file
    tifffile.imwrite(tmp_path / "dim.tif", dim)
    rgb = load_rgb(tmp_path / "dim.tif")
    assert rgb.max() == round(4095 / 257), "dim stays dim, as in any viewer and in the CLI"
    np.testing.assert_allclose(read_picture(tmp_path / "dim.tif").data.max(), 4095 / 65535, rtol=1e-6)


def test_8_bit_modes_decode_as_before(tmp_path, rng):
    """Alpha on black rounded as Pillow's alpha_composite, palettes and 1-bit as Pillow converts them."""
    rgba = rng.integers(0, 256, (20, 30, 4), dtype=np.uint8)
    images = {"rgba.png": Image.fromarray(rgba), "la.png": Image.fromarray(rgba[..., [0, 3]].copy(), "LA"),
              "l.png": Image.fromarray(rgba[..., 0]), "one.png": Image.fromarray(rgba[..., 0] > 99),
              "p.png": Image.fromarray(rgba[..., :3]).convert("P", palette=Image.Palette.ADAPTIVE)}
    for name, im in images.items():
        im.save(tmp_path / name, **({"transparency": 3} if name == "p.png" else {}))
        with Image.open(tmp_path / name) as src:
            src = src.convert("RGBA")
            before = np.asarray(Image.alpha_composite(Image.new("RGBA", src.size, (0, 0, 0, 255)), src)
                                .convert("RGB"))
        np.testing.assert_array_equal(load_rgb(tmp_path / name), before, err_msg=name)
        assert read_uint8(tmp_path / name).bit_depth == 8
    v = np.arange(256, dtype=np.uint8)
    np.testing.assert_array_equal(quantize(v.astype(np.float32) / 255, 8), v)  # the float round trip


def test_asinh_stretch_range_and_order():
    x = np.linspace(-5, 1000, 10_000).reshape(100, 100)
    y, _ = stretch(x, "asinh", (0, 100))
    assert y.min() == 0 and abs(y.max() - 1) < 1e-6 and np.all(np.diff(y.ravel()) >= 0)
    assert y.ravel()[5000] > 0.5  # asinh lifts the middle above a linear stretch


def _broken(tmp_path: Path) -> dict[str, tuple[bytes, str]]:
    png = io.BytesIO()
    Image.fromarray(skdata.moon()[:64, :64]).save(png, format="PNG")
    tif = io.BytesIO()
    tifffile.imwrite(tif, np.zeros((64, 64, 3), np.uint16), photometric="rgb")
    hdu = io.BytesIO()
    fits.PrimaryHDU(np.zeros((64, 64), np.float32)).writeto(hdu)
    return {"empty.png": (b"", "empty file"),
            "page.jpg": (b"<!DOCTYPE html><html>404</html>", "HTML"),
            "notes.png": (b"not an image\n" * 8, "not a recognised image"),
            "cut.png": (png.getvalue()[:200], "truncated"),
            "cut.tif": (tif.getvalue()[:300], "truncated"),
            "cut.fits": (hdu.getvalue()[:3000], "truncated")}


def test_broken_files_give_one_line_that_names_them(tmp_path):
    for name, (content, why) in _broken(tmp_path).items():
        path = tmp_path / name
        path.write_bytes(content)
        with pytest.raises(InputError) as e:
            load_rgb(path)                                             # training
        assert str(e.value).startswith(f"{path}: ") and why in str(e.value) and "\n" not in str(e.value)
        with pytest.raises(BadImage) as e:
            decode_image(content, f"https://example.org/{name}")       # the sources
        assert str(e.value).startswith(f"https://example.org/{name}: ") and why in str(e.value)
        with pytest.raises(InputError, match=why) as e:
            read_picture(path)                                         # the CLI puts the name in front
        assert "\n" not in str(e.value)
        res = tile.tile_image((str(path), "x", str(tmp_path), TileConfig(16, 16, 0.0)))
        assert res["error"] == str(load_error(path)), "the tile stage names the file once"


def load_error(path: Path) -> InputError:
    try:
        load_rgb(path)
    except InputError as e:
        return e
    raise AssertionError(f"{path} decoded")
