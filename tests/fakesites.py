"""A local aiohttp server shaped like the Hubble archives, with fault injection.

One server on 127.0.0.1 serves all four sources' page shapes (so ``base_url`` of every source can
point at it) and their files:

- esahubble: ``/images/d2d/?page=n`` (JSON feed with ``Next``), ``/images/`` and
  ``/images/page/<n>/`` (listing), ``/images/<id>/`` (image page), ``/archives/images/<fmt>/<id>.jpg``
- hubblesite: the listing ``/images?itemsPerPage=100&page=n`` and the REAL image pages saved in
  ``tests/fixtures/hubblesite/`` at their real paths ``/contents/media/images/...``, their
  ``//stsci-opo.org/`` links rewritten to ``/opo/`` here (PNG, 16-bit TIFF or JPEG stand-ins,
  48x32 px, whatever size the page claims); the old API ``/api/v3/images?page=n``,
  ``/api/v3/image/<id>``, ``/uploads/<id>-<w>x<h>.jpg``
- heritage: legacy ``/gallery/gallery.html``, ``/<yyyy>/<nn>/index.html``, ``/<yyyy>/<nn>/big.html``
  (made-up pages: no real copy found); current ``/contents/media/images?keyword=heritage``,
  listing the same real hubblesite pages
- esahubble image pages whose id has a saved real page in ``tests/fixtures/esahubble/`` serve it,
  its ``cdn.spacetelescope.org`` links rewritten to here
- hla: ``/cgi-bin/nph-sesame/-oI/A?<name>``, ``/cgi-bin/hlaSIAP.cgi`` (VOTable),
  ``/cgi-bin/fitscut.cgi`` (JPEG or FITS)

Faults: ``sites.faults[path] = ["429", "503", "reset", "truncate", "html", "timeout", "foreign"]``
applies one fault per request to that exact path, in order, then serves normally. ``latency``
delays every response. ``log`` records every request path (with query) in arrival order.
Runs in a background thread so that scrapers (and subprocesses) can use it synchronously.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import io
import json
import re
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
from aiohttp import web
from PIL import Image

FIXTURES = Path(__file__).resolve().parent / "fixtures"
HS_PAGES = {p.stem.replace("_", "/"): p for p in sorted((FIXTURES / "hubblesite").glob("*.html"))}
ESA_PAGES = {p.stem: p for p in sorted((FIXTURES / "esahubble").glob("*.html"))}
ESA_FULL = (8000, 6000)         # what pages and the feed claim for the original (served tiny)
ESA_FORMATS = {"large": ESA_FULL, "publicationjpg": (4000, 3000), "screen": (1280, 960)}


def jpeg_bytes(key: str, size: tuple[int, int] = (48, 32), mode: str = "RGB") -> bytes:
    """A small deterministic JPEG, different for every key."""
    seed = int.from_bytes(hashlib.sha256(key.encode()).digest()[:4], "little")
    rng = np.random.default_rng(seed)
    shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8), mode).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def image_bytes(key: str, ext: str, size: tuple[int, int] = (48, 32)) -> bytes:
    """A small deterministic image in the format ``ext`` names: 8-bit PNG, 16-bit RGB TIFF or JPEG."""
    if ext in (".jpg", ".jpeg"):
        return jpeg_bytes(key, size)
    seed = int.from_bytes(hashlib.sha256(key.encode()).digest()[:4], "little")
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    if ext in (".tif", ".tiff"):
        import tifffile

        tifffile.imwrite(buf, rng.integers(0, 65535, (size[1], size[0], 3), dtype=np.uint16),
                         photometric="rgb")
    else:
        Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def fits_bytes(key: str) -> bytes:
    from astropy.io import fits

    seed = int.from_bytes(hashlib.sha256(key.encode()).digest()[:4], "little")
    data = np.random.default_rng(seed).normal(size=(24, 20)).astype(np.float32)
    buf = io.BytesIO()
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(data, name="SCI")]).writeto(buf)
    return buf.getvalue()


class FakeSites:
    """``with FakeSites(n=6) as s: s.url`` -> ``http://127.0.0.1:<port>``."""

    def __init__(self, n: int = 6, *, per_page: int = 3, latency: float = 0.0,
                 robots: str = "User-agent: *\nDisallow: /private/\n", retry_after: str = "1",
                 hang_s: float = 5.0, extra_esa_ids: tuple[str, ...] = (), port: int = 0):
        self.esa_ids = [f"heic{1000 + i}a" for i in range(n)] + list(extra_esa_ids)
        self.hs_ids = [4000 + i for i in range(n)]
        self.heritage = [(str(1998 + i // 12), f"{i % 12 + 1:02d}") for i in range(n)]
        self.per_page, self.latency, self.robots = per_page, latency, robots
        self.retry_after, self.hang_s = retry_after, hang_s
        self.foreign = ""           # where a "foreign" fault redirects to
        self.faults: dict[str, list[str]] = {}
        self.log: list[str] = []
        self.hla_visits = {"hst_9490_a1_acs_wfc": ["f435w", "f555w", "f814w"],
                           "hst_11000_02_wfpc2": ["f656n"]}
        self._lock = threading.Lock()
        self.port, self.url = port, ""

    # ------------------------------------------------------------------ lifecycle
    def __enter__(self) -> FakeSites:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(10)
        return self

    def __exit__(self, *exc) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)

    async def _start(self) -> None:
        app = web.Application(middlewares=[self._middleware])
        r = app.router
        r.add_get("/robots.txt", self.robots_txt)
        r.add_get("/images/d2d/", self.esa_feed)
        r.add_get("/images/", self.esa_listing)
        r.add_get("/images/page/{n}/", self.esa_listing)
        r.add_get("/images/{id}/", self.esa_page)
        r.add_get("/archives/images/{fmt}/{name}", self.esa_file)
        r.add_get("/images", self.hs_listing)
        r.add_get("/contents/media/images/{path:.+}", self.hs_page)
        r.add_get("/api/v3/images", self.hs_list)
        r.add_get("/api/v3/image/{id}", self.hs_image)
        r.add_get("/uploads/{name}", self.plain_file)
        r.add_get("/gallery/gallery.html", self.her_index)
        r.add_get("/{y:\\d{4}}/{n:\\d{2}}/index.html", self.her_release)
        r.add_get("/{y:\\d{4}}/{n:\\d{2}}/", self.her_release)
        r.add_get("/{y:\\d{4}}/{n:\\d{2}}/big.html", self.her_big)
        r.add_get("/{y:\\d{4}}/{n:\\d{2}}/images/{name}", self.plain_file)
        r.add_get("/contents/media/images", self.cur_listing)
        r.add_get("/opo/{name}", self.opo_file)
        r.add_get("/cgi-bin/nph-sesame/-oI/A", self.sesame)
        r.add_get("/cgi-bin/hlaSIAP.cgi", self.siap)
        r.add_get("/cgi-bin/fitscut.cgi", self.fitscut)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", self.port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"

    # ------------------------------------------------------------------ faults and log
    def hits(self, prefix: str) -> Counter:
        """How often each logged path starting with ``prefix`` was requested."""
        with self._lock:
            return Counter(p for p in self.log if p.startswith(prefix))

    @web.middleware
    async def _middleware(self, request: web.Request, handler):
        with self._lock:
            self.log.append(request.path_qs)
            queue = self.faults.get(request.path)
            fault = queue.pop(0) if queue else None
        if self.latency:
            await asyncio.sleep(self.latency)
        if fault == "429":
            return web.Response(status=429, headers={"Retry-After": self.retry_after})
        if fault == "503":
            return web.Response(status=503, text="busy")
        if fault == "timeout":
            await asyncio.sleep(self.hang_s)
        if fault == "foreign":
            raise web.HTTPFound(self.foreign + request.path_qs)
        if fault == "html":
            return web.Response(text="<!DOCTYPE html><html><body>Server error</body></html>",
                                content_type="text/html")
        if fault == "reset":
            request.transport.abort()
            return web.Response(status=500)
        resp = await handler(request)
        if fault == "truncate":
            body = resp.body
            stream = web.StreamResponse(headers={"Content-Type": resp.content_type})
            stream.content_length = len(body)
            await stream.prepare(request)
            await stream.write(body[: len(body) // 2])
            request.transport.close()
            return stream
        return resp

    async def robots_txt(self, request):
        return web.Response(text=self.robots)

    # ------------------------------------------------------------------ esahubble
    def _esa_item(self, i: str) -> dict:
        f = i.replace("/", "_")     # file names stay plain even when an id is hostile
        res = [{"ResourceType": "Original", "URL": f"//{self._host()}/archives/images/original/{f}.tif",
                "FileSize": 1, "Dimensions": list(ESA_FULL)}]
        for fmt, dims in ESA_FORMATS.items():
            res.append({"ResourceType": fmt.title(), "MediaType": "Image", "FileSize": 1,
                        "URL": f"//{self._host()}/archives/images/{fmt}/{f}.jpg",
                        "Dimensions": list(dims)})
        return {"ID": i, "Title": f"Title of {i}", "Credit": f"ESA/Hubble &amp; NASA, <a>{i}</a>",
                "Rights": "Creative Commons Attribution 4.0 International License",
                "ReferenceURL": f"{self.url}/images/{i}/", "Assets": [{"Resources": res}]}

    def _host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _paged(self, items: list, request: web.Request) -> tuple[list, int, bool]:
        n = int(request.query.get("page") or request.match_info.get("n") or 1)
        chunk = items[(n - 1) * self.per_page: n * self.per_page]
        return chunk, n, n * self.per_page < len(items)

    async def esa_feed(self, request):
        chunk, n, more = self._paged(self.esa_ids, request)
        doc = {"Count": len(self.esa_ids), "Collections": [self._esa_item(i) for i in chunk],
               "Next": f"{self.url}/images/d2d/?page={n + 1}" if more else None}
        return web.json_response(doc)

    async def esa_listing(self, request):
        chunk, _, _ = self._paged(self.esa_ids, request)
        if not chunk:
            raise web.HTTPNotFound()
        js = ",".join(f"{{id: '{i}', url: '/images/{i}/'}}" for i in chunk)
        links = "".join(f'<a href="/images/{i}/"><img src="/x/{i}.jpg"></a>' for i in chunk)
        html = (f"<html><head><script>var images = [{js}];</script></head><body>{links}"
                '<a href="/images/archive/category/galaxies/">Galaxies</a></body></html>')
        return web.Response(text=html, content_type="text/html")

    async def esa_page(self, request):
        i = request.match_info["id"]
        if i in ESA_PAGES and i in self.esa_ids:   # a real saved page, its CDN links pointed here
            html = re.sub(r"(https?:)?//cdn\.spacetelescope\.org/", self.url + "/", ESA_PAGES[i].read_text())
            return web.Response(text=html, content_type="text/html")
        if i not in self.esa_ids:
            raise web.HTTPNotFound()
        h = self._host()
        dl = "".join(f'<span class="archive_dl_text"><a href="//{h}/archives/images/{fmt}/{i}.jpg">'
                     f"{label}</a></span>" for fmt, label in
                     [("large", "Large JPEG"), ("publicationjpg", "Publication JPEG"),
                      ("screen", "Screensize JPEG")])
        html = (f"<html><body><h1>Title of {i}</h1><div class='credit'><p>ESA/Hubble &amp; NASA</p>"
                f"</div><div class='object-info'><table><tr><td>Size:</td><td>{ESA_FULL[0]} x "
                f"{ESA_FULL[1]} px</td></tr></table></div><div class='archive_download'>"
                f'<span class="archive_dl_text"><a href="//{h}/archives/images/original/{i}.tif">'
                f"Fullsize Original</a></span>{dl}</div></body></html>")
        return web.Response(text=html, content_type="text/html")

    async def esa_file(self, request):
        return web.Response(body=jpeg_bytes(request.path), content_type="image/jpeg")

    async def plain_file(self, request):
        return web.Response(body=jpeg_bytes(request.path), content_type="image/jpeg")

    # ------------------------------------------------------------------ hubblesite
    async def hs_list(self, request):
        chunk, _, _ = self._paged(self.hs_ids, request)
        return web.json_response([{"id": i, "name": f"Release {i}", "mission": "hubble"}
                                  for i in chunk])

    async def hs_image(self, request):
        i = int(request.match_info["id"])
        files = [{"file_url": f"//{self._host()}/uploads/{i}-{w}x{h}.{ext}", "width": w,
                  "height": h, "file_size": 1}
                 for w, h, ext in [(6000, 4000, "tif"), (6000, 4000, "jpg"), (2000, 1333, "jpg"),
                                   (400, 266, "jpg")]]
        return web.json_response({"name": f"Release {i}", "mission": "hubble",
                                  "credits": '<a href="http://www.nasa.gov">NASA</a>, ESA',
                                  "image_files": files})

    # ------------------------------------------------------------------ heritage
    async def her_index(self, request):
        links = "".join(f'<a href="../{y}/{n}/">Release {y}/{n}</a> ' for y, n in self.heritage)
        return web.Response(text=f"<html><body>{links}</body></html>", content_type="text/html")

    async def her_release(self, request):
        y, n = request.match_info["y"], request.match_info["n"]
        html = (f"<html><head><title>Heritage {y}/{n}</title></head><body><h1>Heritage {y}/{n}</h1>"
                f"<p>Credit: <a href='x'>NASA</a> and The Hubble Heritage Team (STScI/AURA) {n}</p>"
                '<a href="big.html">High-Resolution Images</a></body></html>')
        return web.Response(text=html, content_type="text/html")

    async def her_big(self, request):
        links = "".join(f'<a href="images/h-{w}x{h}.jpg">{w} x {h} JPEG</a> '
                        for w, h in [(800, 600), (3000, 2250), (6000, 4500)])
        return web.Response(text=f"<html><body>{links}</body></html>", content_type="text/html")

    async def cur_listing(self, request):
        return await self.hs_listing(request)

    # ------------------------------------------------------------------ hubblesite pages (real)
    async def hs_listing(self, request):
        """A listing of the saved real pages (the listing itself is made up: no real copy found)."""
        chunk, _, _ = self._paged(list(HS_PAGES), request)
        links = "".join(f'<a href="/contents/media/images/{k}">{k}</a>' for k in chunk)
        return web.Response(text=f"<html><body>{links}</body></html>", content_type="text/html")

    async def hs_page(self, request):
        path = HS_PAGES.get(request.match_info["path"].rstrip("/"))
        if path is None:
            raise web.HTTPNotFound()
        html = path.read_text().replace("//stsci-opo.org/", f"//{self._host()}/opo/")
        return web.Response(text=html, content_type="text/html")

    async def opo_file(self, request):
        name = request.match_info["name"]
        ext = name[name.rfind("."):].lower()
        kind = {".png": "image/png", ".tif": "image/tiff", ".jpg": "image/jpeg"}.get(ext)
        if kind is None:
            raise web.HTTPNotFound()
        return web.Response(body=image_bytes(request.path, ext), content_type=kind)

    # ------------------------------------------------------------------ hla
    async def sesame(self, request):
        return web.Response(text=f"# {request.query_string}\n%J 210.80227 +54.34895 = 14 03 12.5\n")

    async def siap(self, request):
        rows = "".join(f"<TR><TD>{v}_{f}</TD><TD>{f.upper()}</TD><TD>{self.url}/x/{v}_{f}.fits</TD></TR>"
                       for v, fs in self.hla_visits.items() for f in fs)
        xml = ('<?xml version="1.0"?><VOTABLE version="1.3" xmlns="http://www.ivoa.net/xml/VOTable/v1.3">'
               '<RESOURCE type="results"><TABLE><FIELD name="Dataset" datatype="char" arraysize="*"/>'
               '<FIELD name="Spectral_Elt" datatype="char" arraysize="*"/>'
               '<FIELD name="URL" datatype="char" arraysize="*"/>'
               f"<DATA><TABLEDATA>{rows}</TABLEDATA></DATA></TABLE></RESOURCE></VOTABLE>")
        return web.Response(text=xml, content_type="text/xml")

    async def fitscut(self, request):
        q = {k.lower(): v for k, v in request.query.items()}
        key = json.dumps(sorted(q.items()))
        if q.get("format") == "fits":
            return web.Response(body=fits_bytes(key), content_type="application/fits")
        mode = "RGB" if "blue" in q else "L"
        return web.Response(body=jpeg_bytes(key, mode=mode), content_type="image/jpeg")


def main(argv: list[str] | None = None) -> None:
    """Serve the fake archives (real saved pages included) until interrupted, for manual runs::

        python -m tests.fakesites --port 8765   # then base_url: http://127.0.0.1:8765
    """
    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("--port", type=int, default=8765)
    ap.add_argument("-n", type=int, default=6, help="made-up images per source")
    args = ap.parse_args(argv)
    with FakeSites(n=args.n, port=args.port) as sites:
        print(f"serving {sites.url} (Ctrl-C stops)", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
