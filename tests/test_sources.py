"""The offline sources (embedded, folder, COCO download) and the scrape / natural stages."""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import shutil
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.errors import AstroganError
from pipeline.fsio import MANIFEST, read_jsonl, sha256_file
from pipeline.sources import coco, embedded, folder
from pipeline.sources.common import SourceConfig
from pipeline.stages import natural, scrape


def cfg(name: str, **options) -> SourceConfig:
    return SourceConfig(name=name, limit=0, max_pixels=16_000_000, options=options)


# ---------------------------------------------------------------- embedded


def test_embedded_with_vendored_keeps_credits(tmp_path):
    out = tmp_path / "embedded"
    s = embedded.fetch(out, cfg("embedded", vendored=True, skimage=["hubble_deep_field"]))
    rows = read_jsonl(out / MANIFEST)
    vendored = read_jsonl(embedded.VENDORED / MANIFEST)
    assert s["fetched"] == len(rows) == 1 + len(vendored) == 49 and s["failed"] == 0
    hdf = rows[0]
    assert hdf["id"] == "skimage-hubble_deep_field" and hdf["url"] == "skimage.data.hubble_deep_field"
    assert "NASA" in hdf["credit"] and "public domain" in hdf["licence"]
    by_id = {r["id"]: r for r in rows}
    for v in vendored:
        r = by_id[v["id"]]
        assert (r["url"], r["credit"], r["licence"], r["title"]) == (v["url"], v["credit"], v["licence"],
                                                                     v["title"])
        assert r["derived"].startswith("downscaled") and r["sha256"] == v["sha256"]
        assert sha256_file(out / r["file"]) == v["sha256"]  # vendored bytes kept as they are


def test_embedded_without_vendored_rebuilds_the_folder(tmp_path):
    out = tmp_path / "embedded"
    out.mkdir()
    (out / "stale.jpg").write_bytes(b"old")
    s = embedded.fetch(out, cfg("embedded", vendored=False, skimage=["hubble_deep_field"]))
    assert s["fetched"] == 1
    assert sorted(p.name for p in out.iterdir()) == [MANIFEST, "skimage-hubble_deep_field.png"]


def test_embedded_corrupt_vendored_file_is_named_and_others_kept(tmp_path, capsys):
    vdir = tmp_path / "vendored"
    vdir.mkdir()
    recs = read_jsonl(embedded.VENDORED / MANIFEST)[:3]
    for r in recs:
        shutil.copy(embedded.VENDORED / r["file"], vdir / r["file"])
    (vdir / MANIFEST).write_text("".join(json.dumps(r) + "\n" for r in recs))
    (vdir / recs[1]["file"]).write_bytes(b"\xff\xd8 truncated")
    out = tmp_path / "out"
    s = embedded.fetch(out, cfg("embedded", vendored=True, skimage=[]), vendored_dir=vdir)
    assert (s["fetched"], s["failed"]) == (2, 1)
    failed = read_jsonl(out / embedded.FAILED)
    assert [f["id"] for f in failed] == [recs[1]["id"]] and recs[1]["file"] in failed[0]["reason"]
    assert recs[1]["file"] in capsys.readouterr().err


def test_scrape_stage_prints_one_line_and_honours_limit(project, capsys):
    project.params["scrape"]["limit"] = 3
    project.save()
    scrape.main(["embedded"])
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and out[0].startswith("scrape embedded: fetched 3, skipped 0, failed 0")
    assert len(read_jsonl(project.path("raw") / "embedded" / MANIFEST)) == 3


# ---------------------------------------------------------------- folder


def _fits(path: Path, data: np.ndarray, primary_empty: bool = True) -> None:
    from astropy.io import fits

    hdus = [fits.PrimaryHDU(), fits.ImageHDU(data)] if primary_empty else [fits.PrimaryHDU(data)]
    fits.HDUList(hdus).writeto(path)


@pytest.fixture
def mixed_folder(tmp_path, real_images, rng) -> Path:
    """JPEG, RGBA PNG, 16-bit TIFF, FITS (NaNs, 2nd HDU), nested, a manifest, and two broken files."""
    root = tmp_path / "mine"
    (root / "deep" / "er").mkdir(parents=True)
    shutil.copy(real_images[0], root / "a.jpg")
    rgba = np.zeros((40, 50, 4), np.uint8)
    rgba[..., 0], rgba[10:30, 10:40, 3] = 200, 255
    Image.fromarray(rgba).save(root / "deep" / "b.png")
    Image.fromarray((rng.random((30, 40)) * 60000).astype(np.uint16)).save(root / "deep" / "c16.tif")
    data = rng.normal(100, 5, (32, 48)).astype(np.float32)
    data[0, :] = np.nan
    data[20:24, 20:24] = 5000.0
    _fits(root / "deep" / "er" / "d.fits", data)
    (root / "deep" / "er" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (root / "deep" / "bad.fits").write_bytes(b"SIMPLE  =  garbage")
    (root / "notes.txt").write_text("ignored")
    (root / "deep" / MANIFEST).write_text(
        json.dumps({"file": "b.png", "id": "my-b", "url": "https://example.org/b", "title": "B",
                    "credit": "Me", "licence": "CC0"}) + "\n"
        + json.dumps({"id": "c16", "url": "https://example.org/c"}) + "\n")
    return root


def test_folder_ingests_mixed_formats_and_names_broken_files(tmp_path, mixed_folder, capsys):
    out = tmp_path / "raw" / "folder"
    s = folder.fetch(out, cfg("folder", path=str(mixed_folder)))
    rows = {r["id"]: r for r in read_jsonl(out / MANIFEST)}
    assert (s["fetched"], s["failed"], s["skipped"]) == (4, 2, 0)
    assert set(rows) == {"folder-a", "my-b", "c16", "folder-deep_er_d"}
    assert (rows["my-b"]["credit"], rows["my-b"]["licence"], rows["my-b"]["title"]) == ("Me", "CC0", "B")
    assert rows["c16"]["url"] == "https://example.org/c" and rows["c16"]["credit"] == "unknown"
    assert rows["folder-a"]["licence"] == "unknown" and rows["folder-a"]["file"] == "folder-a.jpg"
    assert Image.open(out / rows["c16"]["file"]).mode.startswith("I;16")  # kept 16-bit, not clipped
    fits_png = np.asarray(Image.open(out / rows["folder-deep_er_d"]["file"]))
    assert fits_png.dtype == np.uint8 and fits_png.shape == (32, 48)
    assert fits_png.max() == 255 and fits_png[-1].max() < 255  # NaN row -> 0 -> dark, at the bottom
    assert fits_png[32 - 24:32 - 20, 20:24].min() == 255  # the bright square, flipped north-up
    failed = {Path(f["url"]).name for f in read_jsonl(out / embedded.FAILED)}
    assert failed == {"broken.jpg", "bad.fits"}
    err = capsys.readouterr().err
    assert "broken.jpg" in err and "bad.fits" in err


def test_folder_rerun_skips_done_and_fresh_run_rebuilds(tmp_path, mixed_folder):
    out = tmp_path / "folder"
    folder.fetch(out, cfg("folder", path=str(mixed_folder)))
    again = folder.fetch(out, cfg("folder", path=str(mixed_folder)), fresh=False)
    assert (again["fetched"], again["skipped"]) == (0, 4)
    (mixed_folder / "a.jpg").unlink()
    fresh = folder.fetch(out, cfg("folder", path=str(mixed_folder)))
    assert fresh["fetched"] == 3 and not (out / "folder-a.jpg").exists()


@pytest.mark.parametrize("path", ["", "does/not/exist"])
def test_folder_without_path_says_which_param(tmp_path, path):
    with pytest.raises(AstroganError, match="scrape.folder.path"):
        folder.fetch(tmp_path / "out", cfg("folder", path=path))


# ---------------------------------------------------------------- natural


def test_natural_embedded_photos_resized_to_short_side(project):
    project.params["natural"]["size"] = 64
    project.save()
    natural.main()
    rows = read_jsonl(project.path("natural") / MANIFEST)
    assert [r["id"] for r in rows] == [f"skimage-{n}" for n in natural.SKIMAGE_PHOTOS]
    for r in rows:
        im = Image.open(project.path("natural") / r["file"])
        assert im.mode == "RGB" and min(im.size) == 64 and [r["width"], r["height"]] == list(im.size)
        w0, h0 = r["resized_from"]
        assert abs(im.size[0] / im.size[1] - w0 / h0) < 0.02 and r["credit"] and r["licence"]


def test_natural_coco_dir_takes_first_count_sorted(project, real_images):
    cdir = project.root / "coco"
    cdir.mkdir()
    for i, p in enumerate(real_images[:3]):
        shutil.copy(p, cdir / f"00000000{3 - i}.jpg")
    project.params["natural"].update(source="coco", coco_dir=str(cdir), count=2, size=32)
    project.save()
    natural.main()
    rows = read_jsonl(project.path("natural") / MANIFEST)
    assert [r["id"] for r in rows] == ["coco-000000001", "coco-000000002"]
    assert rows[0]["credit"] == coco.CREDIT and min(rows[0]["width"], rows[0]["height"]) == 32


def test_natural_broken_coco_photo_is_one_line_and_keeps_the_previous_photos(project, real_images):
    natural.main()                                                     # the embedded photos
    before = (project.path("natural") / MANIFEST).read_bytes()
    cdir = project.root / "coco"
    cdir.mkdir()
    shutil.copy(real_images[0], cdir / "000000000001.jpg")
    (cdir / "000000000002.jpg").write_bytes(b"\xff\xd8\xff\xe0 cut short")
    project.params["natural"].update(source="coco", coco_dir=str(cdir), count=5)
    project.save()
    with pytest.raises(AstroganError, match=r"^natural: \S+000000000002\.jpg: cannot decode the file: .* "
                                         r"\(truncated or corrupt\?\); remove it \(the previous photos are "
                                         r"kept\)$"):
        natural.main()
    assert (project.path("natural") / MANIFEST).read_bytes() == before


def test_natural_coco_offline_is_one_line(project, monkeypatch):
    project.params["natural"].update(source="coco", coco_dir="")
    project.save()
    real = coco.download
    monkeypatch.setattr(coco, "download", lambda: real("http://127.0.0.1:9/val2017.zip", "0" * 32,
                                                       project.root / "cache", timeout=2))
    with pytest.raises(AstroganError) as e:
        natural.main()
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("COCO download failed (") and "natural.coco_dir" in msg


@pytest.fixture
def photo_folder(project, real_images) -> Path:
    """Two colour JPEGs (one nested), a grey PNG, a broken JPEG and a FITS (one filter: ignored)."""
    root = project.root / "photos"
    (root / "sub").mkdir(parents=True)
    shutil.copy(real_images[0], root / "b.jpg")
    shutil.copy(real_images[1], root / "sub" / "a.jpg")
    Image.fromarray(np.full((40, 60, 3), 90, np.uint8)).save(root / "g.png")
    (root / "x.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    (root / "y.png").write_bytes(_png_header(25_000, 20_000))   # 500 Mpx: over the bomb guard
    _fits(root / "f.fits", np.ones((16, 16), np.float32))
    return root


def _png_header(width: int, height: int) -> bytes:
    """A PNG that claims ``width`` x ``height`` RGB pixels and holds none."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b""))
            + chunk(b"IEND", b""))


def test_natural_folder_after_embedded_skips_grey_and_broken_photos(project, photo_folder, capsys):
    project.params["natural"].update(source=["embedded", "folder"], folder=str(photo_folder), size=32)
    project.save()
    natural.main()
    rows = read_jsonl(project.path("natural") / MANIFEST)
    skimage = [f"skimage-{n}" for n in natural.SKIMAGE_PHOTOS]
    assert [r["id"] for r in rows] == [*skimage, "folder-b", "folder-sub_a"]
    mine = rows[-2:]
    assert {r["source"] for r in mine} == {"folder"} and {r["credit"] for r in mine} == {"unknown"}
    assert [r["original_file"] for r in mine] == ["b.jpg", "sub/a.jpg"]
    for r in mine:
        with Image.open(project.path("natural") / r["file"]) as im:
            assert im.mode == "RGB" and min(im.size) == 32
    err = capsys.readouterr().err
    assert "x.jpg: cannot decode the file" in err and "skipped 1 grey photo(s)" in err
    assert "y.png: 25000x20000 = 500,000,000 pixels exceeds pipeline.decode.MAX_PIXELS" in err
    # natural.count caps each counted source: the first colour photo by name only
    project.params["natural"].update(source="folder", count=1)
    project.save()
    natural.main()
    assert [r["id"] for r in read_jsonl(project.path("natural") / MANIFEST)] == ["folder-b"]
    assert sorted(p.name for p in project.path("natural").parent.iterdir()) == ["natural"]  # no .part


@pytest.mark.parametrize("folder, says", [("", "natural.folder is empty"),
                                          ("nowhere", "natural.folder is 'nowhere', which is not a folder")])
def test_natural_bad_folder_is_one_line_and_keeps_the_previous_photos(project, folder, says):
    natural.main()                                                     # the embedded photos
    before = (project.path("natural") / MANIFEST).read_bytes()
    project.params["natural"].update(source=["embedded", "folder"], folder=folder)
    project.save()
    with pytest.raises(AstroganError, match=f"^{says}: set natural.folder"):
        natural.main()
    assert (project.path("natural") / MANIFEST).read_bytes() == before
    assert not project.path("natural").with_name("natural.part").exists()


def test_natural_unknown_source_names_the_choices(project):
    project.params["natural"]["source"] = ["embedded", "flickr"]
    project.save()
    with pytest.raises(AstroganError, match=r"natural.source \['embedded', 'flickr'\]: use one or more of "
                                         "embedded, folder, coco"):
        natural.main()


# ---------------------------------------------------------------- COCO download (local server)


class RangeHandler(http.server.BaseHTTPRequestHandler):
    """Serves ``self.server.body`` with Range support; ``server.cut`` truncates the next response."""

    def do_GET(self):  # noqa: N802
        body, start = self.server.body, 0
        rng = self.headers.get("Range")
        self.server.ranges.append(rng)
        if rng:
            start = int(rng.split("=")[1].rstrip("-"))
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        chunk = body[start:]
        if self.server.cut:
            chunk, self.server.cut = chunk[: len(chunk) // 2], False
        self.wfile.write(chunk)

    def log_message(self, *args):
        pass


@pytest.fixture
def server(real_images):
    """A 127.0.0.1 server holding a tiny val2017-shaped zip of three JPEGs."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for i, p in enumerate(real_images[:3]):
            z.write(p, f"val2017/00000000{i}.jpg")
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), RangeHandler)
    srv.body, srv.ranges, srv.cut = buf.getvalue(), [], False
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    srv.url = f"http://127.0.0.1:{srv.server_address[1]}/val2017.zip"
    srv.md5 = hashlib.md5(srv.body).hexdigest()
    yield srv
    srv.shutdown()


def test_coco_download_verifies_and_caches(server, tmp_path):
    path = coco.download(server.url, server.md5, tmp_path)
    assert path.read_bytes() == server.body and not path.with_name(path.name + ".part").exists()
    coco.download(server.url, server.md5, tmp_path)
    assert server.ranges == [None]  # the second call used the cache
    names = [n for n, _ in coco.zip_photos(path, 2)]
    assert names == ["000000000.jpg", "000000001.jpg"]


def test_coco_download_resumes_a_part_file(server, tmp_path):
    part = tmp_path / "val2017.zip.part"
    part.write_bytes(server.body[:1000])
    path = coco.download(server.url, server.md5, tmp_path)
    assert server.ranges == ["bytes=1000-"] and path.read_bytes() == server.body


def test_coco_download_interrupted_then_resumed(server, tmp_path):
    server.cut = True
    with pytest.raises(coco.CocoError, match="kept for resuming"):
        coco.download(server.url, server.md5, tmp_path, timeout=5)
    got = (tmp_path / "val2017.zip.part").stat().st_size
    assert 0 < got < len(server.body)
    assert coco.download(server.url, server.md5, tmp_path).read_bytes() == server.body
    assert server.ranges == [None, f"bytes={got}-"]


def test_coco_download_md5_mismatch_deletes_part(server, tmp_path):
    with pytest.raises(coco.CocoError, match="md5"):
        coco.download(server.url, "0" * 32, tmp_path)
    assert not any(tmp_path.iterdir())
