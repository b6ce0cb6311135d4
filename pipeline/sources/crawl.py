"""The resumable crawl loop every web source runs in.

A source supplies an async iterator of :class:`Candidate` (one per image, with a stable id) and
:func:`run_source` does the rest: skip ids already in the manifest, fetch, validate, store
atomically, append the manifest, log failures to ``failed.jsonl``, show progress, and return the
summary (fetched, skipped, failed, bytes, seconds).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from pipeline.fsio import append_jsonl, read_jsonl, safe_name, write_jsonl_atomic
from pipeline.sources.client import FetchError, PoliteClient
from pipeline.sources.common import BadImage, SourceConfig, done_ids, now_iso, store_image

FAILED = "failed.jsonl"


def source_id(prefix: str, raw: object) -> str:
    """A source-prefixed, filesystem-safe id; path-like names (``../x/y``) keep all their parts."""
    return f"{prefix}_{safe_name(str(raw).replace('/', '_').replace(chr(92), '_'))}"


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
