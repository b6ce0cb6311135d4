"""The polite aiohttp client the web sources share.

Politeness, per host: at most ``scrape.concurrency`` requests in flight and ``scrape.rate_per_s``
request starts per second (raised to robots.txt's Crawl-delay when it asks for more); robots.txt
is obeyed (RFC 9309); a 429/503 pauses the whole host for its ``Retry-After``. Safety: only hosts
on the source's allow-list (plus the host of a user-set ``base_url``) are contacted, redirects
included; bodies shorter than their Content-Length are retried, never stored.
"""

from __future__ import annotations

import asyncio
import email.utils
import random
import time
import urllib.robotparser
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

import aiohttp

from pipeline.sources.common import SourceConfig


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
RETRY_STATUS = {429, 500, 502, 503, 504}


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


def make_client(cfg: SourceConfig, hosts: set[str], *extra_urls: str) -> PoliteClient:
    """A client for ``cfg``: the source's hosts plus those of its user-set URLs (base_url...)."""
    allowed = set(hosts) | {netloc(u) for u in (cfg.options.get("base_url"), *extra_urls) if u}
    return PoliteClient(allowed, concurrency=cfg.concurrency, rate_per_s=cfg.rate_per_s,
                        timeout_s=cfg.timeout_s, retries=cfg.retries,
                        backoff_s=float(cfg.options.get("backoff_s", 1.0)),
                        max_wait_s=float(cfg.options.get("max_wait_s", 300.0)),
                        robots=bool(cfg.options.get("robots", True)))
