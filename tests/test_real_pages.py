"""The parsers on real saved pages (tests/fixtures/, see its README), and a crawl of them end to end."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.fsio import MANIFEST, read_jsonl
from pipeline.sources import esahubble, heritage, hubblesite
from pipeline.sources.client import FetchError, PoliteClient
from pipeline.sources.common import store_image
from pipeline.stages import dedup
from tests.fakesites import FIXTURES, HS_PAGES, FakeSites
from tests.test_scrapers import check_manifest, run

ROOT = Path(__file__).resolve().parents[1]
OPO = "https://stsci-opo.org/STScI-01"
# page -> (title, credit as on the page, largest file within 16 MP, within 1 MP the smallest above)
HUBBLESITE = {
    "2020/07/4622-Image": ("Illustration of Dwarf Nova System", "NASA and L. Hustak (STScI)",
                           "EVSTVNMACR5WTD5F44F7VPK4.png", "EVSTVMRN7WT62EYZ99T58FCK.png"),
    # two <h1>; full resolution only as PNG and TIFF, annotated and not: the unannotated PNG wins
    "2022/054/01GGT9JB74B5FXX95WGM0285E5": (
        "Lensed Supernova in Abell 370",
        "SCIENCE: NASA, ESA, STScI, Wenlei Chen (UMN), Patrick Kelly (UMN), Hubble Frontier Fields",
        "GGT9SNKSM5RZGA5G7RP34XCV.png", "GGT9TZJC2031623AM72RSVY8.png"),
    # a gallery page: no year in its URL, no credit line on the page
    "4652-Image": ("Cosmic Reef (STScI Gallery Image)", "",
                   "EVSTGZWZNCX0WKBETW5FXZ33.png", "EVSTGY3E1YGZ1SB5Z8EZ7624.png"),
}


def test_every_saved_hubblesite_page_has_an_expectation():
    assert set(HS_PAGES) == set(HUBBLESITE)


@pytest.mark.parametrize("key", sorted(HUBBLESITE))
def test_hubblesite_image_page(key):
    title, credit, best16, best1 = HUBBLESITE[key]
    url = f"https://hubblesite.org/contents/media/images/{key}"
    html = HS_PAGES[key].read_bytes()
    best, record = hubblesite.parse_image_page(html, url, 16_000_000)
    assert best == OPO + best16
    assert hubblesite.parse_image_page(html, url, 1_000_000)[0] == OPO + best1
    assert record["title"] == title and record["credit"] == credit
    assert record["licence"] == hubblesite.LICENCE
    assert record["licence_url"] == "https://hubblesite.org/copyright"
    assert hubblesite.IMAGE_PAGE.search(f"/contents/media/images/{key}")[1] == key


def test_esahubble_image_page():
    html = (FIXTURES / "esahubble" / "potw2319a.html").read_text()
    best, record = esahubble.parse_image_page(html, "https://esahubble.org/images/potw2319a/", 16_000_000)
    assert best == "https://cdn.spacetelescope.org/archives/images/large/potw2319a.jpg"  # 2839 x 2389
    assert record["title"] == "Cosmic leviathan"
    assert record["credit"] == "ESA/Hubble & NASA, H. Ebeling" and record["licence"] == esahubble.LICENCE
    assert esahubble.parse_image_page(html, "https://esahubble.org/images/potw2319a/", 2_000_000)[0] \
        == "https://cdn.spacetelescope.org/archives/images/screen/potw2319a.jpg"


def test_hubblesite_crawl_of_the_saved_pages(tmp_path):
    with FakeSites(n=1) as sites:
        s = run("hubblesite", tmp_path, sites)
        host = f"127.0.0.1:{sites.port}"
    assert (s["fetched"], s["failed"]) == (len(HUBBLESITE), 0)
    rows = {r["id"]: r for r in check_manifest(tmp_path)}
    for key, (title, credit, best16, _) in HUBBLESITE.items():
        r = rows["hubblesite_" + key.replace("/", "_")]
        assert r["url"] == f"http://{host}/opo/STScI-01{best16}" and r["file"].endswith(".png")
        assert r["title"] == title and r["licence"] == hubblesite.LICENCE
        assert r["credit"] == (credit or hubblesite.DEFAULT_CREDIT)
        assert ("credit_from" in r) == (not credit)


def test_heritage_current_layout_reads_the_same_pages(tmp_path):
    with FakeSites(n=1) as sites:
        s = run("heritage", tmp_path, sites, layout="current", current_url=sites.url)
    assert s["fetched"] == len(HUBBLESITE)
    credits = {r["credit"] for r in check_manifest(tmp_path)}
    assert "NASA and L. Hustak (STScI)" in credits and heritage.DEFAULT_CREDIT in credits
    assert not any("Heritage Team" in c for c in credits)


def test_esahubble_pages_mode_on_the_saved_page(tmp_path):
    with FakeSites(n=0, extra_esa_ids=("potw2319a",)) as sites:
        s = run("esahubble", tmp_path, sites, mode="pages")
    assert s["fetched"] == 1
    (r,) = check_manifest(tmp_path)
    assert r["url"].endswith("/archives/images/large/potw2319a.jpg")
    assert (r["title"], r["credit"]) == ("Cosmic leviathan", "ESA/Hubble & NASA, H. Ebeling")


def test_allow_list_takes_the_hosts_real_pages_use_and_nothing_else():
    client = PoliteClient(hubblesite.HOSTS)
    for url in ("https://hubblesite.org/contents/media/images/4652-Image",
                "https://stsci-opo.org/STScI-01EVSTGZWZNCX0WKBETW5FXZ33.png",
                "https://science.nasa.gov/asset/hubble/cosmic-reef/",
                "https://assets.science.nasa.gov/content/dam/science/missions/hubble/x.jpg"):
        client.check_allowed(url)
    with pytest.raises(FetchError, match="allow-list"):
        client.check_allowed("https://science.nasa.gov.example.com/x.png")


def test_hubblesite_page_faults_and_a_foreign_redirect(tmp_path):
    with FakeSites(n=1) as sites, FakeSites(n=1) as foreign:
        sites.retry_after, sites.foreign = "0", foreign.url
        sites.faults = {"/contents/media/images/2020/07/4622-Image": ["429", "reset"],
                        "/opo/STScI-01GGT9SNKSM5RZGA5G7RP34XCV.png": ["truncate", "503"],
                        "/contents/media/images/4652-Image": ["foreign"] * 10}
        s = run("hubblesite", tmp_path, sites)
        assert foreign.log == []
    assert (s["fetched"], s["failed"]) == (2, 1)
    (failed,) = read_jsonl(tmp_path / "failed.jsonl")
    assert failed["id"] == "hubblesite_4652-Image" and "allow-list" in failed["reason"]
    check_manifest(tmp_path)


def _tiff16(a: np.ndarray, **kw) -> bytes:
    import tifffile

    buf = io.BytesIO()
    tifffile.imwrite(buf, a, photometric="rgb" if a.ndim == 3 else "minisblack", **kw)
    return buf.getvalue()


def test_16_bit_tiff_and_png_are_scaled_not_clipped(tmp_path):
    ramp = np.linspace(0, 65535, 64 * 48).reshape(48, 64).astype(np.uint16)
    rgb = np.stack([ramp, ramp // 2, 65535 - ramp], axis=-1)
    # within the cap: the file is kept as it is, 16-bit samples and all
    data = _tiff16(rgb)
    r = store_image(tmp_path, "kept", data, {"url": "u.tif"}, max_pixels=0)
    assert r["file"] == "kept.tif" and (tmp_path / "kept.tif").read_bytes() == data
    # planar 16-bit colour, which Pillow garbles: decoded by tifffile, stored as 8-bit PNG
    r = store_image(tmp_path, "planar", _tiff16(np.moveaxis(rgb, -1, 0), planarconfig="separate"),
                    {"url": "p.tif"},
                    max_pixels=0)
    got = np.asarray(Image.open(tmp_path / r["file"]))
    assert r["file"] == "planar.png" and got.dtype == np.uint8 and got.shape == (48, 64, 3)
    assert np.abs(got.astype(int) - (rgb / 257).round()).max() <= 1
    assert r["derived"].startswith("16-bit planar or float colour TIFF")
    r = store_image(tmp_path, "float", _tiff16(rgb.astype(np.float32)), {"url": "f.tif"}, max_pixels=0)
    assert r["file"] == "float.png"
    # above the cap: downscaled from the scaled decode (Pillow's convert would clip to white)
    grey = (ramp // 16).astype(np.uint16)     # 12-bit data in a 16-bit PNG: dark, not white
    buf = io.BytesIO()
    Image.fromarray(grey).save(buf, "PNG")
    r = store_image(tmp_path, "g16", buf.getvalue(), {"url": "u.png"}, max_pixels=16 * 12)
    got = np.asarray(Image.open(tmp_path / r["file"]))
    assert (r["width"], r["height"]) == (16, 12) and r["derived"].startswith("downscaled from 64x48")
    assert got.dtype == np.uint8 and 0 < got.max() <= round(4095 / 257)
    r = store_image(tmp_path, "big", _tiff16(rgb), {"url": "u.tif"}, max_pixels=16 * 12)
    got = np.asarray(Image.open(tmp_path / r["file"])).astype(float)
    assert r["file"] == "big.png" and abs(got[..., 0].mean() - (rgb[..., 0] / 257).mean()) < 3


def test_scrape_stage_on_the_saved_pages_then_dedup(project):
    """What ``dvc repro scrape@hubblesite dedup`` runs, with base_url on the local server."""
    with FakeSites(n=1) as sites:
        project.params["scrape"].update(sources=["hubblesite"], rate_per_s=0, retries=2)
        project.params["scrape"]["hubblesite"] = {"base_url": sites.url, "backoff_s": 0.01}
        project.save()
        out = subprocess.run([sys.executable, "-m", "pipeline.stages.scrape", "hubblesite"], cwd=ROOT,
                             env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True,
                             text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(f"scrape hubblesite: fetched {len(HUBBLESITE)}, skipped 0, failed 0")
    raw = project.path("raw")
    assert len(read_jsonl(raw / "hubblesite" / MANIFEST)) == len(HUBBLESITE)
    kept, dropped = dedup.run(raw, ["hubblesite"], 8, 6)
    assert len(kept) == len(HUBBLESITE) and dropped == []
