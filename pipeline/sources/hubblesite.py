"""NASA's hubblesite.org image releases, through the HubbleSite API v3.

Documented at https://hubblesite.org/api/documentation (wrapped by aschleg/hubblepy):

- ``<base_url>/api/v3/images?page=<n>[&collection_name=<c>]``: a JSON list of ``{id, name,
  news_name, collection_name, mission}``, empty past the last page. Collections include ``news``,
  ``printshop``, ``stsci_gallery``, ``wallpaper``, ``spacecraft``; ``scrape.hubblesite.collection``
  picks one (default: all).
- ``<base_url>/api/v3/image/<id>``: ``{name, description, credits (HTML), mission,
  image_files: [{file_url, file_size, width, height}]}``, every JPEG/TIFF attachment of the
  release; ``file_url`` is often protocol-relative (``//imgsrc.hubblesite.org/...``) or on
  media.stsci.edu / stsci-opo.org.

Only ``mission == "hubble"`` images are taken (the same API serves Webb's). The largest JPEG
within ``scrape.max_pixels`` is fetched. STScI/NASA material is public domain unless its credit
says otherwise (https://hubblesite.org/copyright); the credit line is kept per image.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlencode, urljoin, urlsplit

from pipeline.sources.common import SourceConfig
from pipeline.sources.http import (
    Candidate,
    Download,
    FetchError,
    PoliteClient,
    make_client,
    pick_largest,
    run_source,
    source_id,
    strip_html,
)

HOSTS = {"hubblesite.org", "www.hubblesite.org", "imgsrc.hubblesite.org", "media.stsci.edu",
         "stsci-opo.org", "www.stsci-opo.org"}
LICENCE = "public domain unless noted (NASA/STScI, https://hubblesite.org/copyright)"
DEFAULT_CREDIT = "NASA, ESA, and STScI"


def fetch(out_dir: Path, cfg: SourceConfig) -> dict:
    base = cfg.options.get("base_url", "https://hubblesite.org").rstrip("/")
    client = make_client(cfg, HOSTS)
    return run_source(out_dir, cfg, client, lambda c: _images(c, base, cfg))


async def _images(client: PoliteClient, base: str, cfg: SourceConfig) -> AsyncIterator[Candidate]:
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
                    yield _candidate(client, base, row, cfg.max_pixels)
        page += 1


def _candidate(client: PoliteClient, base: str, row: dict, max_pixels: int) -> Candidate:
    cid = source_id("hubblesite", row["id"])

    async def resolve() -> list[Download]:
        resp = await client.get(f"{base}/api/v3/image/{row['id']}")
        doc = resp.json()
        if not isinstance(doc, dict):
            raise FetchError(f"{resp.url}: expected an image object, got {type(doc).__name__}")
        if doc.get("mission") not in (None, "", "hubble"):
            raise FetchError(f"{resp.url}: mission {doc.get('mission')!r} is not Hubble; skipped")
        best = pick_largest(jpeg_files(doc, resp.url), max_pixels)
        if best is None:
            raise FetchError(f"{resp.url}: no JPEG in image_files")
        record = {"source": "hubblesite", "title": str(doc.get("name") or row.get("name") or cid),
                  "credit": strip_html(str(doc.get("credits") or "")) or DEFAULT_CREDIT,
                  "licence": LICENCE, "page": resp.url}
        return [Download(cid, best, record)]
    return Candidate(cid, resolve)


def jpeg_files(doc: dict, page_url: str) -> list[tuple[str, int, int]]:
    """``(absolute url, width, height)`` of every JPEG attachment."""
    out = []
    for f in doc.get("image_files") or []:
        url = urljoin(page_url, str(f.get("file_url") or ""))
        if urlsplit(url).path.lower().endswith((".jpg", ".jpeg")):
            try:
                out.append((url, int(f.get("width") or 0), int(f.get("height") or 0)))
            except (TypeError, ValueError):
                out.append((url, 0, 0))
    return out
