"""Stage ``scrape@<source>``: fetch one source's images into ``<paths.raw>/<source>/``.

    python -m pipeline.stages.scrape embedded

Reads ``scrape.limit``, ``scrape.max_pixels`` and ``scrape.<source>`` (plus the politeness keys
the web sources use). Each source appends to ``<out>/manifest.jsonl`` as it goes and records
failures in ``<out>/failed.jsonl``; web sources resume (the folder is a ``persist`` output),
local ones (``embedded``, ``folder``) rebuild it. Prints the source's summary as one line.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.errors import run_main
from pipeline.params import load_params
from pipeline.sources import SOURCES, get_source
from pipeline.sources.common import SourceConfig


def scrape(params: dict, source: str) -> dict:
    """Run ``source`` into ``<paths.raw>/<source>`` and return its summary dict."""
    cfg = SourceConfig.from_params(params, source)
    fetch = get_source(source)
    return fetch(out_dir=Path(params["paths"]["raw"]) / source, cfg=cfg)


def format_summary(source: str, s: dict) -> str:
    keys = ("fetched", "skipped", "failed", "bytes", "seconds")
    extra = {k: v for k, v in s.items() if k not in keys}
    line = (f"scrape {source}: fetched {s.get('fetched', 0)}, skipped {s.get('skipped', 0)}, "
            f"failed {s.get('failed', 0)}, {s.get('bytes', 0) / 1e6:.1f} MB in {s.get('seconds', 0):.1f} s")
    return line + "".join(f", {k} {v}" for k, v in extra.items())


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Fetch one image source into data/raw/<source>.")
    ap.add_argument("source", help=f"one of: {', '.join(SOURCES)}")
    args = ap.parse_args(argv)
    print(format_summary(args.source, scrape(load_params(), args.source)))


if __name__ == "__main__":
    run_main(main)
