"""COCO 2017 val photos for pretraining (``natural.source: coco``).

Either a local folder (``natural.coco_dir``: its first ``natural.count`` images, sorted), or the
official ``val2017.zip`` (about 815 MB), downloaded resumably (HTTP Range onto a ``.part`` file)
into ``~/.cache/astrogan/coco``, checked against its md5, and read without unpacking all of it.
Offline, :class:`CocoError` carries a one-line reason; the stage turns it into the one-line hint.

Licence: each image keeps its own Flickr licence (listed in COCO's annotation files); credit
"COCO Consortium (cocodataset.org), images from Flickr".
"""

from __future__ import annotations

import hashlib
import http.client
import os
import urllib.error
import urllib.request
import zipfile
from collections.abc import Iterator
from pathlib import Path

from tqdm import tqdm

from pipeline.errors import AstroganError

COCO_URL = "http://images.cocodataset.org/zips/val2017.zip"
COCO_MD5 = "442b8da7639aecaf257c1dceb8ba8c80"
CACHE_DIR = Path.home() / ".cache" / "astrogan" / "coco"
CREDIT = "COCO Consortium (cocodataset.org), images from Flickr"
LICENCE = "the image's own Flickr licence (see the licenses field of COCO 2017 annotations)"
PHOTO_EXTS = (".jpg", ".jpeg", ".png")


class CocoError(RuntimeError):
    """The archive could not be obtained or verified; the message is one line."""


def md5_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _get(url: str, start: int, timeout: float):
    req = urllib.request.Request(url, headers={"User-Agent": "astrogan (COCO val2017 download)"})
    if start:
        req.add_header("Range", f"bytes={start}-")
    return urllib.request.urlopen(req, timeout=timeout)


def download(url: str = COCO_URL, md5: str = COCO_MD5, cache_dir: Path = CACHE_DIR,
             timeout: float = 60.0) -> Path:
    """Return the verified archive in ``cache_dir``, downloading (or resuming) it first.

    Bytes land in ``<name>.part``; a rerun asks for the rest with ``Range`` (a server that ignores
    it sends everything again, and the part file restarts). The md5 is checked before the final
    rename; a mismatch deletes the part file. Raises CocoError with a one-line reason.
    """
    cache_dir = Path(cache_dir)
    final = cache_dir / Path(url).name
    if final.is_file():
        return final
    cache_dir.mkdir(parents=True, exist_ok=True)
    part = final.with_name(final.name + ".part")
    start = part.stat().st_size if part.exists() else 0
    try:
        with _get(url, start, timeout) as resp:
            if start and resp.status != 206:
                start = 0  # no range support: start over
            total = start + int(resp.headers.get("Content-Length") or 0)
            with open(part, "ab" if start else "wb") as f, tqdm(
                    total=total or None, initial=start, unit="B", unit_scale=True,
                    desc=f"download {final.name}") as bar:
                while block := resp.read(1 << 20):
                    f.write(block)
                    bar.update(len(block))
        if total and part.stat().st_size < total:  # urllib does not raise on a short body
            raise CocoError(f"{url}: transfer cut short at {part.stat().st_size} of {total} bytes; "
                            f"{part} kept for resuming")
    except urllib.error.HTTPError as e:
        if not (e.code == 416 and start):  # 416 with a part file: it is already complete
            raise CocoError(f"HTTP {e.code} from {url}") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
        reason = getattr(e, "reason", None) or e
        raise CocoError(f"{url}: {type(e).__name__}: {reason}; {part} kept for resuming") from None
    got = md5_file(part)
    if got != md5:
        part.unlink()
        raise CocoError(f"md5 of {final.name} is {got}, expected {md5}; the partial file was deleted")
    os.replace(part, final)
    return final


def local_photos(coco_dir: Path, count: int) -> list[Path]:
    """The first ``count`` images (sorted by name) of a local folder."""
    files = sorted(p for p in Path(coco_dir).iterdir() if p.suffix.lower() in PHOTO_EXTS)
    if not files:
        raise AstroganError(f"natural.coco_dir {coco_dir}: no JPEG/PNG images there; fix the path")
    return files[:count]


def zip_photos(archive: Path, count: int) -> Iterator[tuple[str, bytes]]:
    """(file name, bytes) of the first ``count`` images (sorted by name) in the archive."""
    with zipfile.ZipFile(archive) as z:
        names = sorted(n for n in z.namelist() if n.lower().endswith(PHOTO_EXTS))
        for n in names[:count]:
            yield Path(n).name, z.read(n)


def photos(count: int, coco_dir: str = "", *, url: str = COCO_URL, md5: str = COCO_MD5,
           cache_dir: Path = CACHE_DIR) -> Iterator[tuple[str, dict, bytes]]:
    """Yield (id, record, encoded bytes) for ``count`` COCO photos, local folder first."""
    if coco_dir:
        items = ((p.name, str(p), p.read_bytes()) for p in local_photos(Path(coco_dir), count))
    else:
        archive = download(url, md5, cache_dir)
        items = ((n, f"{url}#{n}", data) for n, data in zip_photos(archive, count))
    for name, origin, data in items:
        stem = Path(name).stem
        yield f"coco-{stem}", {"source": "coco", "url": origin, "title": f"COCO val2017 {stem}",
                               "credit": CREDIT, "licence": LICENCE}, data
