"""Web scrapers against a local archive server (tests/fakesites.py) that serves real saved pages
(tests/fixtures/) where we have them, with fault injection."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.fsio import read_jsonl, sha256_file
from pipeline.sources import get_source
from pipeline.sources.client import netloc, parse_retry_after
from pipeline.sources.common import BadImage, SourceConfig
from pipeline.sources.hla import store_fits
from pipeline.sources.pages import after_heading, dims_in, links, pick_largest, soup_of, title_of
from tests.fakesites import HS_PAGES, FakeSites, jpeg_bytes

ROOT = Path(__file__).resolve().parents[1]


def make_cfg(name: str, sites: FakeSites, *, limit: int = 0, max_pixels: int = 16_000_000,
             timeout_s: float = 5.0, **opts) -> SourceConfig:
    options = {"base_url": sites.url, "backoff_s": 0.01, **opts}
    if name == "hla":
        options.setdefault("targets", ["M101"])
        options.setdefault("resolver_url", sites.url + "/cgi-bin/nph-sesame/-oI/A")
    return SourceConfig(name=name, limit=limit, max_pixels=max_pixels, options=options,
                        concurrency=4, rate_per_s=0, timeout_s=timeout_s, retries=4)


def run(name: str, out: Path, sites: FakeSites, **kw) -> dict:
    return get_source(name)(out, make_cfg(name, sites, **kw))


def check_manifest(out: Path) -> list[dict]:
    """Every record unique, its file present, complete and matching its checksum."""
    rows = read_jsonl(out / "manifest.jsonl")
    ids = [r["id"] for r in rows]
    assert len(ids) == len(set(ids)), "an id was stored twice"
    for r in rows:
        assert (out / r["file"]).is_file() and sha256_file(out / r["file"]) == r["sha256"]
        assert r["credit"] and r["licence"] and r["source"]
    assert not list(out.glob("*.part")) and not list(out.glob(".*.part"))
    return rows


@pytest.fixture
def sites():
    with FakeSites(n=6) as s:
        yield s


SOURCES = [("esahubble", {}), ("esahubble", {"mode": "pages"}), ("hubblesite", {}),
           ("heritage", {}), ("heritage", {"layout": "current"}), ("hla", {"fits": True})]


@pytest.mark.parametrize(("name", "opts"), SOURCES, ids=[f"{n}-{o}" for n, o in SOURCES])
def test_every_source_collects_and_reruns_without_refetching(name, opts, sites, tmp_path):
    if opts.get("layout") == "current":
        opts = {**opts, "current_url": sites.url}
    s1 = run(name, tmp_path, sites, **opts)
    rows = check_manifest(tmp_path)
    images = [r for r in rows if r["kind"] == "image"]
    # HLA: two visits around M101; hubblesite and heritage's current layout: the real saved pages
    expected = {"hla": 2, "hubblesite": len(HS_PAGES)}.get(name, 6)
    if opts.get("layout") == "current":
        expected = len(HS_PAGES)
    assert s1["fetched"] == len(images) == expected and s1["failed"] == 0
    assert all(r["id"].startswith(name + "_") for r in rows)
    if name == "hla":   # 3 bands + 1 band, FITS beside the previews, never PIL-decoded
        fits = [r for r in rows if r["kind"] == "fits"]
        assert len(fits) == 4 and all(r["id"].endswith("-fits") and r["file"].endswith(".fits")
                                      for r in fits)
        assert {r["preview"] for r in fits} == {r["id"] for r in images}
    n_logged = len(sites.log)
    s2 = run(name, tmp_path, sites, **opts)
    assert s2["fetched"] == 0 and s2["skipped"] == expected
    files_after = [p for p in sites.log[n_logged:] if not p.startswith("/robots.txt")]
    # A rerun reads listings only: no image page, no file is fetched again.
    assert not any(p.endswith((".jpg", ".png", ".tif", ".fits")) or "fitscut" in p
                   or "/api/v3/image/" in p or "/contents/media/images/" in p
                   for p in files_after), files_after


@pytest.mark.parametrize(("max_pixels", "fmt"), [(16_000_000, "publicationjpg"),
                                                 (100_000_000, "large"), (1_000_000, "screen")])
@pytest.mark.parametrize("mode", ["feed", "pages"])
def test_esahubble_picks_largest_jpeg_within_max_pixels(mode, max_pixels, fmt, sites, tmp_path):
    run("esahubble", tmp_path, sites, mode=mode, max_pixels=max_pixels, limit=1)
    (row,) = read_jsonl(tmp_path / "manifest.jsonl")
    assert f"/archives/images/{fmt}/" in row["url"] and row["url"].endswith(".jpg")


def test_faults_are_retried_and_nothing_partial_is_kept(sites, tmp_path):
    files = [f"/archives/images/publicationjpg/heic100{i}a.jpg" for i in range(6)]
    sites.retry_after = "0"
    sites.hang_s = 1.5
    sites.faults = {files[0]: ["429", "503", "503"], files[1]: ["reset", "reset"],
                    files[2]: ["truncate", "truncate"], files[3]: ["timeout"],
                    files[4]: ["html"], "/images/d2d/": ["503"]}
    s = run("esahubble", tmp_path, sites, timeout_s=0.5)
    assert s["fetched"] == 5 and s["failed"] == 1
    (failed,) = read_jsonl(tmp_path / "failed.jsonl")
    assert failed["id"] == "esahubble_heic1004a" and "HTML" in failed["reason"]
    rows = check_manifest(tmp_path)
    assert len(rows) == 5
    # Truncated bodies never stored: the stored bytes are the full file the server sends.
    r2 = next(r for r in rows if r["id"] == "esahubble_heic1002a")
    assert (tmp_path / r2["file"]).read_bytes() == jpeg_bytes(files[2])
    s = run("esahubble", tmp_path, sites)   # the rerun retries only what failed
    assert s["fetched"] == 1 and s["skipped"] == 5
    assert read_jsonl(tmp_path / "failed.jsonl") == []
    assert sites.hits(files[5])[files[5]] == 1


def test_retry_after_is_honoured(sites, tmp_path):
    path = "/archives/images/publicationjpg/heic1000a.jpg"
    sites.faults = {path: ["429"]}
    sites.retry_after = "1"
    t0 = time.perf_counter()
    s = run("esahubble", tmp_path, sites, limit=1)
    assert s["fetched"] == 1 and time.perf_counter() - t0 >= 0.95
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0
    assert parse_retry_after("7") == 7.0 and parse_retry_after("soon") is None


def test_redirects_to_foreign_hosts_are_not_followed(sites, tmp_path):
    with FakeSites(n=1) as foreign:
        sites.foreign = foreign.url
        path = "/archives/images/publicationjpg/heic1001a.jpg"
        sites.faults = {path: ["foreign"] * 10}
        s = run("esahubble", tmp_path, sites)
        assert s["fetched"] == 5 and s["failed"] == 1
        assert foreign.log == []
    (failed,) = read_jsonl(tmp_path / "failed.jsonl")
    assert "allow-list" in failed["reason"] and netloc(foreign.url) in failed["reason"]


def test_robots_txt_is_obeyed(sites, tmp_path):
    banned = "/archives/images/publicationjpg/heic1003a.jpg"
    sites.robots = f"User-agent: *\nDisallow: {banned}\n"
    s = run("esahubble", tmp_path, sites)
    assert s["fetched"] == 5 and sites.hits(banned) == {}
    assert "robots.txt" in read_jsonl(tmp_path / "failed.jsonl")[0]["reason"]


def test_hostile_ids_stay_inside_the_output_folder(tmp_path):
    with FakeSites(n=1, extra_esa_ids=("../../etc/passwd", "..")) as sites:
        out = tmp_path / "esahubble"
        s = run("esahubble", out, sites)
    assert s["fetched"] == 3
    ids = {r["id"] for r in check_manifest(out)}
    assert ids == {"esahubble_heic1000a", "esahubble_etc_passwd", "esahubble_unnamed"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["esahubble"]


def test_limit_tops_up_on_rerun(sites, tmp_path):
    assert run("hubblesite", tmp_path, sites, mode="api", limit=2)["fetched"] == 2
    assert run("hubblesite", tmp_path, sites, mode="api", limit=5)["fetched"] == 3
    assert len(check_manifest(tmp_path)) == 5


KILL_SCRIPT = """
import json, sys
from pathlib import Path
from pipeline.sources import get_source
from pipeline.sources.common import SourceConfig
cfg = SourceConfig(**json.loads(sys.argv[2]))
get_source(cfg.name)(Path(sys.argv[1]), cfg)
"""


def test_killed_run_resumes_without_loss_or_duplicates(tmp_path):
    with FakeSites(n=16, per_page=4, latency=0.05) as sites:
        cfg = {"name": "esahubble", "concurrency": 2, "rate_per_s": 0, "retries": 2,
               "options": {"base_url": sites.url, "backoff_s": 0.01}}
        proc = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, str(tmp_path), json.dumps(cfg)],
                                cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        manifest = tmp_path / "manifest.jsonl"
        deadline = time.time() + 20
        while time.time() < deadline and len(read_jsonl(manifest)) < 4:
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        before = {r["id"] for r in check_manifest(tmp_path)}
        assert 4 <= len(before) < 16, "the kill should land mid-way"
        mark = len(sites.log)
        s = get_source("esahubble")(tmp_path, SourceConfig(**cfg))
        again = sites.log[mark:]
    rows = check_manifest(tmp_path)
    assert {r["id"] for r in rows} == {f"esahubble_heic{1000 + i}a" for i in range(16)}
    assert s["skipped"] == len(before) and s["fetched"] == 16 - len(before)
    for image_id in before:   # what was stored before the kill is never fetched again
        assert not any(image_id.removeprefix("esahubble_") + ".jpg" in p for p in again)


def test_html_helpers():
    soup = soup_of('<div class="a b"><span class="c"><a href="//cdn.x.org/f.jpg">Large JPEG</a></span>'
                   '<p>Size: 8,919 x 6,683 px</p></div><h1 class="sr-only">Title</h1><h1>Title</h1>'
                   '<h3>Credits</h3><p><a href="x">NASA</a> , ESA (<a>STScI</a> )</p><h3>Keywords</h3>')
    (link, _) = links(soup, "https://x.org/images/1/")
    assert link.href == "https://cdn.x.org/f.jpg" and link.text == "Large JPEG"
    assert dims_in(soup.select_one("div.a").get_text(" ")) == (8919, 6683)
    assert title_of(soup) == "Title"   # two <h1> with the same text: the title once
    assert after_heading(soup, "Credits") == "NASA, ESA (STScI)"
    assert pick_largest([("a", 100, 100), ("b", 10, 10), ("c", 0, 0)], 5000) == "b"
    assert pick_largest([("a", 100, 100), ("b", 90, 90)], 50) == "b"
    assert pick_largest([("tif", 90, 90, 0.2), ("png", 90, 90, 0.3), ("jpg", 90, 90, 0.1)], 0) == "png"
    assert netloc("https://Esahubble.org:443/x") == "esahubble.org"


def test_store_fits_rejects_html_and_garbage(tmp_path):
    with pytest.raises(BadImage, match="HTML"):
        store_fits(tmp_path, "x-fits", b"<html>oops</html>", {"url": "u"})
    with pytest.raises(BadImage, match="FITS"):
        store_fits(tmp_path, "x-fits", b"SIMPLE  = T" + b" " * 100, {"url": "u"})
    assert list(tmp_path.iterdir()) == []
