"""``astrogan serve`` over HTTP, without a browser: a real server process on loopback, an untrained guided
model (its colour is the hints' propagation, so the expected colours are known), tiny images."""

from __future__ import annotations

import io
import os

import numpy as np
import pytest
from PIL import Image

from pipeline.imageio import read_meta
from tests.servekit import HUBBLE, Server, ab_of, grey16, guided_checkpoint, hex_rgb, png_info

HINTS = [{"x": 30, "y": 40, "color": "#c05050"}, {"x": 170, "y": 110, "color": "#5060c0"}]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("serve")
    folder = tmp / "folder"
    folder.mkdir()
    grey16(folder / "grey16.png")
    (tmp / "secret.png").write_bytes((folder / "grey16.png").read_bytes())
    os.symlink(tmp / "secret.png", folder / "link_out.png")
    (folder / "sub").mkdir()
    Image.fromarray(np.full((20, 30, 3), 90, np.uint8)).save(folder / "sub" / "small.png")
    model = guided_checkpoint(tmp / "guided.pt")
    srv = Server([str(folder), "--colorize-model", str(model), "--max-pixels", "40000",
                  "--max-upload-mb", "1"], tmp / "tmp")
    yield srv, folder, tmp
    srv.stop()


def _open(srv, rel="grey16.png"):
    status, info = srv.json("POST", "/api/open", json_body={"path": rel})
    assert status == 200, info
    return info


def test_preview_follows_the_hints_and_the_download_is_full_resolution_16_bit(served):
    srv, folder, _ = served
    info = _open(srv)
    assert (info["width"], info["height"], info["grey"], info["bit_depth"]) == (200, 150, True, 16)
    status, headers, body = srv.request("POST", f"/api/s/{info['session']}/preview",
                                        json_body={"hints": HINTS, "strength": 1})
    assert status == 200 and headers["Content-Type"] == "image/png"
    preview = np.asarray(Image.open(io.BytesIO(body)).convert("RGB"))
    assert preview.shape == (150, 200, 3)  # small images preview at full size
    for h in HINTS:
        near = preview[h["y"] - 2:h["y"] + 3, h["x"] - 2:h["x"] + 3].reshape(-1, 3)
        assert np.abs(np.median(ab_of(near), axis=0) - ab_of(hex_rgb(h["color"]))).max() < 6
    status, job = srv.json("POST", f"/api/s/{info['session']}/jobs",
                           json_body={"kind": "colorize", "hints": HINTS, "strength": 1})
    assert status == 200 and job["total"] > 0
    done = srv.wait_job(job["job"])
    assert done["state"] == "done" and done["done"] == done["total"], done
    status, headers, png = srv.request("GET", done["download"])
    assert status == 200 and 'filename="grey16_colour.png"' in headers["Content-Disposition"]
    assert png_info(png) == (200, 150, 16, 2)  # 16-bit RGB, as the 16-bit input
    path = served[2] / "download.png"
    path.write_bytes(png)
    meta = read_meta(path)
    assert meta["hints"]["points"] == [[30, 40, "#c05050", 1], [170, 110, "#5060c0", 1]]
    assert len(meta["model_sha256"]) == 64 and meta["model"].endswith("guided.pt") and meta["strength"] == 1
    assert meta["source"] == "grey16.png" and meta["input"]["stretch"] == "none"


def test_strength_zero_is_grey_and_upscale_is_4x(served):
    srv, _, _ = served
    info = _open(srv, "sub/small.png")
    status, _, body = srv.request("POST", f"/api/s/{info['session']}/preview",
                                  json_body={"hints": [{"x": 3, "y": 3, "color": "#c05050"}], "strength": 0})
    rgb = np.asarray(Image.open(io.BytesIO(body)).convert("RGB")).astype(int)
    assert status == 200 and np.abs(rgb - rgb[..., :1]).max() <= 1  # strength 0: grey
    status, job = srv.json("POST", f"/api/s/{info['session']}/jobs", json_body={"kind": "upscale"})
    done = srv.wait_job(job["job"])
    assert done["state"] == "done", done
    _, _, png = srv.request("GET", done["download"])
    assert png_info(png)[:3] == (120, 80, 8)


def test_bad_inputs_get_one_sentence_and_the_server_keeps_running(served):
    srv, folder, _ = served
    cases = [
        (srv.upload("/api/open", "notes.png", b"not a picture"), 400, "notes.png: not a recognised image"),
        (srv.upload("/api/open", "big.png", _png(np.zeros((250, 200), np.uint8))), 400, "--max-pixels"),
        (srv.upload("/api/open", "huge.png", b"\0" * (1 << 20 | 4096)), 413, "--max-upload-mb"),
        (srv.json("POST", "/api/open", json_body={"path": "../secret.png"}), 403, "outside the folder"),
        (srv.json("POST", "/api/open", json_body={"path": "link_out.png"}), 403, "outside the folder"),
        (srv.json("POST", "/api/open", json_body={"path": str(folder / "grey16.png")}), 403, "relative"),
        (srv.json("POST", "/api/open", json_body={"path": "nothere.png"}), 404, "no such file"),
        (srv.json("POST", "/api/s/nosuchsession/preview", json_body={}), 404, "open it again"),
    ]
    for (status, body), want_status, want in cases:
        assert status == want_status and want in body["error"], body
        assert "\n" not in body["error"]
    sid = _open(srv)["session"]
    grey_ref = _png(np.full((30, 30, 3), 128, np.uint8))
    status, body = srv.upload(f"/api/s/{sid}/reference", "grey.png", grey_ref)
    assert status == 400 and "grey.png" in body["error"] and "colour reference" in body["error"]
    status, body = srv.json("POST", f"/api/s/{sid}/preview",
                            json_body={"hints": [{"x": 500, "y": 1, "color": "#c05050"}]})
    assert status == 400 and "outside the 200x150 image" in body["error"]
    status, body = srv.json("POST", f"/api/s/{sid}/preview",
                            json_body={"hints": [{"x": 1, "y": 1, "color": "red"}]})
    assert status == 400 and "#rrggbb" in body["error"]
    assert srv.json("GET", "/api/config")[0] == 200 and srv.proc.poll() is None


def test_a_colour_reference_guides_the_preview(served):
    srv, _, _ = served
    sid = _open(srv)["session"]
    green = np.zeros((40, 40, 3), np.uint8)
    green[..., 1] = 200
    status, body = srv.upload(f"/api/s/{sid}/reference", "green.png", _png(green))
    assert status == 200 and body["reference"] == "green.png"
    _, _, png = srv.request("POST", f"/api/s/{sid}/preview", json_body={"hints": [], "strength": 1})
    a = ab_of(np.asarray(Image.open(io.BytesIO(png)).convert("RGB")))[..., 0]
    assert a.mean() < -10  # green: a* < 0
    assert srv.request("DELETE", f"/api/s/{sid}/reference")[0] == 200
    _, _, png = srv.request("POST", f"/api/s/{sid}/preview", json_body={"hints": [], "strength": 1})
    rgb = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)
    assert np.abs(rgb - rgb[..., :1]).max() <= 2  # no guidance: an untrained guided model is grey


def test_folder_listing_and_the_page(served):
    srv, _, _ = served
    status, body = srv.json("GET", "/api/files")
    assert status == 200 and body["files"] == ["grey16.png", "sub/small.png"]  # no link out of FOLDER
    status, headers, page = srv.request("GET", "/")
    assert status == 200 and b"/static/app.js" in page
    assert "default-src 'self'" in headers["Content-Security-Policy"]
    assert srv.request("GET", "/static/app.js")[0] == 200
    assert srv.request("GET", "/static/../serve.py")[0] == 404


def test_foreign_origins_and_hosts_are_refused(served):
    srv, _, _ = served
    status, body = srv.json("POST", "/api/open", json_body={"path": "grey16.png"},
                            headers={"Origin": "http://evil.example"})
    assert status == 403 and "another site" in body["error"]
    status, body = srv.json("POST", "/api/open", json_body={"path": "grey16.png"},
                            headers={"Sec-Fetch-Site": "cross-site"})
    assert status == 403
    status, body = srv.json("GET", "/api/config", headers={"Host": "rebound.example"})
    assert status == 403 and "Host" in body["error"]
    status, _ = srv.json("POST", "/api/open", json_body={"path": "grey16.png"}, headers={"Origin": srv.url})
    assert status == 200


def test_uploads_and_results_are_temporary(tmp_path):
    model = guided_checkpoint(tmp_path / "guided.pt")
    srv = Server(["--colorize-model", str(model)], tmp_path / "tmp")
    try:
        status, info = srv.upload("/api/open", "g.png", grey16(tmp_path / "g.png").read_bytes())
        assert status == 200 and info["name"] == "g.png"
        work = list((tmp_path / "tmp").glob("astrogan-serve-*"))
        assert len(work) == 1 and not list(work[0].iterdir())  # the upload is gone once decoded
        _, job = srv.json("POST", f"/api/s/{info['session']}/jobs", json_body={"kind": "colorize"})
        assert srv.wait_job(job["job"])["state"] == "done" and len(list(work[0].iterdir())) == 1
    finally:
        assert srv.stop() == 0
    assert not list((tmp_path / "tmp").iterdir())


def test_a_model_without_hints_says_so_and_another_host_warns(tmp_path):
    from pipeline.models import save_generator
    from pipeline.models.resnet_unet import ResNet18UNet

    path = tmp_path / "plain.pt"
    save_generator(path, ResNet18UNet(decoder_channels=(8, 8, 8, 8)), arch="resnet18_unet",
                   arch_kwargs={"decoder_channels": [8, 8, 8, 8]}, color_space="lab", step=0,
                   card={"crop": 64})
    srv = Server(["--colorize-model", str(path), "--host", "0.0.0.0"], tmp_path / "tmp")
    try:
        _, config = srv.json("GET", "/api/config")
        assert not config["colorize"]["takes_hints"] and "takes no colour hints" in config["colorize"]["note"]
        _, info = srv.upload("/api/open", "hubble.jpg", HUBBLE.read_bytes())
        assert info["preview"] == [512, 384]
        status, _, png = srv.request("POST", f"/api/s/{info['session']}/preview",
                                     json_body={"hints": [{"x": 1, "y": 1, "color": "#c05050"}]})
        assert status == 200 and png_info(png)[:2] == (512, 384)  # the automatic colour; hints ignored
        status, body = srv.upload(f"/api/s/{info['session']}/reference", "r.jpg", HUBBLE.read_bytes())
        assert status == 400 and "takes no reference" in body["error"]
    finally:
        srv.stop()
    assert "warning: listening on 0.0.0.0" in "".join(srv.stderr)


def _png(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.slow
def test_serve_benchmark_quick_runs_end_to_end(tmp_path):
    import json
    import subprocess
    import sys

    from tests.servekit import ROOT

    out = tmp_path / "serve.json"
    done = subprocess.run([sys.executable, "-m", "benchmarks.serve", "--quick", "--out", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    res = json.loads(out.read_text())
    assert res["quick"] and res["clicks"]["clicks"] == len(res["clicks"]["all_ms"]) == 3
    assert res["load"]["all_correct"] and res["load"]["correct"] == res["load"]["concurrent_requests"] == 4
    assert res["load"]["server_after_load"]["peak_rss_mb"] >= res["server_at_start"]["rss_mb"] > 0
    assert len(res["machine"]["load_average_before"]) == 3
