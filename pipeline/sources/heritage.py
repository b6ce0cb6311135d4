"""Hubble Heritage releases (~150 of Hubble's best images, 1998-2016).

Two layouts, ``scrape.heritage.layout`` = ``auto`` (default) | ``legacy`` | ``current``:

- ``legacy``: the original heritage.stsci.edu site. The gallery index (``index_path``, default
  ``/gallery/gallery.html``) links each release as ``/<year>/<nn>/`` (or ``.../index.html``);
  a release page links its "High-Resolution Images" page, which links the JPEG/TIFF files
  (sizes in the link text, e.g. ``2400 x 3000``). Ids: ``heritage_<year>-<nn>``.
- ``current``: the same releases on hubblesite.org (``current_url``): a listing
  (``current_index_path``, default ``/contents/media/images?keyword=heritage``, paged with
  ``&page=<n>``) of image pages, read by the hubblesite source's parser
  (:func:`pipeline.sources.hubblesite.parse_image_page`: TIFF/PNG/JPEG downloads on
  stsci-opo.org, credit under "Credits"). Ids: ``heritage_<year>_<nn>_<id>``.

``auto`` reads the legacy index first and falls back to the current layout when that index
links no releases (heritage.stsci.edu now redirects to hubblesite.org, so the fallback is
what runs today; see docs/scraping.md). Credit: the page's own; a page without one gets
"NASA, ESA, and STScI" with ``credit_from`` saying so (not the Heritage Team, who did not make
every image in the collection); public domain unless noted (https://hubblesite.org/copyright).
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit

from bs4 import BeautifulSoup

from pipeline.errors import AstroganError
from pipeline.sources import hubblesite
from pipeline.sources.client import FetchError, PoliteClient, make_client
from pipeline.sources.common import SourceConfig
from pipeline.sources.crawl import Candidate, Download, run_source, source_id
from pipeline.sources.pages import (
    IMAGE_EXT,
    after_heading,
    dims_in,
    links,
    pick_largest,
    soup_of,
    text_of,
    tidy,
    title_of,
)

HOSTS = {"heritage.stsci.edu", *hubblesite.HOSTS}
LICENCE = hubblesite.LICENCE
DEFAULT_CREDIT = hubblesite.DEFAULT_CREDIT
LEGACY_RELEASE = re.compile(r"/(\d{4})/(\d{2})/(?:index\.html?)?$")


def fetch(out_dir: Path, cfg: SourceConfig) -> dict:
    opts = cfg.options
    base = opts.get("base_url", "https://heritage.stsci.edu").rstrip("/")
    current = opts.get("current_url", "https://hubblesite.org").rstrip("/")
    layout = opts.get("layout", "auto")
    if layout not in ("auto", "legacy", "current"):
        raise AstroganError(f"params.yaml scrape.heritage.layout: {layout!r}; use auto, legacy or current")
    client = make_client(cfg, HOSTS, current)
    return run_source(out_dir, cfg, client, lambda c: _releases(c, base, current, layout, cfg))


async def _releases(client: PoliteClient, base: str, current: str, layout: str,
                    cfg: SourceConfig) -> AsyncIterator[Candidate]:
    max_pixels = cfg.max_pixels
    if layout in ("auto", "legacy"):
        index = await client.get(base + cfg.options.get("index_path", "/gallery/gallery.html"))
        releases = legacy_releases(index.text(), index.url)
        for (year, nn), url in releases.items():
            yield _legacy_candidate(client, source_id("heritage", f"{year}-{nn}"), url, max_pixels)
        if releases or layout == "legacy":
            return
    async for cand in _current(client, current, cfg):
        yield cand


def legacy_releases(html: str, url: str) -> dict[tuple[str, str], str]:
    """``{(year, nn): release page URL}`` linked from a legacy gallery index, in page order."""
    out: dict[tuple[str, str], str] = {}
    for link in links(soup_of(html), url):
        m = LEGACY_RELEASE.search(urlsplit(link.href).path)
        if m and urlsplit(link.href).netloc == urlsplit(url).netloc:
            out.setdefault((m[1], m[2]), link.href)
    return out


def _legacy_candidate(client: PoliteClient, cid: str, url: str, max_pixels: int) -> Candidate:
    async def resolve() -> list[Download]:
        release = await client.get(url)
        soup = soup_of(release.body)
        files = file_links(soup, release.url)
        hires = [lk.href for lk in links(soup, release.url) if "high-resolution" in lk.text.lower()
                 or "high resolution" in lk.text.lower()]
        if hires:   # the gallery's "High-Resolution Images" page lists the big files
            big = await client.get(hires[0])
            files += file_links(soup_of(big.body), big.url)
        best = pick_largest(files, max_pixels)
        if best is None:
            raise FetchError(f"{release.url}: no JPEG, PNG or TIFF linked from the release or "
                             "its High-Resolution Images page")
        return [Download(cid, best, _record(soup, release.url))]
    return Candidate(cid, resolve)


async def _current(client: PoliteClient, current: str, cfg: SourceConfig) -> AsyncIterator[Candidate]:
    index = current + cfg.options.get("current_index_path", "/contents/media/images?keyword=heritage")
    async for cid, url in hubblesite.image_pages(client, index, "heritage",
                                                 int(cfg.options.get("max_pages", 0))):
        yield hubblesite.page_candidate(client, cid, url, cfg.max_pixels, "heritage", DEFAULT_CREDIT)


def file_links(soup: BeautifulSoup, url: str) -> list[tuple[str, int, int]]:
    """JPEG, PNG and TIFF links with their pixel size (from link text or file name; 0 unknown)."""
    out = []
    for link in links(soup, url):
        path = urlsplit(link.href).path.lower()
        if path.endswith(IMAGE_EXT):
            w, h = dims_in(link.text) or dims_in(path.rsplit("/", 1)[-1]) or (0, 0)
            out.append((link.href, w, h))
    return out


def _record(soup: BeautifulSoup, url: str) -> dict:
    credit = (text_of(soup.select_one(".credit, .credits")) or after_heading(soup, "Credits", "Credit")
              or _credit_line(soup))
    record = {"source": "heritage", "title": title_of(soup),
              "credit": re.sub(r"^Credits?:\s*", "", credit).strip(), "licence": LICENCE, "page": url}
    if not record["credit"]:
        record.update(credit=DEFAULT_CREDIT, credit_from="default: the page has no credit line")
    return record


def _credit_line(soup: BeautifulSoup) -> str:
    """Legacy pages put "Credit: ..." inside a plain paragraph: the rest of that paragraph."""
    for block in soup.find_all(["p", "div", "td", "li"]):
        text = text_of(block)
        if text.lower().startswith(("credit:", "credits:")) and not block.find(["p", "div", "td", "li"]):
            return tidy(text.split(":", 1)[1])
    return ""
