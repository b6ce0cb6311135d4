"""Stage ``dedup``: drop exact and near-duplicate images across the scraped sources.

    python -m pipeline.stages.dedup

Reads the manifests of ``<paths.raw>/<s>`` for ``s`` in ``scrape.sources``. Exact duplicates
share a sha256; near-duplicates have perceptual hashes (``imagehash.phash`` of the
histogram-equalized grey image, ``dedup.hash_size`` squared bits) within Hamming distance
``dedup.max_distance``. Pairs are grouped transitively (union-find) and each group keeps its
largest image (width*height; ties: smallest id). phash catches re-scaled and re-encoded copies,
not crops of one release. Writes ``<paths.unique>/manifest.jsonl`` (kept records plus ``path``,
project-relative, into data/raw), ``<paths.unique>/dropped.jsonl`` ({id, path, duplicate_of,
distance, reason}) and ``<paths.metrics>/data.dedup.json``.
"""

from __future__ import annotations

import os
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import imagehash
import numpy as np
from PIL import Image, ImageOps
from tqdm import tqdm

from pipeline.errors import AstroganError, run_main
from pipeline.fsio import MANIFEST, read_jsonl, write_json_atomic, write_jsonl_atomic
from pipeline.params import load_params
from pipeline.sources.common import glob_escape


def workers() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def phash_file(args: tuple[str, int]) -> np.ndarray | str:
    """Packed phash bits (uint8) of the image at ``path``, or the error message as a str.

    The grey image is histogram-equalized first: on black sky, plain phash sees only a bright
    central blob, so unrelated images of one small object hash alike (on esahubble-381,
    opo0219a and potw1102a, two different nebulae, are at distance 0; equalized, 30).
    JPEGs are decoded at reduced scale (``draft``, >= 256 px a side): the hash only sees a
    (4 * hash_size)^2 thumbnail, so a full decode would be wasted work.
    """
    path, hash_size = args
    try:
        with Image.open(path) as im:
            im.draft("RGB", (256, 256))
            im.load()
            if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):  # convert("L") would clip at 255
                a = np.asarray(im, dtype=np.float64)
                im = Image.fromarray((a / max(a.max(), 1) * 255).round().astype(np.uint8))
            elif im.mode not in ("RGB", "L"):
                im = im.convert("RGBA")
                im = Image.alpha_composite(Image.new("RGBA", im.size, (0, 0, 0, 255)), im)
            grey = ImageOps.equalize(im.convert("L"))
            bits = imagehash.phash(grey, hash_size=hash_size).hash
    except Exception as e:  # any decoder error: reported per file by the caller
        return f"{type(e).__name__}: {e}"
    return np.packbits(bits.ravel())


def hash_all(paths: list[Path], hash_size: int) -> list[np.ndarray | str]:
    """phash every image on all cores (decode-bound), in input order."""
    jobs = [(str(p), hash_size) for p in paths]
    n = min(workers(), max(1, len(jobs) // 8))
    if n == 1:
        return [phash_file(j) for j in tqdm(jobs, desc="phash", unit="img")]
    with ProcessPoolExecutor(max_workers=n) as ex:
        return list(tqdm(ex.map(phash_file, jobs, chunksize=8), total=len(jobs), desc="phash", unit="img"))


def hamming_pairs(hashes: np.ndarray, max_distance: int) -> list[tuple[int, int, int]]:
    """All (i, j, distance) with i < j and Hamming distance <= max_distance; hashes (N, B) uint8."""
    bits = np.unpackbits(hashes, axis=1).astype(bool)
    pairs = []
    for i in range(len(bits) - 1):
        d = (bits[i + 1:] != bits[i]).sum(axis=1)
        pairs += [(i, i + 1 + int(j), int(d[j])) for j in np.flatnonzero(d <= max_distance)]
    return pairs


def find_root(parent: list[int], i: int) -> int:
    while parent[i] != i:
        parent[i] = parent[parent[i]]
        i = parent[i]
    return i


def dedup(records: list[dict], hashes: np.ndarray, max_distance: int) -> tuple[list[dict], list[dict]]:
    """Split ``records`` (with ``id, sha256, width, height, path``) into (kept, dropped).

    ``hashes`` are their packed phashes (N, B). Exact sha256 matches and phash pairs within
    ``max_distance`` join one group (union-find); the largest of each group is kept.
    """
    n = len(records)
    parent = list(range(n))
    links = [(i, j) for i, j, _ in hamming_pairs(hashes, max_distance)]
    first_of_sha: dict[str, int] = {}
    for i, r in enumerate(records):
        links.append((first_of_sha.setdefault(r["sha256"], i), i))
    for i, j in links:
        parent[find_root(parent, i)] = find_root(parent, j)
    groups: dict[int, list[int]] = {}
    for i in range(n):
        groups.setdefault(find_root(parent, i), []).append(i)
    bits = np.unpackbits(hashes, axis=1)
    keep_of = {}
    for members in groups.values():
        best = min(members, key=lambda i: (-records[i]["width"] * records[i]["height"], records[i]["id"]))
        keep_of.update({i: best for i in members})
    kept, dropped = [], []
    for i, r in enumerate(records):
        k = keep_of[i]
        if k == i:
            kept.append(r)
            continue
        exact = r["sha256"] == records[k]["sha256"]
        dropped.append({"id": r["id"], "path": r["path"], "duplicate_of": records[k]["id"],
                        "distance": int((bits[i] != bits[k]).sum()),
                        "reason": "exact (same sha256)" if exact else "near-duplicate (phash)"})
    return kept, dropped


def load_records(raw: Path, sources: list[str]) -> list[dict]:
    """Manifest records of each source (last record per id wins), with ``path`` added."""
    records: dict[str, dict] = {}
    for s in sources:
        manifest = raw / s / MANIFEST
        if not manifest.is_file():
            raise AstroganError(f"{manifest}: missing; run `dvc repro scrape@{s}` first")
        for r in read_jsonl(manifest):
            if r.get("kind") == "fits":
                continue  # the HLA's raw FITS kept beside its colour preview: not for tiling
            name = r.get("file") or next((p.name for p in (raw / s).glob(f"{glob_escape(r['id'])}.*")), None)
            if name and (raw / s / name).is_file():
                records[r["id"]] = {**r, "path": (raw / s / name).as_posix()}
    return list(records.values())


def run(raw: Path, sources: list[str], hash_size: int, max_distance: int) -> tuple[list[dict], list[dict]]:
    records = load_records(raw, sources)
    hashes = hash_all([Path(r["path"]) for r in records], hash_size)
    bad = [(r, h) for r, h in zip(records, hashes, strict=True) if isinstance(h, str)]
    for r, err in bad:
        tqdm.write(f"{r['path']}: unreadable ({err}); left out; delete it and rerun its scrape stage",
                   file=sys.stderr)
    good = [(r, h) for r, h in zip(records, hashes, strict=True) if not isinstance(h, str)]
    if not good:
        raise AstroganError(f"dedup: no readable images under {raw} for sources {sources}")
    kept, dropped = dedup([r for r, _ in good], np.stack([h for _, h in good]), max_distance)
    dropped += [{"id": r["id"], "path": r["path"], "duplicate_of": None, "distance": None,
                 "reason": f"unreadable: {err}"} for r, err in bad]
    return kept, dropped


def main() -> None:
    params = load_params()
    paths, d = params["paths"], params["dedup"]
    kept, dropped = run(Path(paths["raw"]), list(params["scrape"]["sources"]),
                        int(d["hash_size"]), int(d["max_distance"]))
    out = Path(paths["unique"])
    write_jsonl_atomic(out / MANIFEST, kept)
    write_jsonl_atomic(out / "dropped.jsonl", dropped)
    metrics = {"images_in": len(kept) + len(dropped), "images_kept": len(kept),
               "images_dropped": len(dropped)}
    write_json_atomic(Path(paths["metrics"]) / "data.dedup.json", metrics)
    print(f"dedup: {metrics['images_in']} images in, {len(kept)} kept, {len(dropped)} dropped")


if __name__ == "__main__":
    run_main(main)
