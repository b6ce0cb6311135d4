"""The polite aiohttp client shared by the web sources, and the resumable crawl loop they run in.

Politeness, per host: at most ``scrape.concurrency`` requests in flight and ``scrape.rate_per_s``
request starts per second (raised to robots.txt's Crawl-delay when it asks for more); robots.txt
is obeyed (RFC 9309); a 429/503 pauses the whole host for its ``Retry-After``. Safety: only hosts
on the source's allow-list (plus the host of a user-set ``base_url``) are contacted, redirects
included; bodies shorter than their Content-Length are retried, never stored.

A source supplies an async iterator of :class:`Candidate` (one per image, with a stable id) and
:func:`run_source` does the rest: skip ids already in the manifest, fetch, validate, store
atomically, append the manifest, log failures to ``failed.jsonl``, show progress, and return the
summary (fetched, skipped, failed, bytes, seconds).
"""

from __future__ import annotations

import asyncio
import email.utils
import random
import re
import time
import urllib.robotparser
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from html import unescape
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

import aiohttp
from tqdm import tqdm

from pipeline.fsio import append_jsonl, read_jsonl, safe_name, write_jsonl_atomic
from pipeline.sources.common import BadImage, SourceConfig, done_ids, now_iso, store_image


def _version() -> str:
    try:
        from importlib.metadata import version
        return version("astrogan")
    except Exception:  # not pip-installed: read it from pyproject.toml beside the package
        import tomllib
        pyproject = Path(__file__).resolve().parents[2] / "pyproject.toml"
        try:
            return tomllib.loads(pyproject.read_text())["project"]["version"]
        except (OSError, KeyError, ValueError):
            return "dev"


UA_TOKEN = "astrogan"  # the product token robots.txt rules are matched against
USER_AGENT = (f"{UA_TOKEN}/{_version()} (research crawler for GAN training data; obeys robots.txt "
              f"and Retry-After; rate-limited per host) aiohttp/{aiohttp.__version__}")
MAX_REDIRECTS = 10
MAX_BODY_BYTES = 1 << 30        # 1 GiB: no single Hubble JPEG we want is larger
FAILED = "failed.jsonl"
RETRY_STATUS = {429, 500, 502, 503, 504}
IMAGE_EXT = (".jpg", ".jpeg", ".tif", ".tiff", ".png")


class FetchError(RuntimeError):
    """A URL that could not be fetched (after retries, or refused by policy)."""


class _Retry(Exception):
    def __init__(self, reason: str, retry_after: float | None = None):
        super().__init__(reason)
        self.retry_after = retry_after


def netloc(url: str) -> str:
    """``host`` or ``host:port`` (port only when not the scheme's default), lower-case."""
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    default = {"http": 80, "https": 443}.get(parts.scheme)
    return host if parts.port in (None, default) else f"{host}:{parts.port}"


def parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP-date, RFC 9110 10.2.3)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


@dataclass
class Response:
    url: str        # final URL, after redirects
    status: int
    headers: dict[str, str]
    body: bytes

    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")

    def json(self) -> Any:
        import json
        try:
            return json.loads(self.body)
        except ValueError:
            raise FetchError(f"{self.url}: expected JSON, got {self.body[:60]!r}") from None


@dataclass
class _Host:
    sem: asyncio.Semaphore
    interval: float
    next_at: float = 0.0
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    robots: urllib.robotparser.RobotFileParser | None = None
    robots_error: str | None = None
    robots_lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def turn(self) -> None:
        """Wait for this host's next request slot (a fixed interval between request starts)."""
        loop = asyncio.get_running_loop()
        async with self.lock:
            now = loop.time()
            start = max(now, self.next_at)
            self.next_at = start + self.interval
        if start > now:
            await asyncio.sleep(start - now)

    def pause(self, seconds: float) -> None:
        """Hold every request to this host for ``seconds`` (a 429/503 Retry-After)."""
        self.next_at = max(self.next_at, asyncio.get_running_loop().time() + seconds)


class PoliteClient:
    """An aiohttp session with per-host limits, retries, robots.txt and a host allow-list.

    Use as ``async with PoliteClient(hosts, ...) as client: resp = await client.get(url)``.
    ``backoff_s`` is the first retry delay (doubled each attempt, with jitter of x0.5-1.5);
    ``max_wait_s`` caps any single wait, Retry-After included, so a run cannot hang for hours.
    """

    def __init__(self, allowed: set[str], *, concurrency: int = 4, rate_per_s: float = 2.0,
                 timeout_s: float = 60.0, retries: int = 5, backoff_s: float = 1.0,
                 max_wait_s: float = 300.0, robots: bool = True, user_agent: str = USER_AGENT):
        self.allowed = {h.lower() for h in allowed}
        self.concurrency = max(1, int(concurrency))
        self.interval = 1.0 / rate_per_s if rate_per_s > 0 else 0.0
        self.timeout = aiohttp.ClientTimeout(total=timeout_s, sock_connect=min(timeout_s, 30))
        self.retries, self.backoff_s, self.max_wait_s = int(retries), backoff_s, max_wait_s
        self.obey_robots = robots
        self.user_agent = user_agent
        self.hosts: dict[str, _Host] = {}
        self.bytes = 0
        self.requests = 0
        self.session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> PoliteClient:
        # limit_per_host mirrors our semaphore; the total bounds sockets across all hosts.
        conn = aiohttp.TCPConnector(limit=self.concurrency * 8, limit_per_host=self.concurrency)
        self.session = aiohttp.ClientSession(connector=conn, timeout=self.timeout,
                                             headers={"User-Agent": self.user_agent})
        return self

    async def __aexit__(self, *exc) -> None:
        if self.session is not None:
            await self.session.close()

    def _host(self, url: str) -> _Host:
        key = netloc(url)
        if key not in self.hosts:
            self.hosts[key] = _Host(asyncio.Semaphore(self.concurrency), self.interval)
        return self.hosts[key]

    def check_allowed(self, url: str) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https"):
            raise FetchError(f"{url}: only http(s) URLs are fetched")
        if netloc(url) not in self.allowed:
            raise FetchError(f"{url}: host {netloc(url)!r} is not on this source's allow-list "
                             f"({', '.join(sorted(self.allowed))}); not followed")

    async def get(self, url: str) -> Response:
        """GET ``url`` politely; retry transient failures; raise FetchError with the reason."""
        last = "no attempt"
        for attempt in range(self.retries + 1):
            try:
                return await self._get_once(url)
            except _Retry as e:
                last = str(e)
                if attempt == self.retries:
                    break
                delay = e.retry_after
                if delay is None:
                    delay = self.backoff_s * 2 ** attempt * random.uniform(0.5, 1.5)
                await asyncio.sleep(min(delay, self.max_wait_s))
        raise FetchError(f"{url}: gave up after {self.retries + 1} attempts: {last}")

    async def _get_once(self, url: str, *, robots: bool = True) -> Response:
        for _ in range(MAX_REDIRECTS + 1):
            self.check_allowed(url)
            if robots and self.obey_robots:
                await self._check_robots(url)
            host = self._host(url)
            async with host.sem:
                await host.turn()
                resp = await self._request(url, host)
            if isinstance(resp, str):   # a redirect: follow it through the same checks
                url = resp
                continue
            return resp
        raise FetchError(f"{url}: more than {MAX_REDIRECTS} redirects")

    async def _request(self, url: str, host: _Host) -> Response | str:
        assert self.session is not None, "use PoliteClient as an async context manager"
        self.requests += 1
        try:
            async with self.session.get(url, allow_redirects=False) as r:
                if r.status in (301, 302, 303, 307, 308) and "Location" in r.headers:
                    return urljoin(url, r.headers["Location"])
                if r.status in RETRY_STATUS:
                    wait = parse_retry_after(r.headers.get("Retry-After"))
                    if wait is not None and r.status in (429, 503):
                        host.pause(min(wait, self.max_wait_s))
                    raise _Retry(f"HTTP {r.status}", wait)
                if r.status >= 400:
                    raise FetchError(f"{url}: HTTP {r.status} {r.reason or ''}".rstrip())
                size = r.content_length
                if size is not None and size > MAX_BODY_BYTES:
                    raise FetchError(f"{url}: {size} bytes is larger than {MAX_BODY_BYTES}")
                body = await r.read()
                if size is not None and "Content-Encoding" not in r.headers and len(body) != size:
                    raise _Retry(f"truncated body: {len(body)} of {size} bytes")
                self.bytes += len(body)
                return Response(str(r.url), r.status, dict(r.headers), body)
        except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError, asyncio.TimeoutError) as e:
            raise _Retry(f"{type(e).__name__}: {e}".rstrip(": ")) from None

    async def _check_robots(self, url: str) -> None:
        host = self._host(url)
        async with host.robots_lock:
            if host.robots is None and host.robots_error is None:
                await self._load_robots(url, host)
        if host.robots_error:
            raise FetchError(f"{url}: {host.robots_error}")
        if not host.robots.can_fetch(UA_TOKEN, url):
            raise FetchError(f"{url}: disallowed by robots.txt; not fetched")

    async def _load_robots(self, url: str, host: _Host) -> None:
        """Fetch robots.txt once per host (RFC 9309: 4xx = no rules; unreachable = disallow all)."""
        parts = urlsplit(url)
        robots_url = f"{parts.scheme}://{parts.netloc}/robots.txt"
        rp = urllib.robotparser.RobotFileParser(robots_url)
        lines: list[str] = []
        for attempt in range(self.retries + 1):
            try:
                lines = (await self._get_once(robots_url, robots=False)).text().splitlines()
                break
            except FetchError as e:
                if " HTTP 4" in str(e) or "allow-list" in str(e):
                    break   # no robots.txt (or it redirects off-site): no rules
                host.robots_error = f"robots.txt unusable ({e}); host skipped"
                return
            except _Retry as e:
                if attempt == self.retries:
                    host.robots_error = (f"robots.txt unreachable at {robots_url} ({e}); "
                                         "RFC 9309 says assume disallow, so host skipped")
                    return
                await asyncio.sleep(min(e.retry_after or self.backoff_s * 2 ** attempt,
                                        self.max_wait_s))
        rp.parse(lines)
        delay = rp.crawl_delay(UA_TOKEN)
        if delay:
            host.interval = max(host.interval, float(delay))
        host.robots = rp


# ---------------------------------------------------------------------------------------------
# HTML: a small standard-library parser that records what the scrapers need.

_VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source",
         "track", "wbr"}


@dataclass
class Link:
    href: str           # absolute (resolved against the page URL with urljoin)
    text: str
    classes: tuple[str, ...]   # the classes of every enclosing element, outermost first


class Page(HTMLParser):
    """Parse HTML into links (with enclosing classes), the text of each class, h1 and title.

    ``page.links``, ``page.text_of("credit")`` (all text inside elements of that class),
    ``page.h1``, ``page.title``, ``page.scripts``.
    """

    def __init__(self, html: str, url: str):
        super().__init__(convert_charrefs=True)
        self.url = url
        self.links: list[Link] = []
        self.scripts: list[str] = []
        self.h1 = self.title = ""
        self._stack: list[tuple[str, tuple[str, ...]]] = []
        self._class_text: dict[str, list[str]] = {}
        self._a: list | None = None
        self.feed(html)
        self.close()

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "a" and a.get("href"):
            self._a = [urljoin(self.url, a["href"].strip()), [], self._classes()]
        if tag not in _VOID:
            self._stack.append((tag, tuple((a.get("class") or "").split())))

    def handle_endtag(self, tag):
        if tag == "a" and self._a is not None:
            href, text, classes = self._a
            self.links.append(Link(href, " ".join("".join(text).split()), classes))
            self._a = None
        for i in range(len(self._stack) - 1, -1, -1):   # tolerate unclosed tags
            if self._stack[i][0] == tag:
                del self._stack[i:]
                break

    def handle_data(self, data):
        if self._a is not None:
            self._a[1].append(data)
        tags = [t for t, _ in self._stack]
        if "script" in tags:
            self.scripts.append(data)
            return
        if "h1" in tags:
            self.h1 = " ".join((self.h1 + " " + data).split())
        if "title" in tags:
            self.title = " ".join((self.title + " " + data).split())
        for c in set(self._classes()):
            self._class_text.setdefault(c, []).append(data)

    def _classes(self) -> tuple[str, ...]:
        return tuple(c for _, cs in self._stack for c in cs)

    def text_of(self, cls: str) -> str:
        return " ".join("".join(self._class_text.get(cls, [])).split())


def source_id(prefix: str, raw: object) -> str:
    """A source-prefixed, filesystem-safe id; path-like names (``../x/y``) keep all their parts."""
    return f"{prefix}_{safe_name(str(raw).replace('/', '_').replace(chr(92), '_'))}"


def strip_html(s: str) -> str:
    """Plain text of an HTML fragment (credits often come as ``<a href=...>NASA</a>, ESA``)."""
    text = " ".join(unescape(re.sub(r"<[^>]+>", " ", s or "")).split())
    return re.sub(r"\s+([,.;:])", r"\1", text)


def dims_in(text: str) -> tuple[int, int] | None:
    """``(w, h)`` from text like ``4000 x 3000``, ``4000X3000`` or ``8,919 × 6,683 px``."""
    m = re.search(r"(\d[\d,]{1,6})\s*[xX\u00d7]\s*(\d[\d,]{1,6})", text or "")
    return (int(m[1].replace(",", "")), int(m[2].replace(",", ""))) if m else None


def pick_largest(options: list[tuple[str, int, int]], max_pixels: int) -> str | None:
    """The URL of the largest ``(url, w, h)`` within ``max_pixels``; else the smallest above it.

    Unknown sizes (0) rank below known ones. Store-time downscaling handles the "above" case.
    """
    if not options:
        return None
    fits = [o for o in options if max_pixels <= 0 or o[1] * o[2] <= max_pixels]
    if fits:
        return max(fits, key=lambda o: o[1] * o[2])[0]
    return min(options, key=lambda o: o[1] * o[2])[0]


# ---------------------------------------------------------------------------------------------
# The crawl loop.

Store = Callable[[Path, str, bytes, dict], dict]


@dataclass
class Download:
    """One file to fetch: its manifest id, URL, record fields, and how to validate/store it."""

    id: str
    url: str
    record: dict
    store: Store | None = None   # default: common.store_image (decode, downscale, manifest)


@dataclass
class Candidate:
    """One image of a source: its id (and ids of companion files) and how to find its URL(s).

    ``resolve`` runs only when the image is not done yet, so a rerun fetches no pages for it.
    """

    id: str
    resolve: Callable[[], Awaitable[list[Download]]]
    extra_ids: tuple[str, ...] = ()


def make_client(cfg: SourceConfig, hosts: set[str], *extra_urls: str) -> PoliteClient:
    """A client for ``cfg``: the source's hosts plus those of its user-set URLs (base_url...)."""
    allowed = set(hosts) | {netloc(u) for u in (cfg.options.get("base_url"), *extra_urls) if u}
    return PoliteClient(allowed, concurrency=cfg.concurrency, rate_per_s=cfg.rate_per_s,
                        timeout_s=cfg.timeout_s, retries=cfg.retries,
                        backoff_s=float(cfg.options.get("backoff_s", 1.0)),
                        max_wait_s=float(cfg.options.get("max_wait_s", 300.0)),
                        robots=bool(cfg.options.get("robots", True)))


def run_source(out_dir: Path, cfg: SourceConfig, client: PoliteClient,
               candidates: Callable[[PoliteClient], AsyncIterator[Candidate]]) -> dict:
    """Crawl one source into ``out_dir``; return the summary (fetched, skipped, failed, bytes...)."""
    return asyncio.run(_crawl(Path(out_dir), cfg, client, candidates))


class _Budget:
    """``scrape.limit`` under concurrency: claim a slot per image; a failure gives it back."""

    def __init__(self, total: int | None):
        self.total, self.fetched, self.inflight = total, 0, 0
        self.cond = asyncio.Condition()

    def spent(self) -> bool:
        return self.total is not None and self.fetched >= self.total

    async def claim(self) -> bool:
        async with self.cond:
            while self.total is not None:
                if self.spent():
                    return False
                if self.fetched + self.inflight < self.total:
                    break
                await self.cond.wait()
            self.inflight += 1
            return True

    async def settle(self, ok: bool) -> None:
        async with self.cond:
            self.inflight -= 1
            self.fetched += ok
            self.cond.notify_all()


async def _crawl(out_dir: Path, cfg: SourceConfig, client: PoliteClient, candidates) -> dict:
    t0 = time.perf_counter()
    out_dir.mkdir(parents=True, exist_ok=True)
    done = done_ids(out_dir)
    stats = {"fetched": 0, "skipped": 0, "failed": 0}
    # limit counts images in the folder, so a resumed run tops up to it rather than adding more.
    budget = _Budget(max(0, cfg.limit - len(done)) if cfg.limit > 0 else None)
    queue: asyncio.Queue = asyncio.Queue(maxsize=cfg.concurrency * 4)
    bar = tqdm(total=budget.total, desc=f"scrape {cfg.name}", unit="img", leave=False)
    store = _store_image(cfg.max_pixels)

    async def work():
        while (cand := await queue.get()) is not None:
            if await budget.claim():
                ok = await _one(out_dir, cfg, client, cand, done, stats, store)
                await budget.settle(ok)
                bar.update(ok)

    async with client:
        # Twice the per-host concurrency: the page host and the file host can both be busy.
        workers = [asyncio.create_task(work()) for _ in range(max(2, cfg.concurrency * 2))]
        seen: set[str] = set()
        listing_id, cleared = f"{cfg.name}-listing", {f"{cfg.name}-listing"}
        try:
            async for cand in candidates(client):
                cand.id = safe_name(cand.id)
                if cand.id in seen:
                    continue
                seen.add(cand.id)
                if cand.id in done and all(safe_name(i) in done for i in cand.extra_ids):
                    stats["skipped"] += 1
                    continue
                if budget.spent():
                    break
                await queue.put(cand)
        except FetchError as e:   # a listing page failed for good: keep what we have
            tqdm.write(f"{cfg.name}: listing stopped early: {e}")
            _log_failure(out_dir, listing_id, "", str(e))
            stats["failed"] += 1
            cleared = set()
        finally:
            for _ in workers:
                await queue.put(None)
            await asyncio.gather(*workers)
            bar.close()
    _prune_failed(out_dir, done_ids(out_dir) | cleared)
    return {"source": cfg.name, **stats, "bytes": client.bytes, "requests": client.requests,
            "seconds": round(time.perf_counter() - t0, 2)}


async def _one(out_dir: Path, cfg: SourceConfig, client: PoliteClient, cand: Candidate,
               done: set, stats: dict, default_store: Store) -> bool:
    """Fetch and store one candidate's files; a failure is logged to failed.jsonl, not raised."""
    url = ""
    try:
        for dl in await cand.resolve():
            dl.id = safe_name(dl.id)
            if dl.id in done:
                continue
            url = dl.url
            resp = await client.get(dl.url)
            store = dl.store or default_store
            # Decoding/downscaling is CPU work: off the event loop so other downloads go on.
            await asyncio.to_thread(store, out_dir, dl.id, resp.body, {**dl.record, "url": resp.url})
            done.add(dl.id)
        if cand.id not in done:
            raise FetchError(f"{cand.id}: no downloadable image found")
        stats["fetched"] += 1
        return True
    except Exception as e:  # noqa: BLE001 - one bad image (or parser surprise) must not stop the crawl
        if not isinstance(e, (FetchError, BadImage)):
            e = f"{type(e).__name__}: {e}"
        stats["failed"] += 1
        _log_failure(out_dir, cand.id, url, str(e))
        tqdm.write(f"{cfg.name}: failed {cand.id}: {e}")
        return False


def _store_image(max_pixels: int) -> Store:
    def store(out_dir: Path, image_id: str, data: bytes, record: dict) -> dict:
        return store_image(out_dir, image_id, data, {"kind": "image", **record},
                           max_pixels=max_pixels)
    return store


def _log_failure(out_dir: Path, image_id: str, url: str, reason: str) -> None:
    append_jsonl(out_dir / FAILED, {"id": image_id, "url": url, "reason": reason, "at": now_iso()})


def _prune_failed(out_dir: Path, done: set[str]) -> None:
    """Keep failed.jsonl to what is still missing (a rerun that succeeds clears its entry)."""
    path = out_dir / FAILED
    if path.exists():
        rows = [r for r in read_jsonl(path) if r.get("id") not in done]
        write_jsonl_atomic(path, rows)
