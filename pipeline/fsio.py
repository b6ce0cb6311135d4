"""File helpers: atomic writes, JSON-lines manifests, sha256, safe names."""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import os
import re
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

MANIFEST = "manifest.jsonl"
_UMASK = os.umask(0o022)
os.umask(_UMASK)  # read the process umask once: mkstemp files are 0600, written files should not be
MANIFEST_FIELDS = ("id", "source", "url", "sha256", "width", "height", "title", "credit",
                   "licence", "fetched_at")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it over ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_UMASK)
    tmp = Path(tmp)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def save_torch_atomic(path: str | os.PathLike, obj: Any) -> None:
    """``torch.save(obj)`` written atomically, the same bytes for the same ``obj`` every time.

    Saved to memory first: ``torch.save`` to a file names the zip archive inside after the file, and
    the temporary file's name is random, so the same checkpoint came out with different bytes on
    every run and ``dvc repro -f`` changed ``dvc.lock``."""
    import io

    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    write_bytes_atomic(path, buf.getvalue())


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def write_csv_atomic(path: str | os.PathLike, rows: Iterable[dict], fields: list[str]) -> None:
    with atomic_path(path) as tmp, tmp.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)


def read_csv(path: str | os.PathLike) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def read_csv_frame(path: str | os.PathLike):
    """A CSV as a pandas DataFrame of strings, exactly as :func:`read_csv` reads it (no NaN, no
    numbers: "NA" and "" stay text), so that :func:`write_frame_atomic` gives the same bytes back.
    An empty file is an empty frame. pandas is imported here, not above: the CLI imports this module."""
    import pandas as pd

    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False)
    except pd.errors.EmptyDataError:
        return pd.DataFrame()


def write_frame_atomic(path: str | os.PathLike, frame) -> None:
    """A DataFrame as CSV, byte for byte as :func:`write_csv_atomic` writes its rows (the csv
    module's excel dialect: minimal quoting, CRLF line ends), without the index."""
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False, lineterminator="\r\n")


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """Read a JSON-lines file; a torn last line (killed writer) is ignored, not fatal."""
    path = Path(path)
    if not path.exists():
        return []
    rows = []
    lines = path.read_text().splitlines()
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                break
            raise ValueError(f"{path}:{i + 1}: not valid JSON; fix or delete that line") from None
    return rows


def append_jsonl(path: str | os.PathLike, row: dict) -> None:
    """Append one record and fsync, so a killed run keeps every record written before it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(json.dumps(row, sort_keys=False, default=str) + "\n")
        f.flush()
        os.fsync(f.fileno())


def write_jsonl_atomic(path: str | os.PathLike, rows: Iterable[dict]) -> None:
    write_text_atomic(path, "".join(json.dumps(r, default=str) + "\n" for r in rows))


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_name(name: str, max_len: int = 120) -> str:
    """A filesystem-safe id: no separators, no leading dots, no traversal, bounded length."""
    name = _UNSAFE.sub("_", name.replace("\\", "/").split("/")[-1]).strip("._")
    return name[:max_len] or "unnamed"
