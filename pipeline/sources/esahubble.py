"""ESA/Hubble image archive (esahubble.org), CC BY 4.0.

Two ways in, chosen by ``scrape.esahubble.mode``:

- ``feed`` (default): the archive's JSON "d2d" feed, ``<base_url>/images/d2d/``, which pages with a
  ``Next`` URL and lists each image with ``Title``, ``Credit``, ``Rights`` and
  ``Assets[].Resources[]`` (``ResourceType``, ``URL``, ``FileSize``, ``Dimensions``). One request per
  image (its file) plus one per feed page. The endpoint is Djangoplicity's (the CMS behind
  esahubble.org), named by its maintainers in djangoplicity/djangoplicity issue #147.
- ``pages``: the HTML listing ``<base_url>/images/`` (then ``/images/page/<n>/``) and each image
  page ``/images/<id>/``: title in ``h1``, credit in ``div.credit``, pixel size in the
  ``div.object-info`` table, downloads in ``div.archive_download span.archive_dl_text a``
  ("Fullsize Original" TIFF, "Large JPEG", "Publication JPEG", "Screensize JPEG"...).

Either way the largest JPEG within ``scrape.max_pixels`` is fetched (the TIFF original never:
a JPEG of the same pixels is a tenth of the bytes). Files live on cdn.esahubble.org (formerly
cdn.spacetelescope.org), often linked protocol-relative (``//cdn...``): resolved with urljoin.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urljoin, urlsplit

from pipeline.errors import AstroganError
from pipeline.sources.client import FetchError, PoliteClient, make_client
from pipeline.sources.common import SourceConfig
from pipeline.sources.crawl import Candidate, Download, run_source, source_id
from pipeline.sources.pages import dims_in, links, pick_largest, soup_of, strip_html, text_of, title_of

HOSTS = {"esahubble.org", "www.esahubble.org", "cdn.esahubble.org",
         "spacetelescope.org", "www.spacetelescope.org", "cdn.spacetelescope.org"}
LICENCE = "CC BY 4.0 (https://creativecommons.org/licenses/by/4.0/)"
DEFAULT_CREDIT = "ESA/Hubble"
# Widths of Djangoplicity's derived JPEG formats (the folder in the file URL): "large" is the
# full-size JPEG, "publicationjpg" is 4000 px wide, "screen" 1280 px. Others are not wanted.
FORMAT_WIDTH = {"large": None, "publicationjpg": 4000, "screen": 1280}
_RESERVED = {"page", "archive", "d2d", "search", "viewall", "potw", "feed", "category", "zoomable",
             "comparisons", "top100", "wallpapers"}
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def fetch(out_dir: Path, cfg: SourceConfig) -> dict:
    base = cfg.options.get("base_url", "https://esahubble.org").rstrip("/")
    client = make_client(cfg, HOSTS)
    mode = cfg.options.get("mode", "feed")
    if mode not in ("feed", "pages"):
        raise AstroganError(f"params.yaml scrape.esahubble.mode: {mode!r}; use feed or pages")
    lister = _feed if mode == "feed" else _listing
    return run_source(out_dir, cfg, client, lambda c: lister(c, base, cfg))


# ---------------------------------------------------------------------------- JSON feed

async def _feed(client: PoliteClient, base: str, cfg: SourceConfig) -> AsyncIterator[Candidate]:
    url: str | None = f"{base}/images/d2d/"
    visited: set[str] = set()
    while url and url not in visited:   # a feed whose Next loops back must not spin forever
        visited.add(url)
        doc = (await client.get(url)).json()
        for item in feed_items(doc):
            yield _feed_candidate(item, url, cfg.max_pixels)
        nxt = doc.get("Next") if isinstance(doc, dict) else None
        url = urljoin(url, nxt) if nxt else None


def feed_items(doc) -> list[dict]:
    """The image entries of one feed page (Djangoplicity calls the list ``Collections``)."""
    if isinstance(doc, list):
        return [d for d in doc if isinstance(d, dict)]
    for key in ("Collections", "Items", "Results", "results"):
        if isinstance(doc.get(key), list):
            return [d for d in doc[key] if isinstance(d, dict)]
    return []


def _feed_candidate(item: dict, page_url: str, max_pixels: int) -> Candidate:
    ref = item.get("ReferenceURL") or item.get("URL") or ""
    image_id = str(item.get("ID") or item.get("Id") or urlsplit(ref).path.rstrip("/").split("/")[-1])
    options = []
    for asset in item.get("Assets") or []:
        for res in asset.get("Resources") or []:
            url = urljoin(page_url, str(res.get("URL") or ""))
            if urlsplit(url).path.lower().endswith((".jpg", ".jpeg")):
                w, h = _dims(res.get("Dimensions"))
                options.append((url, w, h))
    record = {"source": "esahubble", "title": str(item.get("Title") or image_id),
              "credit": strip_html(str(item.get("Credit") or "")) or DEFAULT_CREDIT,
              "licence": str(item.get("Rights") or LICENCE), "page": ref}
    best = pick_largest(options, max_pixels)
    cid = source_id("esahubble", image_id)

    async def resolve() -> list[Download]:
        if best is None:
            raise FetchError(f"{page_url}: feed item {image_id!r} lists no JPEG resource")
        return [Download(cid, best, record)]
    return Candidate(cid, resolve)


def _dims(d) -> tuple[int, int]:
    """Feed ``Dimensions``: ``[w, h]``, ``{"Width":..,"Height":..}`` or ``"w x h"``; (0, 0) unknown."""
    try:
        if isinstance(d, (list, tuple)) and len(d) >= 2:
            return int(d[0]), int(d[1])
        if isinstance(d, dict):
            return int(d.get("Width") or d.get("width")), int(d.get("Height") or d.get("height"))
    except (TypeError, ValueError):
        return 0, 0
    return dims_in(str(d or "")) or (0, 0)


# ---------------------------------------------------------------------------- HTML pages

async def _listing(client: PoliteClient, base: str, cfg: SourceConfig) -> AsyncIterator[Candidate]:
    max_pages = int(cfg.options.get("max_pages", 0))
    page, seen = 1, set()
    while max_pages <= 0 or page <= max_pages:
        url = f"{base}/images/" if page == 1 else f"{base}/images/page/{page}/"
        try:
            resp = await client.get(url)
        except FetchError as e:
            if "HTTP 404" in str(e) and page > 1:
                return      # past the last page
            raise
        ids = [i for i in listing_ids(resp.text(), resp.url) if i not in seen]
        if not ids:
            return
        for image_id in ids:
            seen.add(image_id)
            yield _page_candidate(client, urljoin(resp.url, f"/images/{image_id}/"), image_id,
                                  cfg.max_pixels)
        page += 1


def listing_ids(html: str, url: str) -> list[str]:
    """Image ids linked from a listing page, in page order (anchors and the inline JS array)."""
    found = [m for m in re.findall(r"url:\s*'/images/([^/']+)/'", html)]
    for link in links(soup_of(html), url):
        parts = urlsplit(link.href)
        m = re.fullmatch(r"/images/([^/]+)/", parts.path)
        if m and parts.netloc == urlsplit(url).netloc:
            found.append(m[1])
    out: list[str] = []
    for i in found:
        if i not in out and i.lower() not in _RESERVED and _ID.match(i):
            out.append(i)
    return out


def _page_candidate(client: PoliteClient, url: str, image_id: str, max_pixels: int) -> Candidate:
    cid = source_id("esahubble", image_id)

    async def resolve() -> list[Download]:
        resp = await client.get(url)
        best, record = parse_image_page(resp.text(), resp.url, max_pixels)
        if best is None:
            raise FetchError(f"{resp.url}: no JPEG download link in div.archive_download")
        return [Download(cid, best, record)]
    return Candidate(cid, resolve)


def parse_image_page(html: str, url: str, max_pixels: int) -> tuple[str | None, dict]:
    """(best JPEG URL, record) from an image page."""
    soup = soup_of(html)
    full = dims_in(text_of(soup.select_one("div.object-info"))) or (0, 0)
    options = [(link.href, *_estimate(link.href, full))
               for link in links(soup, url, "div.archive_download span.archive_dl_text a[href]")
               if urlsplit(link.href).path.lower().endswith((".jpg", ".jpeg"))]
    credit = text_of(soup.select_one("div.credit")).removeprefix("Credit:").strip()
    record = {"source": "esahubble", "title": title_of(soup), "credit": credit or DEFAULT_CREDIT,
              "licence": LICENCE, "page": url}
    return pick_largest(options, max_pixels), record


def _estimate(href: str, full: tuple[int, int]) -> tuple[int, int]:
    """Pixel size of a derived JPEG from its format folder and the original's size."""
    parts = urlsplit(href).path.split("/")
    fmt = parts[-2] if len(parts) >= 2 else ""
    if fmt not in FORMAT_WIDTH or not full[0]:
        return 0, 0
    width = FORMAT_WIDTH[fmt]
    if width is None or width >= full[0]:
        return full
    return width, round(full[1] * width / full[0])
