"""Reading the archives' HTML pages with beautifulsoup4: links, titles, credit lines, pixel sizes.

Each helper says what it looks for in one CSS selector or one heading name, so a parser reads
like the page it parses. Text is always ``get_text(" ", strip=True)`` with runs of whitespace
collapsed and no space before punctuation (``<a>NASA</a>, ESA`` -> ``NASA, ESA``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urljoin

from bs4 import BeautifulSoup, Tag

IMAGE_EXT = (".jpg", ".jpeg", ".png", ".tif", ".tiff")
_SECTIONS = ("h1", "h2", "h3", "h4", "h5", "h6")
_HEADINGS = (*_SECTIONS, "strong", "b")   # "<strong>Credit:</strong> ..." counts as a heading


@dataclass(frozen=True)
class Link:
    href: str   # absolute: resolved against the page URL with urljoin (``//cdn/...`` included)
    text: str


def soup_of(html: str | bytes) -> BeautifulSoup:
    """Parse with the standard library's parser (no compiled dependency)."""
    return BeautifulSoup(html, "html.parser")


def text_of(node: Tag | None) -> str:
    """The visible text of ``node``, whitespace collapsed; "" for None."""
    if node is None:
        return ""
    return tidy(node.get_text(" ", strip=True))


def tidy(text: str) -> str:
    return re.sub(r"\s+([,.;:)])", r"\1", re.sub(r"\(\s+", "(", " ".join(text.split())))


def links(soup: BeautifulSoup | Tag, url: str, selector: str = "a[href]") -> list[Link]:
    """Every element matching ``selector`` that has an href, as absolute links, in page order."""
    return [Link(urljoin(url, a["href"].strip()), text_of(a)) for a in soup.select(selector)
            if a.get("href")]


def title_of(soup: BeautifulSoup) -> str:
    """The page title once: the first non-empty ``<h1>`` (some pages repeat it in a second,
    screen-reader-only one), else ``og:title``, else ``<title>`` up to its `` | site`` suffix."""
    for h1 in soup.select("h1"):
        if text := text_of(h1):
            return text
    og = soup.select_one('meta[property="og:title"]')
    if og and og.get("content", "").strip():
        return tidy(og["content"])
    return text_of(soup.title).split(" | ")[0]


def after_heading(soup: BeautifulSoup, *names: str) -> str:
    """The text that follows a heading whose whole text is one of ``names`` (case and a trailing
    colon ignored), up to the next heading: ``<h3>Credits</h3><p>NASA, ESA</p>`` -> "NASA, ESA"."""
    wanted = {n.lower() for n in names}
    for head in soup.find_all(_HEADINGS):
        if text_of(head).rstrip(":").strip().lower() not in wanted:
            continue
        parts = []
        for sib in head.next_siblings:
            if isinstance(sib, Tag) and (sib.name in _SECTIONS or sib.find(_SECTIONS)):
                break
            parts.append(sib.get_text(" ") if isinstance(sib, Tag) else str(sib))
        if text := tidy(" ".join(parts)):
            return text
    return ""


def strip_html(s: str) -> str:
    """Plain text of an HTML fragment (feed credits come as ``<a href=...>NASA</a>, ESA``)."""
    return text_of(soup_of(s or ""))


def dims_in(text: str) -> tuple[int, int] | None:
    """``(w, h)`` from text like ``4000 x 3000``, ``3840 X 2160`` or ``8,919 × 6,683 px``."""
    m = re.search(r"(\d[\d,]{1,6})\s*[xX\u00d7]\s*(\d[\d,]{1,6})", text or "")
    return (int(m[1].replace(",", "")), int(m[2].replace(",", ""))) if m else None


def pick_largest(options: list[tuple], max_pixels: int) -> str | None:
    """The URL of the largest ``(url, w, h[, rank])`` within ``max_pixels``; else the smallest
    above it (store-time downscaling handles that). Equal sizes go to the higher ``rank``;
    unknown sizes (0) rank below known ones."""
    if not options:
        return None

    def key(o: tuple) -> tuple[int, float]:
        return o[1] * o[2], (o[3] if len(o) > 3 else 0)

    fits = [o for o in options if max_pixels <= 0 or o[1] * o[2] <= max_pixels]
    if fits:
        return max(fits, key=key)[0]
    return min(options, key=lambda o: (o[1] * o[2], -key(o)[1]))[0]
