"""Reading PNG/JPEG/TIFF/FITS inputs with pipeline.decode (real files from astropy and scikit-image),
stretches, writing outputs."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import astropy
import numpy as np
import pytest
import tifffile
from astropy.io import fits
from astropy.visualization import ZScaleInterval
from PIL import Image
from skimage import data as skdata

from pipeline.decode import InputError, read_picture, stretch
from pipeline.imageio import encode_png16, read_meta, write_picture

ASTROPY = Path(astropy.__file__).parent
M13 = ASTROPY / "io/fits/hdu/compressed/tests/data/m13.fits"            # M13, int16 300x300
M13_RICE = ASTROPY / "io/fits/hdu/compressed/tests/data/m13_rice.fits"  # the same, tile-compressed
NAN_FITS = ASTROPY / "modeling/tests/data/1904-66_AZP.fits"             # float32, 8121 NaN pixels
TABLE_FITS = ASTROPY / "io/fits/tests/data/tb.fits"                     # a binary table, no image
CUBE_FITS = ASTROPY / "io/fits/tests/data/arange.fits"                  # int32 cube (7, 10, 11)


def png_bytes(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()


def bomb_png(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height but whose data is a few bytes: a decompression bomb."""
    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


def test_grey_png_reads_over_the_uint8_range(tmp_path):
    moon = skdata.moon()
    (tmp_path / "moon.png").write_bytes(png_bytes(moon))
    pic = read_picture(tmp_path / "moon.png")
    assert pic.grey and pic.bit_depth == 8 and pic.meta["stretch"] == "none"
    np.testing.assert_allclose(pic.data, moon / 255.0, atol=1e-6)


def test_colour_jpeg_stays_colour_and_equal_channels_become_grey(tmp_path):
    hubble = skdata.hubble_deep_field()[:96, :128]
    Image.fromarray(hubble).save(tmp_path / "c.jpg", quality=95)
    Image.fromarray(np.repeat(skdata.moon()[:40, :50, None], 3, 2)).save(tmp_path / "g.png")
    assert read_picture(tmp_path / "c.jpg").data.shape == (96, 128, 3)
    assert read_picture(tmp_path / "g.png").data.shape == (40, 50)


def test_16bit_tiff_and_png_keep_16_bit_precision(tmp_path):
    a = np.array([[1000, 1001, 65535], [0, 20000, 20001]], np.uint16)
    tifffile.imwrite(tmp_path / "g.tif", a)
    tifffile.imwrite(tmp_path / "c.tif", np.stack([a, a[::-1], a], -1), photometric="rgb")
    Image.fromarray(a).save(tmp_path / "g.png")  # Pillow writes I;16 PNG
    for name in ("g.tif", "g.png"):
        pic = read_picture(tmp_path / name)
        assert pic.bit_depth == 16
        np.testing.assert_allclose(pic.data, a / 65535.0, atol=1e-7)
    pic = read_picture(tmp_path / "c.tif")
    assert pic.data.shape == (2, 3, 3) and pic.bit_depth == 16
    assert pic.data[0, 1, 0] > pic.data[0, 0, 0], "1001 and 1000 stay distinct"


def test_fits_is_flipped_to_display_orientation_and_stretched():
    raw = fits.getdata(M13).astype(np.float32)
    pic = read_picture(M13)
    assert pic.data.shape == (300, 300) and pic.meta["hdu"] == 0 and pic.meta["stretch"] == "asinh"
    expected, _ = stretch(raw[::-1], "asinh")
    np.testing.assert_allclose(pic.data, expected, atol=1e-6)
    assert 0 <= pic.data.min() and pic.data.max() <= 1


def test_compressed_fits_uses_the_first_image_extension():
    pic = read_picture(M13_RICE)
    assert pic.meta["hdu"] == 1
    np.testing.assert_allclose(pic.data, read_picture(M13).data, atol=1e-6)


def test_fits_nans_are_counted_and_shown_black():
    raw = fits.getdata(NAN_FITS)
    pic = read_picture(NAN_FITS)
    assert pic.meta["nan_pixels"] == int(np.isnan(raw).sum()) > 0
    assert np.isfinite(pic.data).all()
    assert (pic.data[np.isnan(raw[::-1])] == 0).all()


@pytest.mark.parametrize("kind", ["asinh", "log", "linear", "zscale"])
def test_stretches_are_monotone_into_unit_range(kind):
    raw = fits.getdata(M13).astype(np.float32)
    out, info = stretch(raw, kind, (1, 99))
    assert out.dtype == np.float32 and 0 <= out.min() and out.max() <= 1 and info["stretch"] == kind
    order = np.argsort(raw, axis=None)
    assert (np.diff(out.ravel()[order]) >= -1e-6).all(), "a stretch never reorders pixel values"
    if kind == "zscale":
        np.testing.assert_allclose(info["interval"], ZScaleInterval().get_limits(raw), rtol=1e-5)
    else:
        np.testing.assert_allclose(info["interval"], np.percentile(raw, (1, 99)), rtol=1e-5)


def test_fits_hdu_choice_and_cubes():
    with pytest.raises(InputError, match="no image HDU"):
        read_picture(TABLE_FITS)
    with pytest.raises(InputError, match="holds no image data"):
        read_picture(TABLE_FITS, hdu=1)
    with pytest.raises(InputError, match="out of range"):
        read_picture(M13, hdu=3)
    pic = read_picture(CUBE_FITS)
    assert pic.data.shape == (10, 11) and "cube" in pic.meta["notice"]


def test_bad_inputs_each_raise_one_clear_reason(tmp_path):
    good = png_bytes(skdata.moon()[:200, :200])
    jpeg = io.BytesIO()
    Image.fromarray(skdata.hubble_deep_field()[:200, :200]).save(jpeg, format="JPEG")
    cases = {
        "missing.png": (None, "no such file"),
        "empty.png": (b"", "empty file"),
        "notes.png": (b"these are my notes, not an image\n" * 4, "not a recognised image"),
        "cut.png": (good[: len(good) // 2], "truncated"),
        "cut.jpg": (jpeg.getvalue()[: len(jpeg.getvalue()) // 3], "truncated"),
        "cut.fits": (M13.read_bytes()[:100_000], "truncated"),
        "bomb.png": (bomb_png(100_000, 100_000), "max-pixels"),
    }
    for name, (content, _) in cases.items():
        if content is not None:
            (tmp_path / name).write_bytes(content)
    fits.PrimaryHDU(np.zeros((0, 5), np.float32)).writeto(tmp_path / "zero.fits")
    cases["zero.fits"] = (None, "zero size")
    for name, (_, reason) in cases.items():
        with pytest.raises(InputError, match=reason):
            read_picture(tmp_path / name, max_pixels=50_000_000)


def test_max_pixels_is_checked_before_decoding(tmp_path):
    (tmp_path / "m.png").write_bytes(png_bytes(skdata.moon()))
    with pytest.raises(InputError, match=r"512x512 = 262,144 pixels exceeds --max-pixels 1,000"):
        read_picture(tmp_path / "m.png", max_pixels=1000)
    with pytest.raises(InputError, match="exceeds --max-pixels"):
        read_picture(M13, max_pixels=1000)


def test_outputs_carry_metadata_and_exact_pixels(tmp_path, rng):
    meta = {"model": "m.pt", "model_sha256": "ab" * 32, "input": {"stretch": "zscale"}}
    rgb16 = rng.integers(0, 65536, (7, 9, 3), dtype=np.uint16)
    grey16 = rgb16[..., 0]
    rgb8 = (rgb16 >> 8).astype(np.uint8)
    for name, pixels in [("a.png", rgb8), ("b.png", grey16), ("c.png", rgb16), ("d.tif", rgb16),
                         ("e.tiff", rgb8[..., 1])]:
        write_picture(tmp_path / name, pixels, meta)
        assert read_meta(tmp_path / name) == meta
        back = tifffile.imread(tmp_path / name) if name.endswith(("tif", "tiff")) else np.asarray(
            Image.open(tmp_path / name))
        if name == "c.png":  # Pillow decodes 16-bit RGB PNG at 8 bits: the high bytes must match
            np.testing.assert_array_equal(back, rgb8)
        else:
            np.testing.assert_array_equal(back, pixels)
    assert not list(tmp_path.glob(".*.tmp")), "atomic writes leave no temporaries"


def test_png16_encoder_round_trips_grey_exactly():
    a = np.arange(0, 65536, 257, dtype=np.uint16).reshape(16, 16)
    back = np.asarray(Image.open(io.BytesIO(encode_png16(a, {"k": "v"}))))
    np.testing.assert_array_equal(back, a)
