"""NASA's hubblesite.org image releases, read from their image pages.

``scrape.hubblesite.mode``:

- ``pages`` (default): the image listing ``<base_url><index_path>`` (default
  ``/images?itemsPerPage=100``, then ``&page=<n>``) links image pages
  ``/contents/media/images/<year>/<nn>/<id>`` or, for gallery images, ``/contents/media/images/<id>``.
  An image page (checked against real copies, docs/scraping.md) has its title in ``<h1>`` (some
  pages have a second, screen-reader-only ``<h1>`` with the same text), its downloads in
  ``div.media-library-links-list a`` with text like ``Full Res, 3840 X 2160, TIF (23.74 MB)``, and
  its credit under a heading ``Credits`` (no colon). Many releases offer full resolution only as
  TIFF and PNG; a JPEG, when there is one, is smaller. Files live on stsci-opo.org, linked
  protocol-relative (``//stsci-opo.org/STScI-01....tif``).
- ``api``: the HubbleSite API v3 (``/api/v3/images?page=n``, ``/api/v3/image/<id>``) that the site
  served until its redesign; kept for mirrors of it.

Either way the largest JPEG, PNG or TIFF within ``scrape.max_pixels`` is fetched; at equal size an
unannotated version beats an annotated one, then PNG beats TIFF beats JPEG. hubblesite.org is
moving to science.nasa.gov, so redirects to science.nasa.gov and assets.science.nasa.gov are
followed; every other host is refused. STScI/NASA material is public domain unless its credit says
otherwise (https://hubblesite.org/copyright); the page's credit line is kept per image.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlencode, urljoin, urlsplit

from pipeline.errors import AstroganError
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
    strip_html,
    title_of,
)

HOSTS = {"hubblesite.org", "www.hubblesite.org", "imgsrc.hubblesite.org", "media.stsci.edu",
         "stsci-opo.org", "www.stsci-opo.org", "science.nasa.gov", "assets.science.nasa.gov"}
LICENCE = "public domain unless noted (NASA/STScI, https://hubblesite.org/copyright)"
DEFAULT_CREDIT = "NASA, ESA, and STScI"
IMAGE_PAGE = re.compile(r"/contents/media/images/((?:\d{4}/\d+/)?[^/?#]+?)(?:\.html?)?/?$")
_FORMAT_RANK = {".png": 0.3, ".tif": 0.2, ".tiff": 0.2, ".jpg": 0.1, ".jpeg": 0.1}


def fetch(out_dir: Path, cfg: SourceConfig) -> dict:
    base = cfg.options.get("base_url", "https://hubblesite.org").rstrip("/")
    mode = cfg.options.get("mode", "pages")
    if mode not in ("pages", "api"):
        raise AstroganError(f"params.yaml scrape.hubblesite.mode: {mode!r}; use pages or api")
    client = make_client(cfg, HOSTS)
    lister = _listing if mode == "pages" else _api_images
    return run_source(out_dir, cfg, client, lambda c: lister(c, base, cfg))


# ---------------------------------------------------------------------------- image pages

async def _listing(client: PoliteClient, base: str, cfg: SourceConfig) -> AsyncIterator[Candidate]:
    index = base + cfg.options.get("index_path", "/images?itemsPerPage=100")
    async for cid, url in image_pages(client, index, "hubblesite", int(cfg.options.get("max_pages", 0))):
        yield page_candidate(client, cid, url, cfg.max_pixels, "hubblesite", DEFAULT_CREDIT)


async def image_pages(client: PoliteClient, index_url: str, prefix: str,
                      max_pages: int) -> AsyncIterator[tuple[str, str]]:
    """``(id, image page URL)`` for every image page linked from the paged listing at ``index_url``."""
    seen: set[str] = set()
    page_n = 1
    while max_pages <= 0 or page_n <= max_pages:
        sep = "&" if "?" in index_url else "?"
        listing = await client.get(index_url + (f"{sep}page={page_n}" if page_n > 1 else ""))
        new = 0
        for link in links(soup_of(listing.body), listing.url):
            m = IMAGE_PAGE.search(urlsplit(link.href).path)
            if m and link.href not in seen:
                seen.add(link.href)
                new += 1
                yield source_id(prefix, m[1]), link.href
        if not new:
            return
        page_n += 1


def page_candidate(client: PoliteClient, cid: str, url: str, max_pixels: int, source: str,
                   default_credit: str) -> Candidate:
    async def resolve() -> list[Download]:
        resp = await client.get(url)
        best, record = parse_image_page(resp.body, resp.url, max_pixels)
        if best is None:
            raise FetchError(f"{resp.url}: no JPEG, PNG or TIFF download link on the image page "
                             "(div.media-library-links-list)")
        if not record["credit"]:
            record.update(credit=default_credit, credit_from="default: the page has no credit line")
        return [Download(cid, best, {**record, "source": source})]
    return Candidate(cid, resolve)


def parse_image_page(html: str | bytes, url: str, max_pixels: int) -> tuple[str | None, dict]:
    """(URL of the largest image download within ``max_pixels``, record) from an image page.

    The record's credit is the page's own (``""`` when it has none).
    """
    soup = soup_of(html)
    box = soup.select_one("div.media-library-links-list")
    options = []
    for link in links(box or soup, url):
        path = urlsplit(link.href).path.lower()
        if not path.endswith(IMAGE_EXT):
            continue
        dims = dims_in(link.text) or dims_in(path.rsplit("/", 1)[-1])
        if dims or box is not None:   # outside the download box only labelled files count
            options.append((link.href, *(dims or (0, 0)), _rank(link.text, path)))
    terms = soup.select_one('a[href*="copyright"]')
    record = {"title": title_of(soup), "credit": after_heading(soup, "Credits", "Credit"),
              "licence": LICENCE, "page": url}
    if terms is not None:
        record["licence_url"] = urljoin(url, terms["href"])
    return pick_largest(options, max_pixels), record


def _rank(text: str, path: str) -> float:
    """Tie-break at equal pixels: unannotated first (labels are not sky), then PNG, TIFF, JPEG."""
    t = text.lower()
    plain = "unannotated" in t or "uannoatated" in t   # the second spelling is on real pages
    score = 1.0 if plain else (-1.0 if "annotated" in t or "compass" in t else 0.0)
    return score + _FORMAT_RANK.get(path[path.rfind("."):], 0.0)


# ---------------------------------------------------------------------------- API v3

async def _api_images(client: PoliteClient, base: str, cfg: SourceConfig) -> AsyncIterator[Candidate]:
    collection = cfg.options.get("collection") or ""
    max_pages = int(cfg.options.get("max_pages", 0))
    page = 1
    while max_pages <= 0 or page <= max_pages:
        query = {"page": page, **({"collection_name": collection} if collection else {})}
        rows = (await client.get(f"{base}/api/v3/images?{urlencode(query)}")).json()
        if not isinstance(rows, list) or not rows:
            return
        for row in rows:
            if isinstance(row, dict) and row.get("id") is not None:
                if row.get("mission", "hubble") in ("hubble", None, ""):
                    yield _api_candidate(client, base, row, cfg.max_pixels)
        page += 1


def _api_candidate(client: PoliteClient, base: str, row: dict, max_pixels: int) -> Candidate:
    cid = source_id("hubblesite", row["id"])

    async def resolve() -> list[Download]:
        resp = await client.get(f"{base}/api/v3/image/{row['id']}")
        doc = resp.json()
        if not isinstance(doc, dict):
            raise FetchError(f"{resp.url}: expected an image object, got {type(doc).__name__}")
        if doc.get("mission") not in (None, "", "hubble"):
            raise FetchError(f"{resp.url}: mission {doc.get('mission')!r} is not Hubble; skipped")
        best = pick_largest(image_files(doc, resp.url), max_pixels)
        if best is None:
            raise FetchError(f"{resp.url}: no JPEG, PNG or TIFF in image_files")
        credit = strip_html(str(doc.get("credits") or ""))
        record = {"source": "hubblesite", "title": str(doc.get("name") or row.get("name") or cid),
                  "credit": credit or DEFAULT_CREDIT, "licence": LICENCE, "page": resp.url}
        if not credit:
            record["credit_from"] = "default: the API gave no credits"
        return [Download(cid, best, record)]
    return Candidate(cid, resolve)


def image_files(doc: dict, page_url: str) -> list[tuple[str, int, int, float]]:
    """``(absolute url, width, height, rank)`` of every JPEG, PNG or TIFF attachment."""
    out = []
    for f in doc.get("image_files") or []:
        url = urljoin(page_url, str(f.get("file_url") or ""))
        path = urlsplit(url).path.lower()
        if path.endswith(IMAGE_EXT):
            try:
                w, h = int(f.get("width") or 0), int(f.get("height") or 0)
            except (TypeError, ValueError):
                w = h = 0
            out.append((url, w, h, _rank("", path)))
    return out
