"""Run ``astrogan serve`` as a user does (a separate process on a free loopback port) and talk to it."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import numpy as np
from skimage import color as skcolor

ROOT = Path(__file__).resolve().parents[1]
HUBBLE = ROOT / "pipeline" / "sources" / "vendored" / "heic1206a.jpg"


def guided_checkpoint(path: Path, *, crop: int = 64) -> Path:
    """An untrained GuidedUNet: its colour is the hints' non-learned propagation, so it is known."""
    from pipeline.models import save_generator
    from pipeline.models.guided_unet import GuidedUNet

    model = GuidedUNet(factor=1, decoder_channels=(8, 8, 8, 8))
    kwargs = {"factor": 1, "decoder_channels": [8, 8, 8, 8]}
    save_generator(path, model, arch="guided_unet", arch_kwargs=kwargs, color_space="lab", step=0,
                   card={"crop": crop})
    return path


def grey16(path: Path, h: int = 150, w: int = 200) -> Path:
    """A smooth 16-bit grey PNG (mid-grey L*, so hint colours stay inside the sRGB gamut)."""
    from PIL import Image

    yy, xx = np.mgrid[0:h, 0:w]
    img = (20000 + 60 * xx + 40 * yy).astype(np.uint16)
    Image.fromarray(img).save(path)
    return path


def png_info(body: bytes) -> tuple[int, int, int, int]:
    """(width, height, bit depth, colour type) from a PNG's IHDR (Pillow reads 16-bit RGB at 8 bits)."""
    assert body[:8] == b"\x89PNG\r\n\x1a\n", body[:40]
    w, h = int.from_bytes(body[16:20], "big"), int.from_bytes(body[20:24], "big")
    return w, h, body[24], body[25]


def ab_of(rgb) -> np.ndarray:
    """CIE a*b* of sRGB colour(s) given as 0-255 values (..., 3)."""
    return skcolor.rgb2lab(np.asarray(rgb, dtype=np.float64)[None] / 255.0)[0, ..., 1:]


def hex_rgb(colour: str) -> tuple[int, int, int]:
    return tuple(int(colour[i:i + 2], 16) for i in (1, 3, 5))


class Server:
    """``python -m pipeline serve ARGS --port 0`` in its own process; ``url`` once it listens."""

    def __init__(self, args: list[str], tmp: Path, env: dict | None = None, timeout: float = 120):
        tmp.mkdir(parents=True, exist_ok=True)
        self.tmp = tmp
        full_env = {**os.environ, "OMP_NUM_THREADS": "1", "TMPDIR": str(tmp), "PYTHONUNBUFFERED": "1",
                    **(env or {})}
        self.proc = subprocess.Popen([sys.executable, "-m", "pipeline", "serve", *args, "--port", "0"],
                                     cwd=ROOT, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True)
        self.stderr: list[str] = []
        threading.Thread(target=self._drain, daemon=True).start()
        self.url = None
        deadline = time.monotonic() + timeout
        for line in self.proc.stdout:
            m = re.search(r"(http://\S+/)", line)
            if m:
                self.url = m.group(1).rstrip("/")
                break
            if time.monotonic() > deadline:
                break
        if self.url is None:
            self.proc.kill()
            raise AssertionError(f"astrogan serve did not start: {''.join(self.stderr)[-2000:]}")

    def _drain(self) -> None:
        for line in self.proc.stderr:
            self.stderr.append(line)

    def request(self, method: str, path: str, *, json_body=None, body: bytes | None = None,
                headers: dict | None = None, timeout: float = 120) -> tuple[int, dict, bytes]:
        headers = dict(headers or {})
        if json_body is not None:
            body = json.dumps(json_body).encode()
            headers["Content-Type"] = "application/json"
        req = urllib.request.Request(self.url + path, data=body, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.status, dict(r.headers), r.read()
        except urllib.error.HTTPError as e:
            return e.code, dict(e.headers), e.read()

    def json(self, method: str, path: str, **kw) -> tuple[int, dict]:
        status, _, body = self.request(method, path, **kw)
        return status, json.loads(body)

    def upload(self, path: str, filename: str, data: bytes, fields: dict | None = None) -> tuple[int, dict]:
        body, ctype = multipart(filename, data, fields or {})
        return self.json("POST", path, body=body, headers={"Content-Type": ctype})

    def wait_job(self, job: str, timeout: float = 300) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            _, status = self.json("GET", f"/api/jobs/{job}")
            if status["state"] in ("done", "error"):
                return status
            time.sleep(0.2)
        raise AssertionError(f"job {job} did not finish in {timeout} s")

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def multipart(filename: str, data: bytes, fields: dict) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
             for k, v in fields.items()]
    parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n'
                 "Content-Type: application/octet-stream\r\n\r\n".encode() + data + b"\r\n")
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"
