"""Image sources for the ``scrape@<source>`` stages.

Every source is a module here with one entry point::

    fetch(out_dir: Path, cfg: SourceConfig) -> dict   # returns a summary (fetched, skipped, failed, ...)

that writes ``<out_dir>/<id>.<ext>`` files and appends one record per finished image to
``<out_dir>/manifest.jsonl`` (schema: ``pipeline.fsio.MANIFEST_FIELDS``), using
``pipeline.sources.common.store_image`` so that every source validates, downscales, names and
records images the same way. Modules are imported lazily so that ``embedded`` needs no network
libraries.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from pipeline.errors import AstroganError

SOURCES: dict[str, str] = {
    "embedded": "pipeline.sources.embedded",
    "folder": "pipeline.sources.folder",
    "esahubble": "pipeline.sources.esahubble",
    "hubblesite": "pipeline.sources.hubblesite",
    "heritage": "pipeline.sources.heritage",
    "hla": "pipeline.sources.hla",
}


def get_source(name: str) -> Callable:
    if name not in SOURCES:
        raise AstroganError(f"unknown source {name!r} in scrape.sources; known: {', '.join(SOURCES)}")
    return importlib.import_module(SOURCES[name]).fetch
