"""``astrogan serve`` under a user's clicks and under load, driven over HTTP against the running server.

1. Clicks: a 1-megapixel image (the vendored Hubble image heic1206a resized to 1155x866) is uploaded,
   then 20 clicks in a row: each adds one colour hint and fetches the new preview, timed end to end
   (request sent -> PNG received), as the page does after a click. Median and p90 are reported.
2. Load: 20 sessions (tabs) open the image, then 20 preview requests, each with its own two hints, are
   sent at once; every answer must be a preview of the right size, the same as the answer to the same
   request sent alone afterwards (in one more session). The server process's resident memory at start
   and its peak (VmHWM) are recorded (``import torch`` alone is about 0.7 GB resident here).

The colorizer is an untrained GuidedUNet with the default widths and a 256 px crop, the architecture of
the guided release (speed does not depend on the weights; an untrained one paints exactly the hints'
propagation, which makes the answers checkable), or ``--colorize-model``. The machine's load average
is recorded: this 2-core machine may be shared. Writes ``benchmarks/results/serve.json``.

    python -m benchmarks.serve            # the numbers in the README
    python -m benchmarks.serve --quick    # a small image, 3 clicks, 4 concurrent requests (a smoke test)
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.fsio import write_json_atomic  # noqa: E402
from tests.servekit import HUBBLE, Server  # noqa: E402

UNTRAINED = ("untrained GuidedUNet (default widths, factor 4, crop 256: the guided release's architecture; "
             "speed does not depend on the weights)")
COLOURS = ("#c05050", "#5060c0", "#50a070", "#b0a040")


def _model(path: Path) -> Path:
    from pipeline.models import save_generator
    from pipeline.models.guided_unet import GuidedUNet

    torch.manual_seed(0)
    save_generator(path, GuidedUNet(), arch="guided_unet", arch_kwargs={}, color_space="lab", step=0,
                   card={"crop": 256})
    return path


def _image(path: Path, size: tuple[int, int]) -> bytes:
    with Image.open(HUBBLE) as im:
        im.convert("RGB").resize(size, Image.Resampling.BICUBIC).save(path, quality=92)
    return path.read_bytes()


def _peak_rss_mb(pid: int) -> dict[str, float]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmHWM", "VmRSS"):
            fields[key] = int(value.split()[0]) / 1024
    return {"peak_rss_mb": round(fields["VmHWM"], 1), "rss_mb": round(fields["VmRSS"], 1)}


def _open(srv: Server, data: bytes) -> dict:
    status, info = srv.upload("/api/open", "hubble_1mp.jpg", data)
    if status != 200:
        raise SystemExit(f"benchmarks.serve: opening the image failed: {info}")
    return info


def _preview(srv: Server, sid: str, hints: list[dict]) -> tuple[float, bytes, int]:
    t0 = time.perf_counter()
    status, _, body = srv.request("POST", f"/api/s/{sid}/preview", json_body={"hints": hints, "strength": 1})
    return time.perf_counter() - t0, body, status


def _pixels(body: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(body)).convert("RGB")).astype(np.int16)


def _correct(body: bytes, status: int, info: dict, alone: bytes) -> bool:
    """A preview of the right size, equal (within 1 level) to the same request's answer when alone."""
    if status != 200:
        return False
    rgb = _pixels(body)
    pw, ph = info["preview"]
    return rgb.shape == (ph, pw, 3) and int(np.abs(rgb - _pixels(alone)).max()) <= 1


def clicks(srv: Server, data: bytes, n: int, rng: np.random.Generator) -> dict:
    t0 = time.perf_counter()
    info = _open(srv, data)
    opened = time.perf_counter() - t0
    first, _, _ = _preview(srv, info["session"], [])
    hints, times = [], []
    for i in range(n):
        hints.append({"x": int(rng.integers(0, info["width"])), "y": int(rng.integers(0, info["height"])),
                      "color": COLOURS[i % len(COLOURS)], "radius": 1})
        seconds, body, status = _preview(srv, info["session"], hints)
        if status != 200:
            raise SystemExit(f"benchmarks.serve: click {i + 1} failed: {body[:200]!r}")
        times.append(seconds)
    times_ms = sorted(t * 1000 for t in times)
    return {"image": f"{info['width']}x{info['height']}", "preview": info["preview"], "clicks": n,
            "open_upload_s": round(opened, 3), "first_preview_ms": round(first * 1000, 1),
            "median_ms": round(statistics.median(times_ms), 1),
            "p90_ms": round(times_ms[min(len(times_ms) - 1, int(0.9 * len(times_ms)))], 1),
            "max_ms": round(times_ms[-1], 1), "all_ms": [round(t * 1000, 1) for t in times]}


def load(srv: Server, data: bytes, n: int, rng: np.random.Generator) -> dict:
    sessions = [_open(srv, data) for _ in range(n)]
    before = _peak_rss_mb(srv.pid)
    jobs = []
    for info in sessions:
        w, h = info["width"], info["height"]
        jobs.append((info, [{"x": int(rng.integers(0, w)), "y": int(rng.integers(0, h)), "color": COLOURS[k]}
                            for k in range(2)]))
    t0 = time.perf_counter()
    with ThreadPoolExecutor(n) as pool:
        answers = list(pool.map(lambda job: _preview(srv, job[0]["session"], job[1]), jobs))
    wall = time.perf_counter() - t0
    check = _open(srv, data)["session"]
    alone = [_preview(srv, check, hints)[1] for _, hints in jobs]
    ok = [_correct(body, status, info, ref)
          for (info, _), (_, body, status), ref in zip(jobs, answers, alone, strict=True)]
    latencies = sorted(a[0] * 1000 for a in answers)
    return {"sessions": n, "concurrent_requests": n, "all_correct": all(ok), "correct": sum(ok),
            "wall_s": round(wall, 2), "latency_median_ms": round(statistics.median(latencies), 1),
            "latency_max_ms": round(latencies[-1], 1), "server_after_open": before,
            "server_after_load": _peak_rss_mb(srv.pid)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="small image, 3 clicks, 4 concurrent requests")
    p.add_argument("--colorize-model", help="a guided colorizer (default: an untrained GuidedUNet)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "serve.json"))
    args = p.parse_args(argv)
    size, n_clicks, n_load = ((320, 240), 3, 4) if args.quick else ((1155, 866), 20, 20)
    rng = np.random.default_rng(0)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="astrogan-bench-") as tmp:
        tmp = Path(tmp)
        model = args.colorize_model or str(_model(tmp / "guided.pt"))
        data = _image(tmp / "hubble.jpg", size)
        srv = Server(["--colorize-model", model, "--max-sessions", str(n_load + 2)], tmp / "server")
        at_start = _peak_rss_mb(srv.pid)
        try:
            result = {"server_at_start": at_start, "clicks": clicks(srv, data, n_clicks, rng),
                      "load": load(srv, data, n_load, rng)}
        finally:
            srv.stop()
    result = {
        "benchmark": "astrogan serve: preview after a click, and concurrent previews, over HTTP on loopback",
        "quick": args.quick,
        "model": args.colorize_model or UNTRAINED,
        "server": "astrogan serve defaults: preview 512 px long side, model on a 256 px copy, 1 worker",
        **result,
        "machine": {"cpus": os.cpu_count(), "torch_threads": 1, "python": platform.python_version(),
                    "torch": torch.__version__, "load_average_before": [round(v, 2) for v in load_before],
                    "load_average_after": [round(v, 2) for v in os.getloadavg()],
                    "note": "OMP_NUM_THREADS=1 for the server; the 2 cores were shared with another CPU job "
                            "(a colleague's training run), see the load averages"},
    }
    write_json_atomic(args.out, result)
    c, ld = result["clicks"], result["load"]
    print(f"clicks on {c['image']}: median {c['median_ms']} ms, p90 {c['p90_ms']} ms; "
          f"{ld['concurrent_requests']} concurrent previews: {ld['correct']} correct in {ld['wall_s']} s, "
          f"server peak RSS {ld['server_after_load']['peak_rss_mb']} MB -> {args.out}")
    return 0 if ld["all_correct"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
