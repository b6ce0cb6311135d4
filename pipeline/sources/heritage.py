"""Hubble Heritage releases (~150 of Hubble's best images, 1998-2016).

Two layouts, ``scrape.heritage.layout`` = ``auto`` (default) | ``legacy`` | ``current``:

- ``legacy``: the original heritage.stsci.edu site. The gallery index (``index_path``, default
  ``/gallery/gallery.html``) links each release as ``/<year>/<nn>/`` (or ``.../index.html``);
  a release page links its "High-Resolution Images" page, which links the JPEG/TIFF files
  (sizes in the link text, e.g. ``2400 x 3000``). Ids: ``heritage_<year>-<nn>``.
- ``current``: the same releases on hubblesite.org (``current_url``): a listing
  (``current_index_path``, default ``/contents/media/images?keyword=heritage``, paged with
  ``&page=<n>``) of image pages ``/contents/media/images/<year>/<nn>/<slug>`` whose download
  links point at stsci-opo.org (text like ``Full Res, 4000 X 3000, JPG``).
  Ids: ``heritage_<year>-<nn>-<slug>``.

``auto`` reads the legacy index first and falls back to the current layout when that index
links no releases (heritage.stsci.edu now redirects to hubblesite.org, so the fallback is
what runs today; see docs/scraping.md). Credit: the page's own, else "NASA and The Hubble
Heritage Team (STScI/AURA)"; public domain unless noted (https://hubblesite.org/copyright).
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from html import unescape
from pathlib import Path
from urllib.parse import urljoin, urlsplit

from pipeline.sources.common import SourceConfig
from pipeline.sources.http import (
    IMAGE_EXT,
    Candidate,
    Download,
    FetchError,
    Page,
    PoliteClient,
    dims_in,
    make_client,
    pick_largest,
    run_source,
    source_id,
    strip_html,
)

HOSTS = {"heritage.stsci.edu", "hubblesite.org", "www.hubblesite.org", "imgsrc.hubblesite.org",
         "stsci-opo.org", "www.stsci-opo.org", "media.stsci.edu"}
LICENCE = "public domain unless noted (NASA/STScI, https://hubblesite.org/copyright)"
DEFAULT_CREDIT = "NASA and The Hubble Heritage Team (STScI/AURA)"
LEGACY_RELEASE = re.compile(r"/(\d{4})/(\d{2})/(?:index\.html?)?$")
CURRENT_IMAGE = re.compile(r"/contents/media/images/(\d{4})/(\d+)/([^/?#]+)/?$")


def fetch(out_dir: Path, cfg: SourceConfig) -> dict:
    opts = cfg.options
    base = opts.get("base_url", "https://heritage.stsci.edu").rstrip("/")
    current = opts.get("current_url", "https://hubblesite.org").rstrip("/")
    layout = opts.get("layout", "auto")
    if layout not in ("auto", "legacy", "current"):
        raise SystemExit(f"params.yaml scrape.heritage.layout: {layout!r}; use auto, legacy or current")
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
    for link in Page(html, url).links:
        m = LEGACY_RELEASE.search(urlsplit(link.href).path)
        if m and urlsplit(link.href).netloc == urlsplit(url).netloc:
            out.setdefault((m[1], m[2]), link.href)
    return out


def _legacy_candidate(client: PoliteClient, cid: str, url: str, max_pixels: int) -> Candidate:
    async def resolve() -> list[Download]:
        release = await client.get(url)
        page = Page(release.text(), release.url)
        files = file_links(page)
        hires = [lk.href for lk in page.links if "high-resolution" in lk.text.lower()
                 or "high resolution" in lk.text.lower()]
        if hires:   # the gallery's "High-Resolution Images" page lists the big files
            big = await client.get(hires[0])
            files += file_links(Page(big.text(), big.url))
        best = pick_largest(files, max_pixels)
        if best is None:
            raise FetchError(f"{release.url}: no JPEG linked from the release or its "
                             "High-Resolution Images page")
        return [Download(cid, best, _record(page, release.text(), release.url))]
    return Candidate(cid, resolve)


async def _current(client: PoliteClient, current: str, cfg: SourceConfig) -> AsyncIterator[Candidate]:
    path = cfg.options.get("current_index_path", "/contents/media/images?keyword=heritage")
    max_pages = int(cfg.options.get("max_pages", 0))
    seen: set[str] = set()
    page_n = 1
    while max_pages <= 0 or page_n <= max_pages:
        sep = "&" if "?" in path else "?"
        url = current + path + (f"{sep}page={page_n}" if page_n > 1 else "")
        listing = await client.get(url)
        new = 0
        for link in Page(listing.text(), listing.url).links:
            m = CURRENT_IMAGE.search(urlsplit(link.href).path)
            if m and link.href not in seen:
                seen.add(link.href)
                new += 1
                cid = source_id("heritage", f"{m[1]}-{m[2]}-{m[3]}")
                yield _current_candidate(client, cid, link.href, cfg.max_pixels)
        if not new:
            return
        page_n += 1


def _current_candidate(client: PoliteClient, cid: str, url: str, max_pixels: int) -> Candidate:
    async def resolve() -> list[Download]:
        resp = await client.get(url)
        page = Page(resp.text(), resp.url)
        best = pick_largest(file_links(page), max_pixels)
        if best is None:
            raise FetchError(f"{resp.url}: no JPEG download link on the image page")
        return [Download(cid, best, _record(page, resp.text(), resp.url))]
    return Candidate(cid, resolve)


def file_links(page: Page) -> list[tuple[str, int, int]]:
    """JPEG links on a page with their pixel size (from link text or file name; 0 unknown)."""
    out = []
    for link in page.links:
        path = urlsplit(link.href).path.lower()
        if path.endswith(IMAGE_EXT) and path.endswith((".jpg", ".jpeg")):
            w, h = dims_in(link.text) or dims_in(path.rsplit("/", 1)[-1]) or (0, 0)
            out.append((urljoin(page.url, link.href), w, h))
    return out


def _record(page: Page, html: str, url: str) -> dict:
    credit = page.text_of("credit") or page.text_of("credits")
    if not credit:
        # Legacy pages put "Credit: ..." in plain paragraphs: one line of the tag-free text.
        text = re.sub(r"<(?:br|/?p|/?div|/?li|/?tr|/?td|/?h\d)\b[^>]*>", "\n", html, flags=re.I)
        text = re.sub(r"<[^>]+>", "", text)
        m = re.search(r"Credits?:[ \t]*\n*[ \t]*([^\n]{5,300})", text)
        credit = strip_html(unescape(m[1])) if m else ""
    credit = re.sub(r"^Credits?:\s*", "", credit).strip() or DEFAULT_CREDIT
    return {"source": "heritage", "title": page.h1 or page.title, "credit": credit,
            "licence": LICENCE, "page": url}
