"""Carry a run's packed tiles to a leased GPU in parts that fit its transfer cap, near-losslessly.

    python scripts/device_data.py pack --run RUN --out .devdata          # RUN: a release run's --work folder
    python scripts/device_data.py plan                   # which parts each device call carries
    python scripts/device_data.py unpack --src .devdata --packed RUN/data/packed      # on the GPU machine

Why: the GPU machine receives at most 64 MiB a call, the checkout included (about 30 MiB), while the
esahubble-381 train split is 3,294 tiles of 256 px: 618 MiB as raw uint8. So:

- ``pack`` re-encodes each tile as a JPEG with the quantisation tables and the (4:4:4 or 4:2:0)
  subsampling of the JPEG it was cut from. Tiles start on multiples of ``tile.stride`` (256 px), so
  the 8x8 block grid is the source's and the re-encoding keeps nearly every DCT coefficient: the
  esahubble train tiles come back at 68 dB PSNR-Y on average (84 MiB for the train split, the
  source's own bytes); tables 3x coarser give 39 MiB, still over one call, at 42.7 dB (29 at worst;
  ``--qscale``, docs/device_data_esahubble.json). A tile whose
  JPEG would come back below ``--min-psnr`` (a source that is not a JPEG, a grid that does not line
  up) is stored as a PNG instead, losslessly.
- The tiles are spread over parts of at most ``--part-mib`` MiB in a fixed order by
  sha256(tile_id), so each part is an even sample of every image. Each part (``<split>-p<k>.npz``:
  the encoded bytes, their offsets, their packed rows as JSON) stands alone.
- ``unpack`` decodes whichever parts are present into ``<packed>/<split>.npy`` + ``.csv``, the
  ``pack`` stage's format (rows in their original order), and ``<packed>/device_data.json`` says
  which parts it had and how far the pixels are from the originals. A warm GPU machine keeps the
  files of earlier calls, so parts can travel in successive calls (each names one part in
  ``carry``); a part that did not arrive means fewer tiles, which the record says, not a failure.

Runs with the checkout's ``pipeline`` package and what the GPU machine's image has (PyTorch, NumPy,
Pillow): the packed splits are read, and the files written, by the project's own helpers.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import subprocess
import sys
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image, JpegImagePlugin

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.data import PACKED_COLUMNS, packed_paths, read_packed  # noqa: E402
from pipeline.errors import AstroganError  # noqa: E402
from pipeline.fsio import atomic_path, read_jsonl, write_csv_atomic, write_json_atomic  # noqa: E402
from pipeline.superres import rgb_to_y  # noqa: E402


class DeviceDataError(Exception):
    """A one-line reason to stop, naming the file and the fix."""


def psnr_y(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR on BT.601 Y (``superres.rgb_to_y``, peak 255) of two HxWx3 uint8 images; 99 dB when equal."""
    ya, yb = (rgb_to_y(torch.from_numpy(x).permute(2, 0, 1)[None].double() / 255.0) for x in (a, b))
    mse = float((ya - yb).pow(2).mean())
    return 99.0 if mse <= 1e-10 else min(99.0, 10.0 * np.log10(255.0 ** 2 / mse))


def source_jpeg_settings(path: Path, qscale: float = 1.0) -> dict | None:
    """The quantisation tables (each step times ``qscale``, within 1-255) and subsampling of a baseline
    JPEG, or None for any other file."""
    try:
        with Image.open(path) as im:
            if im.format != "JPEG" or im.mode != "RGB":
                return None
            return {"qtables": {k: [min(255, max(1, round(v * qscale))) for v in t]
                                for k, t in im.quantization.items()},
                    "subsampling": JpegImagePlugin.get_sampling(im)}
    except OSError:
        return None


def encode_tile(tile: np.ndarray, settings: dict | None, min_psnr: float) -> tuple[bytes, str, float]:
    """(bytes, "jpeg" | "png", PSNR-Y of the decoded bytes against ``tile``, HxWx3 uint8)."""
    if settings is not None:
        buf = io.BytesIO()
        sub = settings["subsampling"] if settings["subsampling"] in (0, 1, 2) else 0
        Image.fromarray(tile).save(buf, "JPEG", qtables=settings["qtables"], subsampling=sub, optimize=True)
        back = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
        score = psnr_y(back, tile)
        if score >= min_psnr:
            return buf.getvalue(), "jpeg", score
    buf = io.BytesIO()
    Image.fromarray(tile).save(buf, "PNG", optimize=False, compress_level=9)
    return buf.getvalue(), "png", 99.0


def _order_key(tile_id: str) -> str:
    return hashlib.sha256(f"device-part:{tile_id}".encode()).hexdigest()


def _save_npz_atomic(path: Path, **arrays) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:  # a handle: np.savez would add ".npz" to a name
        np.savez(f, **arrays)


def pack(run: Path, out: Path, splits: list[str], part_mib: float, min_psnr: float, packed: str,
         manifest: str, workers: int, qscale: float = 1.0) -> dict:
    """Encode ``splits`` of ``run``'s packed tiles into parts under ``out``; returns the record."""
    man_path = run / manifest
    if not man_path.is_file():
        raise DeviceDataError(f"{man_path}: the dedup manifest is missing; pass the run folder (--run) of a "
                              "finished `dedup ... pack`")
    sources = {item["id"]: run / item["path"] for item in read_jsonl(man_path)}
    out.mkdir(parents=True, exist_ok=True)
    record: dict = {"part_mib": part_mib, "min_psnr_y": min_psnr, "qscale": qscale, "splits": {}}
    settings_cache: dict[str, dict | None] = {}
    for split in splits:
        tiles, rows = read_packed(run / packed, split)  # memory-mapped; checked against its csv
        for r in rows:
            iid = r["image_id"]
            if iid not in settings_cache:
                settings_cache[iid] = source_jpeg_settings(sources[iid], qscale) if iid in sources else None

        def job(i: int, tiles=tiles, rows=rows) -> tuple[bytes, str, float]:
            tile = np.ascontiguousarray(tiles[i].numpy().transpose(1, 2, 0))
            return encode_tile(tile, settings_cache[rows[i]["image_id"]], min_psnr)

        order = sorted(range(len(rows)), key=lambda i: _order_key(rows[i]["tile_id"]))
        with ThreadPoolExecutor(max(1, workers)) as pool:
            encoded = dict(zip(order, pool.map(job, order), strict=True))
        budget = int(part_mib * 2 ** 20)
        parts: list[list[int]] = [[]]
        size = 0
        for i in order:
            n = len(encoded[i][0])
            if parts[-1] and size + n > budget:
                parts.append([])
                size = 0
            parts[-1].append(i)
            size += n
        for old in out.glob(f"{split}-p*.npz"):
            old.unlink()
        files = []
        for k, idx in enumerate(parts, 1):
            idx.sort()
            blobs = [encoded[i][0] for i in idx]
            offsets = np.zeros(len(blobs) + 1, np.int64)
            offsets[1:] = np.cumsum([len(b) for b in blobs])
            meta = json.dumps({"split": split, "part": k, "parts": len(parts),
                               "rows": [{**{c: rows[i][c] for c in PACKED_COLUMNS}, "codec": encoded[i][1],
                                         "psnr_y": round(encoded[i][2], 2)} for i in idx]})
            path = out / f"{split}-p{k}.npz"
            _save_npz_atomic(path, data=np.frombuffer(b"".join(blobs), np.uint8), offsets=offsets,
                             meta=np.frombuffer(meta.encode(), np.uint8))
            files.append({"file": path.name, "tiles": len(idx), "bytes": path.stat().st_size})
        scores = np.array([encoded[i][2] for i in range(len(rows))]) if rows else np.zeros(0)
        record["splits"][split] = {
            "tiles": len(rows), "raw_mib": round(tiles.numel() / 2 ** 20, 1),
            "encoded_mib": round(sum(len(e[0]) for e in encoded.values()) / 2 ** 20, 1),
            "png_tiles": sum(e[1] == "png" for e in encoded.values()),
            "psnr_y_mean": round(float(scores.mean()), 2) if len(scores) else None,
            "psnr_y_min": round(float(scores.min()), 2) if len(scores) else None,
            "parts": files}
        done = record["splits"][split]
        print(f"{split}: {len(rows)} tiles -> {len(files)} parts of <= {part_mib} MiB "
              f"({done['encoded_mib']} MiB, PSNR-Y mean {done['psnr_y_mean']} min {done['psnr_y_min']} dB, "
              f"{done['png_tiles']} as PNG)")
    write_json_atomic(out / "device_data.json", record)
    return record


def _read_part(path: Path) -> tuple[dict, np.ndarray, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as z:
            data, offsets, meta = z["data"], z["offsets"], json.loads(z["meta"].tobytes().decode())
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
        raise DeviceDataError(f"{path}: not a readable device-data part ({type(e).__name__}); "
                              "pack it again") from None
    if len(offsets) != len(meta["rows"]) + 1 or offsets[-1] != len(data):
        raise DeviceDataError(f"{path}: its offsets do not match its bytes (a cut transfer?); send it again")
    return meta, data, offsets


def unpack(src: Path, packed: Path, splits: list[str], workers: int, optional: tuple[str, ...] = ()) -> dict:
    """Decode the parts of ``splits`` found in ``src`` into ``packed``; returns the record. A split in
    ``optional`` may have no parts yet (an early call carries train parts only): it is skipped."""
    packed.mkdir(parents=True, exist_ok=True)
    record: dict = {"source": str(src), "splits": {}}
    for split in splits:
        paths = sorted(src.glob(f"{split}-p*.npz"))
        if not paths and split in optional:
            print(f"{split}: no parts in {src} yet; skipped")
            record["splits"][split] = {"tiles": 0, "parts": [], "parts_missing": "all"}
            continue
        if not paths:
            raise DeviceDataError(f"{src}: no {split}-p*.npz parts; carry at least one (see `pack`)")
        items: list[tuple[dict, bytes]] = []
        expected, present = 0, []
        for path in paths:
            meta, data, offsets = _read_part(path)
            expected = max(expected, int(meta["parts"]))
            present.append(int(meta["part"]))
            items += [(r, data[offsets[j]:offsets[j + 1]].tobytes()) for j, r in enumerate(meta["rows"])]
        items.sort(key=lambda t: int(t[0]["row"]))

        def decode(item: tuple[dict, bytes]) -> np.ndarray:
            with Image.open(io.BytesIO(item[1])) as im:
                return np.asarray(im.convert("RGB")).transpose(2, 0, 1)

        npy, csv_path = packed_paths(packed, split)
        with ThreadPoolExecutor(max(1, workers)) as pool:
            tiles = list(pool.map(decode, items))
        shapes = {t.shape for t in tiles}
        if len(shapes) != 1:
            raise DeviceDataError(f"{src}: {split} tiles of several sizes {sorted(shapes)}; pack them again")
        with atomic_path(npy) as tmp, open(tmp, "wb") as f:  # a handle: np.save would add ".npy"
            np.save(f, np.stack(tiles))
        write_csv_atomic(csv_path, ({**{c: r[c] for c in PACKED_COLUMNS}, "row": new_row}
                                    for new_row, (r, _) in enumerate(items)), PACKED_COLUMNS)
        missing = sorted(set(range(1, expected + 1)) - set(present))
        scores = [float(r["psnr_y"]) for r, _ in items]
        record["splits"][split] = {"tiles": len(items), "parts": sorted(present), "parts_missing": missing,
                                   "png_tiles": sum(r["codec"] == "png" for r, _ in items),
                                   "psnr_y_mean": round(float(np.mean(scores)), 2),
                                   "psnr_y_min": round(float(np.min(scores)), 2)}
        note = f"; parts {missing} did not arrive: fewer tiles" if missing else ""
        print(f"{split}: {len(items)} tiles from parts {sorted(present)} of {expected} -> {npy}{note}")
    write_json_atomic(packed / "device_data.json", record)
    return record


CAP_MIB = 64.0  # what one call of the GPU machine receives: the checkout's tracked files plus carried paths


def tree_mib(root: Path) -> float:
    """MiB of the checkout's tracked files, which travel with every call (0 outside a git checkout)."""
    try:
        names = subprocess.run(["git", "ls-files", "-z"], cwd=root, capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return 0.0
    files = [root / n for n in names.decode().split("\0") if n]
    return sum(f.stat().st_size for f in files if f.is_file()) / 2 ** 20


def auto_part_mib(root: Path) -> float:
    """The largest part that travels beside the checkout in one call, with 1.5 MiB to spare."""
    room = CAP_MIB - tree_mib(root) - 1.5
    if room < 4:
        raise DeviceDataError(f"{root}: the checkout's tracked files take {CAP_MIB - room - 1.5:.1f} MiB "
                              f"of the {CAP_MIB:g} MiB a call carries; pass --part-mib")
    return round(room, 1)


def plan(src: Path, splits: list[str], root: Path = ROOT) -> list[dict]:
    """The device calls that carry ``src``'s parts: next-fit, in split order (so val, which the
    training phases need, rides with the last train part), each call within the cap beside the
    checkout as it is now. Stops with one line when a part no longer fits (the checkout grew)."""
    room = CAP_MIB - tree_mib(root) - 0.5
    calls: list[dict] = []
    used: list[float] = []  # exact MiB per call (the records are rounded)
    for split in splits:
        paths = sorted(src.glob(f"{split}-p*.npz"), key=lambda p: int(p.stem.rsplit("-p", 1)[1]))
        if not paths:
            raise DeviceDataError(f"{src}: no {split}-p*.npz parts; run `pack` first")
        for path in paths:
            mib = path.stat().st_size / 2 ** 20
            if mib > room:
                raise DeviceDataError(f"{path}: {mib:.1f} MiB no longer fits beside the checkout "
                                      f"({room:.1f} MiB left in a call); pack again")
            if not calls or used[-1] + mib > room:
                calls.append({"call": len(calls) + 1, "carry": [], "mib": 0.0})
                used.append(0.0)
            used[-1] += mib
            calls[-1]["carry"].append(path.as_posix())
            calls[-1]["mib"] = round(used[-1], 3)
    return calls


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("pack", help="encode a run's packed splits into parts (here)")
    p.add_argument("--run", required=True, type=Path, help="the run folder (data/packed, data/unique inside)")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--splits", nargs="+", default=["train", "val"])
    p.add_argument("--part-mib", default="auto", help="at most this many MiB per part; auto: 64 MiB less the "
                   "checkout's tracked files, less 1.5")
    p.add_argument("--min-psnr", type=float, default=45.0, help="PSNR-Y below which a tile goes as PNG")
    p.add_argument("--qscale", type=float, default=1.0, help="scale the source's quantisation steps (the "
                   "size/fidelity study: >1 is coarser)")
    p.add_argument("--packed", default="data/packed", help="paths.packed, relative to --run")
    p.add_argument("--manifest", default="data/unique/manifest.jsonl", help="relative to --run")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    u = sub.add_parser("unpack", help="decode the parts present into packed splits (on the GPU machine)")
    u.add_argument("--src", required=True, type=Path)
    u.add_argument("--packed", required=True, type=Path, help="where <split>.npy and .csv go")
    u.add_argument("--splits", nargs="+", default=["train", "val"])
    u.add_argument("--optional", nargs="*", default=[], help="splits that may have no parts yet")
    u.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    c = sub.add_parser("plan", help="which parts each device call carries (here, before the GPU session)")
    c.add_argument("--src", default=Path(".devdata"), type=Path)
    c.add_argument("--splits", nargs="+", default=["train", "val"])
    args = ap.parse_args(argv)
    try:
        if args.cmd == "pack":
            try:
                part = auto_part_mib(ROOT) if args.part_mib == "auto" else float(args.part_mib)
            except ValueError:
                raise DeviceDataError(f"--part-mib {args.part_mib!r}: a number of MiB or auto") from None
            if part <= 0:
                raise DeviceDataError(f"--part-mib {part}: must be > 0")
            print(f"parts of at most {part} MiB (the checkout's tracked files: {tree_mib(ROOT):.1f} MiB)")
            if args.qscale <= 0:
                raise DeviceDataError(f"--qscale {args.qscale}: must be > 0")
            pack(args.run, args.out, args.splits, part, args.min_psnr, args.packed, args.manifest,
                 args.workers, args.qscale)
        elif args.cmd == "plan":
            for call in plan(args.src, args.splits):
                print(json.dumps(call))
        else:
            unpack(args.src, args.packed, args.splits, args.workers, tuple(args.optional))
    except (DeviceDataError, AstroganError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
