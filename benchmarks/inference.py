"""Inference throughput of ``astrogan colorize`` / ``upscale``: megapixels per second, tile sizes compared.

The input is scikit-image's Hubble Deep Field resized: colorize gets a grey ``--size`` px square
(2048 by default), upscale an RGB ``--size``/4 square, so that both *produce* a ``--size`` px image.
Each run times the whole in-memory path the CLI takes (L or RGB conversion, tiles, forward passes,
blending, Lab -> RGB, quantization) after one warm-up tile batch; file decoding and PNG encoding
are not included. ``mpx_per_s`` counts input pixels, ``out_mpx_per_s`` output pixels (16x the
input for 4x upscaling). Speed does not depend on the weights: without a trained checkpoint a
random-init network of the same architecture is timed (recorded as such). Runs on CPU, and on the
GPU too when there is one. Writes ``benchmarks/results/inference.json``.

    python -m benchmarks.inference            # 2048 px outputs, 3 tile sizes per model
    python -m benchmarks.inference --quick    # 512 px outputs, CPU only, 2 tile sizes per model
    python -m benchmarks.inference --guided   # guided colour with the CLI's default model, 1 MP

``--guided`` times what ``astrogan colorize IN -o OUT [--hints H.csv] [--reference REF]`` does with
the default release colorizer (the guided one) at its default tiling, on a 1024 px grey image: no
hints, 10 hints, a reference, both. Each case is timed in-process (the colorize path, as above) and
as the whole command in a fresh process (Python start, model load and sha256 check, PNG decoding
and encoding included), the median of ``--repeat`` runs, beside ``python -c "import torch"`` timed
the same way (the floor of any command). Writes ``benchmarks/results/guided_inference.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from skimage import data as skdata

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline import inference as inf  # noqa: E402
from pipeline.fsio import write_json_atomic  # noqa: E402
from pipeline.models import _generators  # noqa: E402

SR_ARCHS = ("srresnet", "edsr", "wdsr")


def test_image(size: int, grey: bool) -> np.ndarray:
    im = Image.fromarray(skdata.hubble_deep_field()).resize((size, size), Image.Resampling.BICUBIC)
    return np.asarray(im.convert("L") if grey else im, dtype=np.float32) / 255.0


def colorizer(device: torch.device) -> tuple[inf.Loaded, str]:
    """The colorizer ``astrogan colorize`` uses with no --model (the default release, else the
    project's best), else a random-init ResNet18UNet (same compute)."""
    try:
        lm, chosen = inf.open_model(None, ROOT, "colorize", device)
        return lm, chosen
    except inf.ModelError:
        from pipeline.models.resnet_unet import ResNet18UNet

        model = ResNet18UNet(out_channels=2).to(device).eval()
        return inf.Loaded(model, Path("-"), "colorize", "lab", 1, 16, {}), "resnet18_unet (random init)"


def upscalers(device: torch.device) -> list[tuple[inf.Loaded, str]]:
    """The upscaler ``astrogan upscale`` uses with no --model (the default release), then every trained
    SR checkpoint of the project, else random-init SR architectures of the zoo."""
    found = []
    try:
        found.append(inf.open_model(None, ROOT, "superres", device))
    except inf.ModelError:
        pass
    for ckpt in sorted((ROOT / "models/superres").glob("*/finetuned.pt")):
        found.append((inf.load_model(ckpt, "superres", device), str(ckpt.relative_to(ROOT))))
    if not found:
        zoo = _generators()
        for arch in (a for a in SR_ARCHS if a in zoo):
            model = zoo[arch]().to(device).eval()  # the paper-default widths
            found.append((inf.Loaded(model, Path("-"), "superres", "rgb", 4, 1, {}), f"{arch} (random init)"))
    return found


def timed(fn, image: np.ndarray, lm: inf.Loaded, device: torch.device, tile: int, overlap: int,
          batch: int) -> dict:
    warm = image[:tile, :tile] if image.ndim == 2 else image[:tile, :tile, :]
    fn(lm, warm, tile=tile, overlap=overlap, batch=batch, device=device)
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn(lm, image, tile=tile, overlap=overlap, batch=batch, device=device)
    if device.type == "cuda":
        torch.cuda.synchronize()
    s = time.perf_counter() - t0
    mpx = image.shape[0] * image.shape[1] / 1e6
    return {"image": f"{image.shape[1]}x{image.shape[0]}", "tile": tile, "overlap": overlap, "batch": batch,
            "seconds": round(s, 3), "tiles": inf.tiles_for(lm, image.shape, tile, overlap),
            "mpx_per_s": round(mpx / s, 4), "out_mpx_per_s": round(mpx * lm.scale ** 2 / s, 4)}


def bench_device(device: torch.device, args: argparse.Namespace) -> dict:
    gpu = device.type == "cuda"
    size = args.size
    out: dict = {"device": torch.cuda.get_device_name(device) if gpu else f"CPU ({torch.get_num_threads()} "
                 f"threads, {platform.processor() or platform.machine()})", "output": f"{size}x{size}"}
    batch = 16 if gpu else args.batch
    lm, name = colorizer(device)
    grey = test_image(size, grey=True)
    # The CLI's default overlap is tile/2 for colorize (see README); tile/8 is the seam-only minimum.
    runs = [(128, 64), (256, 128)] if args.quick else [(128, 64), (256, 128), (512, 256), (128, 16)]
    out["colorize"] = {"model": name, "runs": []}
    for t, overlap in runs:
        r = timed(inf.colorize_image, grey, lm, device, t, overlap, batch)
        print(json.dumps({"device": str(device), "colorize": r}), flush=True)
        out["colorize"]["runs"].append(r)
    sr = upscalers(device)
    out["upscale"] = []
    if not sr:
        out["upscale_skipped"] = ("no SR model: no models/superres/*/finetuned.pt and no "
                                  f"{'/'.join(SR_ARCHS)} architecture in pipeline.models yet")
    rgb = test_image(size // 4, grey=False)
    for lm, name in sr:
        runs = []
        for t in ((32, 64) if args.quick else (32, 64, 128)):
            r = timed(inf.upscale_image, rgb, lm, device, t, t // 8, batch)
            print(json.dumps({"device": str(device), "upscale": name, **r}), flush=True)
            runs.append(r)
        out["upscale"].append({"model": name, "runs": runs})
    return out


def bench_guided(args: argparse.Namespace) -> dict:
    """``--guided``: the module docstring's guided colour timings (CPU)."""
    import statistics
    import subprocess
    import tempfile

    from pipeline import hints

    device = torch.device("cpu")
    lm, chosen = inf.open_model(None, ROOT, "colorize", device)
    tile, overlap = inf.default_tiling(lm)
    grey = test_image(1024, grey=True)
    rng = np.random.default_rng(0)
    points = [hints.Hint(int(x), int(y), tuple(int(v) for v in rng.integers(40, 220, 3)), 1)
              for x, y in rng.integers(0, 1024, (10, 2))]
    ref = Image.open(ROOT / "pipeline/sources/vendored/heic1206a.jpg").convert("RGB")  # a colourful reference
    ref_rgb = np.asarray(ref, dtype=np.float32) / 255.0
    palette = hints.reference_palette(ref_rgb)
    cases = {"none": {}, "hints_10": {"points": points}, "reference": {"reference": palette},
             "hints_10_and_reference": {"points": points, "reference": palette}}
    out = {"model": chosen, "image": "1024x1024", "tile": tile, "overlap": overlap, "cases": {}}
    floor = []  # what no code of ours can remove: starting Python and importing torch
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import torch"], check=True)
        floor.append(time.perf_counter() - t0)
    out["python_import_torch_s"] = round(statistics.median(floor), 3)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        Image.fromarray((grey * 255).astype(np.uint8)).save(tmp / "in.png")
        Image.fromarray((ref_rgb * 255).astype(np.uint8)).save(tmp / "ref.png")
        (tmp / "h.csv").write_text("x,y,color\n" + "".join(f"{p.x},{p.y},{hints.hex_colour(p.rgb)}\n"
                                                            for p in points))
        flags = {"none": [], "hints_10": ["--hints", "h.csv"], "reference": ["--reference", "ref.png"],
                 "hints_10_and_reference": ["--hints", "h.csv", "--reference", "ref.png"]}
        for name, kw in cases.items():
            inproc = []
            for _ in range(args.repeat):
                t0 = time.perf_counter()
                inf.colorize_image(lm, grey, tile=tile, overlap=overlap, batch=args.batch, device=device,
                                   **kw)
                inproc.append(time.perf_counter() - t0)
            whole = []
            for _ in range(args.repeat):
                t0 = time.perf_counter()
                subprocess.run([sys.executable, "-m", "pipeline", "colorize", "in.png", "-o", "out.png", "-q",
                                *flags[name]], cwd=tmp, check=True,
                               env={**os.environ, "PYTHONPATH": str(ROOT)})
                whole.append(time.perf_counter() - t0)
            out["cases"][name] = {"colorize_s": round(statistics.median(inproc), 3),
                                  "command_s": round(statistics.median(whole), 3)}
            print(json.dumps({name: out["cases"][name]}), flush=True)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="512 px outputs, CPU only, two tile sizes")
    p.add_argument("--size", type=int, default=None,
                   help="output side in px (default 2048; 512 with --quick); upscale inputs are size/4")
    p.add_argument("--batch", type=int, default=4, help="tiles per forward on CPU (GPU: 16)")
    p.add_argument("--guided", action="store_true", help="guided colour timings only (module docstring)")
    p.add_argument("--repeat", type=int, default=3, help="--guided: runs per case (the median is kept)")
    p.add_argument("--out", default=None, help="default: benchmarks/results/inference.json "
                   "(guided_inference.json with --guided, inference_quick.json with --quick)")
    args = p.parse_args()
    name = "guided_inference" if args.guided else "inference_quick" if args.quick else "inference"
    args.out = args.out or str(ROOT / f"benchmarks/results/{name}.json")
    if args.guided:
        torch.set_grad_enabled(False)
        load_before = [round(x, 2) for x in os.getloadavg()]
        result = bench_guided(args)
        write_json_atomic(args.out, {"torch": torch.__version__, "python": platform.python_version(),
                                     "threads": torch.get_num_threads(), "load_average_before": load_before,
                                     "load_average_after": [round(x, 2) for x in os.getloadavg()], **result})
        print(f"wrote {args.out}")
        return
    args.size = args.size or (512 if args.quick else 2048)
    torch.set_grad_enabled(False)
    load_before = [round(x, 2) for x in os.getloadavg()]  # other jobs on the machine skew CPU timings
    devices = [torch.device("cpu")]
    if torch.cuda.is_available() and not args.quick:
        devices.append(torch.device("cuda"))
    results = [bench_device(d, args) for d in devices]
    write_json_atomic(args.out, {"torch": torch.__version__, "python": platform.python_version(),
                                 "load_average_before": load_before,
                                 "load_average_after": [round(x, 2) for x in os.getloadavg()],
                                 "quick": args.quick, "input": "skimage hubble_deep_field, bicubic resize",
                                 "mpx": "input megapixels per second", "results": results})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
