"""``astrogan serve [FOLDER]``: colorize and upscale in the browser, click to place colour hints.

A local aiohttp server and one plain HTML/JS/CSS page (``pipeline/web/``), after the interactive
tool of Zhang, Zhu et al. 2017: click a point, pick a colour, see the preview update. The work is
in serve_work.py; this module is the HTTP side and its safety rules:

- it binds to 127.0.0.1 unless ``--host`` says otherwise (then it warns), and on loopback it
  answers only requests whose Host is a loopback name (DNS rebinding);
- a POST or DELETE whose ``Origin`` is not the page's own (or that the browser marks cross-site) is
  refused, so other web sites cannot drive it;
- uploads stream to a temporary file, capped at ``--max-upload-mb``, and are deleted once decoded;
  full-resolution results live in a temporary folder removed when their session is evicted and
  when the server stops;
- only image files inside FOLDER can be opened: a path is resolved (symlinks too) and refused
  unless it stays inside.

API (JSON unless said; an error is ``{"error": one sentence}`` with a 4xx status):
``GET /api/config``, ``GET /api/files``, ``POST /api/open`` (multipart upload or ``{"path": ...}``),
``GET /api/s/{sid}/before.png``, ``POST /api/s/{sid}/preview`` (``{hints, strength}`` -> PNG),
``POST|DELETE /api/s/{sid}/reference``, ``POST /api/s/{sid}/jobs`` (``{kind, hints, strength}``),
``GET /api/jobs/{job}``, ``GET /api/jobs/{job}/result`` (the download).
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from aiohttp import web

from pipeline import hints
from pipeline import inference as inf
from pipeline import serve_work as sw
from pipeline.colorizer import takes_hints
from pipeline.decode import STRETCHES, InputError, is_image_name, quantize, read_picture
from pipeline.errors import AstroganError
from pipeline.fsio import safe_name, sha256_file
from pipeline.hints import HintError

WEB = Path(__file__).parent / "web"
STATIC = {"app.js": "text/javascript", "style.css": "text/css"}
LOOPBACK = {"127.0.0.1", "localhost", "::1", "[::1]"}
MAX_FILES = 5000
MAX_JOBS = 32
CSP = "default-src 'self'; img-src 'self' blob: data:; style-src 'self'; script-src 'self'; object-src 'none'"


@dataclass
class Config:
    folder: Path | None
    host: str = "127.0.0.1"
    max_pixels: int = 100_000_000
    max_upload: int = 200 * 2**20
    max_sessions: int = 32
    max_bytes: int = 2 * 2**30
    display_side: int = 512
    model_side: int = 256
    workers: int = 1
    batch: int = 4


class Fail(Exception):
    """An error for the page: one sentence, and the HTTP status."""

    def __init__(self, status: int, sentence: str):
        super().__init__(sentence)
        self.status = status


class Server:
    """The state of one running server: models, sessions, jobs, executors, the temporary folder."""

    def __init__(self, cfg: Config, colorizer: inf.Loaded, upscaler: inf.Loaded, lines: dict[str, str],
                 strength: float, device: torch.device):
        self.cfg, self.colorizer, self.upscaler, self.lines = cfg, colorizer, upscaler, lines
        self.strength, self.device = strength, device
        self.root = cfg.folder.resolve() if cfg.folder else None
        self.tmp = Path(tempfile.mkdtemp(prefix="astrogan-serve-"))
        self.sessions = sw.Sessions(cfg.max_sessions, cfg.max_bytes)
        self.jobs: dict[str, sw.Job] = {}
        # Bounded memory under load: at most `workers` previews/decodes and one full-resolution job at once.
        self.pool = ThreadPoolExecutor(cfg.workers, thread_name_prefix="astrogan-preview")
        self.job_pool = ThreadPoolExecutor(1, thread_name_prefix="astrogan-job")
        self.ctile = inf.default_tiling(colorizer)
        self.utile = inf.default_tiling(upscaler)

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.job_pool.shutdown(wait=False, cancel_futures=True)
        shutil.rmtree(self.tmp, ignore_errors=True)

    async def run(self, fn, *args, pool=None):
        return await asyncio.get_running_loop().run_in_executor(pool or self.pool, fn, *args)

    def session(self, request: web.Request) -> sw.Session:
        found = self.sessions.get(request.match_info["sid"])
        if found is None:
            raise Fail(404, "this image is no longer open on the server (closed to free memory, or the "
                            "server restarted); open it again")
        return found

    def forget(self, evicted: list[sw.Session]) -> None:
        gone = {s.id for s in evicted}
        for jid, job in list(self.jobs.items()):
            if job.session in gone and job.state in ("done", "error"):
                self._drop_job(jid)

    def _drop_job(self, jid: str) -> None:
        job = self.jobs.pop(jid)
        if job.path is not None:
            job.path.unlink(missing_ok=True)

    def add_job(self, job: sw.Job) -> None:
        finished = [j for j, x in self.jobs.items() if x.state in ("done", "error")]
        while len(self.jobs) >= MAX_JOBS and finished:
            self._drop_job(finished.pop(0))
        if len(self.jobs) >= MAX_JOBS:
            raise Fail(503, f"{MAX_JOBS} full-resolution jobs are already waiting; try again later")
        self.jobs[job.id] = job


def _error(status: int, sentence: str) -> web.Response:
    return web.json_response({"error": sentence}, status=status)


@web.middleware
async def guard(request: web.Request, handler):
    """Host and Origin checks, security headers, and every error as one sentence in JSON."""
    srv: Server = request.app["server"]
    host = (request.host or "").rsplit(":", 1)[0] if not (request.host or "").startswith("[") else \
        request.host.split("]")[0] + "]"
    if srv.cfg.host in LOOPBACK and host not in LOOPBACK:
        return _error(403, f"refused: the Host header {request.host!r} is not this machine; open "
                           "http://127.0.0.1 instead")
    if request.method not in ("GET", "HEAD", "OPTIONS"):
        origin = request.headers.get("Origin")
        own = f"{request.scheme}://{request.host}"
        site = request.headers.get("Sec-Fetch-Site", "same-origin")
        if (origin is not None and origin != own) or site in ("cross-site", "same-site"):
            return _error(403, f"refused: a request from another site ({origin or site}); use the page at "
                               f"{own}")
    try:
        response = await handler(request)
    except Fail as e:
        response = _error(e.status, str(e))
    except web.HTTPException as e:
        if not request.path.startswith("/api/") or e.status < 400:
            raise
        response = _error(e.status, f"{e.reason.lower()}: {request.method} {request.path}")
    response.headers.setdefault("Content-Security-Policy", CSP)
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "no-referrer")
    return response


routes = web.RouteTableDef()


@routes.get("/")
async def index(request: web.Request) -> web.StreamResponse:
    return web.FileResponse(WEB / "index.html", headers={"Cache-Control": "no-store"})


@routes.get("/static/{name}")
async def static(request: web.Request) -> web.StreamResponse:
    name = request.match_info["name"]
    if name not in STATIC:
        raise web.HTTPNotFound()
    return web.FileResponse(WEB / name, headers={"Content-Type": STATIC[name], "Cache-Control": "no-store"})


@routes.get("/api/config")
async def config(request: web.Request) -> web.Response:
    srv: Server = request.app["server"]
    guided = takes_hints(srv.colorizer.model)
    note = None if guided else (f"This model ({srv.lines['colorize_name']}) takes no colour hints: the page "
                                "shows its automatic colour; give `astrogan serve` a guided --colorize-model "
                                "to place hints.")
    return web.json_response({
        "folder": srv.root.name if srv.root else None, "stretches": list(STRETCHES),
        "max_upload_bytes": srv.cfg.max_upload, "max_pixels": srv.cfg.max_pixels,
        "colorize": {"model": srv.lines["colorize"], "takes_hints": guided, "note": note,
                     "strength": srv.strength},
        "upscale": {"model": srv.lines["upscale"], "scale": srv.upscaler.scale}})


@routes.get("/api/files")
async def files(request: web.Request) -> web.Response:
    srv: Server = request.app["server"]
    return web.json_response({"folder": srv.root.name if srv.root else None,
                              "files": await srv.run(_list_folder, srv.root) if srv.root else []})


def _list_folder(root: Path) -> list[str]:
    """Image files under ``root`` (relative, sorted), not following symlinks out of it."""
    found = []
    for top, dirs, names in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and _inside(Path(top) / d, root))
        for n in sorted(names):
            p = Path(top) / n
            if not n.startswith(".") and is_image_name(p) and _inside(p, root) and p.is_file():
                found.append(p.relative_to(root).as_posix())
                if len(found) >= MAX_FILES:
                    return found
    return found


def _inside(path: Path, root: Path) -> bool:
    try:
        return path.resolve().is_relative_to(root)
    except (OSError, RuntimeError):  # a symlink loop
        return False


def _in_folder(srv: Server, rel: str) -> Path:
    """FOLDER/rel, refused unless it resolves (symlinks included) to an image file inside FOLDER."""
    if srv.root is None:
        raise Fail(400, "no FOLDER was given to `astrogan serve`; upload the image instead")
    if not isinstance(rel, str) or not rel or "\0" in rel or Path(rel).is_absolute():
        raise Fail(403, f"{rel!r}: give a path relative to the folder {srv.root.name}")
    path = srv.root / rel
    if not _inside(path, srv.root):
        raise Fail(403, f"{rel}: outside the folder {srv.root.name}; only files inside it can be opened")
    if not path.is_file():
        raise Fail(404, f"{rel}: no such file in the folder {srv.root.name}")
    if not is_image_name(path):
        raise Fail(400, f"{rel}: not an image name (PNG, JPEG, TIFF or FITS)")
    return path.resolve()


def _decode_options(fields: dict) -> dict:
    stretch = fields.get("stretch") or None
    if stretch in ("", "auto"):
        stretch = None
    if stretch is not None and stretch not in STRETCHES:
        raise Fail(400, f"stretch {stretch!r}: use auto or one of {', '.join(STRETCHES)}")
    try:
        lo, hi = float(fields.get("lo", 0.5)), float(fields.get("hi", 99.5))
        hdu = None if fields.get("hdu") in (None, "") else int(fields["hdu"])
    except (TypeError, ValueError):
        raise Fail(400, "percentiles must be numbers and the HDU a whole number") from None
    if not 0 <= lo < hi <= 100:
        raise Fail(400, f"percentiles {lo:g} {hi:g}: need 0 <= low < high <= 100")
    return {"stretch_kind": stretch, "percentiles": (lo, hi), "hdu": hdu}


async def _receive(request: web.Request, srv: Server) -> tuple[Path | None, str, dict]:
    """A multipart upload streamed to a temporary file (capped); (path, file name, other fields)."""
    cap = srv.cfg.max_upload
    too_large = Fail(413, f"the upload is larger than the {cap / 2**20:g} MB cap (--max-upload-mb)")
    if request.content_length is not None and request.content_length > cap + 2**16:
        raise too_large
    reader = await request.multipart()
    path, name, fields = None, "", {}
    try:
        while (part := await reader.next()) is not None:
            if part.name == "file" and part.filename is not None and path is None:
                name = Path(part.filename).name or "upload"
                fd, tmp = tempfile.mkstemp(dir=srv.tmp, prefix="upload-", suffix="-" + safe_name(name)[-40:])
                path, size = Path(tmp), 0
                with os.fdopen(fd, "wb") as f:
                    while chunk := await part.read_chunk(1 << 20):
                        size += len(chunk)
                        if size > cap:
                            raise too_large
                        f.write(chunk)
            elif part.name:
                fields[part.name] = (await part.text())[:200]
    except BaseException:
        if path is not None:
            path.unlink(missing_ok=True)
        raise
    return path, name, fields


@routes.post("/api/open")
async def open_image(request: web.Request) -> web.Response:
    srv: Server = request.app["server"]
    upload = None
    if request.content_type == "multipart/form-data":
        upload, name, fields = await _receive(request, srv)
        if upload is None:
            raise Fail(400, "no file in the upload; choose an image file")
        path, source = upload, name
    else:
        fields = await _json(request)
        path = _in_folder(srv, fields.get("path"))
        source = name = str(fields.get("path"))
    try:
        options = _decode_options(fields)
        pic = await srv.run(_read, path, options, srv.cfg.max_pixels, name)
        session = await srv.run(sw.new_session, pic, name, source, srv.cfg.display_side, srv.cfg.model_side)
    finally:
        if upload is not None:
            upload.unlink(missing_ok=True)
    srv.forget(srv.sessions.add(session))
    return web.json_response(session.describe())


def _read(path: Path, options: dict, max_pixels: int, name: str):
    try:
        return read_picture(path, max_pixels=max_pixels, **options)
    except InputError as e:
        raise Fail(400, f"{name}: {e}") from None


async def _json(request: web.Request) -> dict:
    try:
        body = await request.json()
    except ValueError:
        raise Fail(400, "the request body is not JSON") from None
    if not isinstance(body, dict):
        raise Fail(400, "the request body must be a JSON object")
    return body


@routes.get("/api/s/{sid}/before.png")
async def before(request: web.Request) -> web.Response:
    """The preview-size grey L* (what the colorizer sees), or ``?kind=input`` the input as it is."""
    srv: Server = request.app["server"]
    session = srv.session(request)

    def render() -> bytes:
        if request.query.get("kind") == "input":
            h, w = session.display_L.shape
            return sw.png_bytes(quantize(sw.resize(session.picture.data, h, w), 8))
        return sw.png_bytes(quantize(session.display_L / 100.0, 8))

    return web.Response(body=await srv.run(render), content_type="image/png")


def _guidance(srv: Server, session: sw.Session, body: dict) -> tuple[list[hints.Hint], float]:
    h, w = session.picture.data.shape[:2]
    try:
        points = sw.parse_hints(body.get("hints", []), w, h)
        strength = float(body.get("strength", srv.strength))
    except (TypeError, ValueError) as e:
        raise Fail(400, str(e) if str(e) else "strength must be a number") from None
    if not 0 <= strength <= 4 or not np.isfinite(strength):
        raise Fail(400, f"strength {strength:g}: use a value from 0 (grey) to 4")
    return points, strength


@routes.post("/api/s/{sid}/preview")
async def preview(request: web.Request) -> web.Response:
    srv: Server = request.app["server"]
    session = srv.session(request)
    points, strength = _guidance(srv, session, await _json(request))
    tile, overlap = srv.ctile
    try:
        png = await srv.run(sw.preview, srv.colorizer, session, points, strength, tile, overlap)
    except (HintError, inf.ModelError, ValueError) as e:
        raise Fail(400, str(e).splitlines()[0]) from None
    return web.Response(body=png, content_type="image/png", headers={"Cache-Control": "no-store"})


@routes.post("/api/s/{sid}/reference")
async def set_reference(request: web.Request) -> web.Response:
    srv: Server = request.app["server"]
    session = srv.session(request)
    path, name, fields = await _receive(request, srv)
    try:
        if path is None:
            raise Fail(400, "no file in the upload; choose a colour reference image")
        if not takes_hints(srv.colorizer.model):
            raise Fail(400, f"this model ({srv.lines['colorize_name']}) takes no reference image; start the "
                            "server with a guided model")
        pic = await srv.run(_read, path, _decode_options(fields), srv.cfg.max_pixels, name)
        try:
            palette = await srv.run(hints.reference_palette, pic.data, name)
        except HintError as e:
            raise Fail(400, e.lines[0]) from None
        digest = await srv.run(sha256_file, path)
    finally:
        if path is not None:
            path.unlink(missing_ok=True)
    session.reference, session.reference_record = palette, {"file": name, "sha256": digest}
    session.reference_version += 1
    return web.json_response({"reference": name})


@routes.delete("/api/s/{sid}/reference")
async def clear_reference(request: web.Request) -> web.Response:
    session = request.app["server"].session(request)
    session.reference = session.reference_record = None
    session.reference_version += 1
    return web.json_response({"reference": None})


@routes.post("/api/s/{sid}/jobs")
async def start_job(request: web.Request) -> web.Response:
    srv: Server = request.app["server"]
    session = srv.session(request)
    body = await _json(request)
    kind = body.get("kind")
    if kind not in ("colorize", "upscale"):
        raise Fail(400, f"kind {kind!r}: use colorize or upscale")
    points, strength = _guidance(srv, session, body)
    lm = srv.colorizer if kind == "colorize" else srv.upscaler
    tile, overlap = srv.ctile if kind == "colorize" else srv.utile
    job = sw.Job(secrets.token_urlsafe(12), session.id, kind,
                 inf.tiles_for(lm, session.picture.data.shape, tile, overlap))
    stem = Path(session.name).name.split(".")[0] or "image"
    job.filename = f"{stem}_{'colour' if kind == 'colorize' else f'x{lm.scale}'}.png"
    srv.add_job(job)
    loop = asyncio.get_running_loop()
    loop.run_in_executor(srv.job_pool, sw.run_job, job, lm, session, points, strength,
                         (tile, overlap, srv.cfg.batch), srv.device, srv.tmp)
    return web.json_response(job.status())


def _job(request: web.Request) -> sw.Job:
    job = request.app["server"].jobs.get(request.match_info["job"])
    if job is None:
        raise Fail(404, "no such job on the server (results go with their image); run it again")
    return job


@routes.get("/api/jobs/{job}")
async def job_status(request: web.Request) -> web.Response:
    return web.json_response(_job(request).status(), headers={"Cache-Control": "no-store"})


@routes.get("/api/jobs/{job}/result")
async def job_result(request: web.Request) -> web.StreamResponse:
    job = _job(request)
    if job.state != "done" or job.path is None or not job.path.is_file():
        raise Fail(409, f"the {job.kind} result is not ready ({job.state})")
    headers = {"Content-Type": "image/png", "Content-Disposition": f'attachment; filename="{job.filename}"'}
    return web.FileResponse(job.path, headers=headers)


def make_app(srv: Server) -> web.Application:
    app = web.Application(middlewares=[guard], client_max_size=2**20)
    app["server"] = srv
    app.add_routes(routes)

    async def cleanup(app: web.Application) -> None:
        srv.close()

    app.on_cleanup.append(cleanup)
    return app


def build_server(args) -> Server:
    """Load both models and check FOLDER (raises inf.ModelError or AstroganError with one line)."""
    from pipeline.params import resolve_device

    folder = Path(args.folder) if args.folder else None
    if folder is not None and not folder.is_dir():
        raise AstroganError(f"{folder}: not a folder; give a folder of images (or none, to upload)")
    device = resolve_device(args.device)
    colorizer, cline = inf.open_model(args.colorize_model, Path(args.project), "colorize", device)
    upscaler, uline = inf.open_model(args.upscale_model, Path(args.project), "superres", device)
    strength = 1.0 if takes_hints(colorizer.model) else inf.default_strength(colorizer, Path(args.project))[0]
    cfg = Config(folder, host=args.host, max_pixels=args.max_pixels, max_upload=args.max_upload_mb * 2**20,
                 max_sessions=args.max_sessions, max_bytes=args.memory_mb * 2**20,
                 display_side=args.preview_side, workers=args.workers, batch=args.batch)
    lines = {"colorize": cline, "upscale": uline, "colorize_name": colorizer.release or colorizer.path.name}
    return Server(cfg, colorizer, upscaler, lines, strength, device)


async def _serve(app: web.Application, host: str, port: int) -> None:
    runner = web.AppRunner(app, handle_signals=True, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound = runner.addresses[0]
        shown = f"[{bound[0]}]" if ":" in bound[0] else bound[0]
        print(f"astrogan serve: http://{shown}:{bound[1]}/ (Ctrl-C to stop)", flush=True)
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


def run(args) -> int:
    """``astrogan serve``: start the server, print its URL, serve until interrupted."""
    try:
        srv = build_server(args)
    except AstroganError as e:
        print(f"astrogan: {e}", file=sys.stderr)
        return 2
    except inf.ModelError as e:
        print(f"astrogan: {e}", file=sys.stderr)
        from pipeline.cli import EXIT_NO_MODEL

        return EXIT_NO_MODEL
    print(f"colorize model: {srv.lines['colorize']}\nupscale model: {srv.lines['upscale']}", file=sys.stderr)
    if args.host not in LOOPBACK:
        print(f"astrogan serve: warning: listening on {args.host}, not 127.0.0.1: anyone who can reach this "
              "machine can use the page and open the images in FOLDER", file=sys.stderr)
    try:
        asyncio.run(_serve(make_app(srv), args.host, args.port))
    except (KeyboardInterrupt, web.GracefulExit):
        pass
    except OSError as e:
        print(f"astrogan: cannot listen on {args.host}:{args.port}: {e.strerror or e}; pick another --port",
              file=sys.stderr)
        return 2
    finally:
        srv.close()
    return 0
