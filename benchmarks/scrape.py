"""Scraper throughput against the local fake archive with 100 ms latency per response.

Runs the esahubble feed scraper (one file request per image, one feed request per 25 images)
at concurrency 1, 4 and 16 with a rate limit high enough not to bind, then at concurrency 16
with a binding rate limit, and once at the default politeness (params.yaml: 4 and 2/s).
Expected images/s ~ min(concurrency / latency, rate_per_s) (a few % lower: feed pages and
robots.txt are requests too). Writes ``benchmarks/results/scrape.json``.

    python -m benchmarks.scrape
"""

from __future__ import annotations

import json
import platform
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.fsio import write_json_atomic  # noqa: E402
from pipeline.sources import get_source  # noqa: E402
from pipeline.sources.common import SourceConfig  # noqa: E402
from tests.fakesites import FakeSites  # noqa: E402

LATENCY = 0.1
RUNS = [  # (concurrency, rate_per_s, images)
    (1, 1000.0, 20), (4, 1000.0, 60), (16, 1000.0, 200), (16, 50.0, 150), (4, 2.0, 10)]


def one(concurrency: int, rate: float, n: int) -> dict:
    with FakeSites(n=n, per_page=25, latency=LATENCY) as sites, tempfile.TemporaryDirectory() as d:
        cfg = SourceConfig(name="esahubble", concurrency=concurrency, rate_per_s=rate,
                           options={"base_url": sites.url})
        s = get_source("esahubble")(Path(d), cfg)
    assert s["fetched"] == n and s["failed"] == 0, s
    expected = min(concurrency / LATENCY, rate)
    return {"concurrency": concurrency, "rate_per_s": rate, "images": n,
            "seconds": s["seconds"], "requests": s["requests"],
            "images_per_s": round(n / s["seconds"], 2),
            "requests_per_s": round(s["requests"] / s["seconds"], 2),
            "expected_images_per_s": round(expected, 2)}


def main() -> None:
    results = []
    for c, rate, n in RUNS:
        r = one(c, rate, n)
        print(json.dumps(r))
        results.append(r)
    out = ROOT / "benchmarks" / "results" / "scrape.json"
    write_json_atomic(out, {"latency_s": LATENCY, "source": "esahubble feed (tests/fakesites.py)",
                            "python": platform.python_version(), "machine": platform.machine(),
                            "runs": results})
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
