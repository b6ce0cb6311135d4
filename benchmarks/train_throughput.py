"""Training throughput: images/s and TFLOP/s of the project's own training steps, fed by its real
data path, beside the same step on synthetic on-device data; and FID feature extraction.

For each model of the study (the colorizers at 256 px: ResNet-18 U-Net in Lab and in RGB with a
PatchGAN, the basic U-Net with the residual VGG discriminator, each in the pix2pix ``gan_step``;
the SR generators at paper width, SRResNet, EDSR-baseline and WDSR-B, in the pixel-loss
``l1_step`` on 96 px HR crops, and EDSR in SRGAN's ``gan_step``):
- ``real``: the packed uint8 tiles in a :class:`pipeline.data.Feeder` (whole on the GPU when they
  fit), random crops + flips by one gather, RGB -> Lab (or LR by bicubic) in the step, then the
  step: exactly what ``fit`` runs, with the run's precision / channels_last / compile / fused Adam;
- ``synthetic``: the same step on an (input, target) pair made once, already on the device;
- ``feed_ratio`` = real / synthetic (1.0: feeding costs nothing);
- FLOPs per image counted by ``torch.utils.flop_counter.FlopCounterMode`` on one eager step
  (forward + backward of G and D), so TFLOP/s = FLOPs/image x images/s.
Data: ``--packed DIR`` (a ``pack`` stage output; default ``data/packed`` when present), else
``--images DIR`` (any folder of images, cut to tiles here), else the vendored Hubble images.
The paper-scale epoch time is the train tile count / the real images/s of ``resnet18_lab``.
Writes JSON with the device name and versions to ``benchmarks/results/train_throughput[_quick].json``.

    python -m benchmarks.train_throughput                # GPU: batch 128, 256 px, compiled, bf16
    python -m benchmarks.train_throughput --quick        # CPU, tiny sizes, a few steps (CI runs it)

On a GPU machine without the project's venv: torch, numpy, pillow (and tqdm, pyyaml wheels).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline import colorizer, superres  # noqa: E402
from pipeline.data import Feeder, load_rgb, read_packed  # noqa: E402
from pipeline.fsio import write_json_atomic  # noqa: E402
from pipeline.models import discriminator_class, generator_class, out_channels  # noqa: E402
from pipeline.tileset import tile_positions  # noqa: E402
from pipeline.train import autocast_for, gan_losses, gan_step, l1_step  # noqa: E402

# (name, task, generator, generator kwargs, discriminator, discriminator kwargs, colour space, step)
PAPER = [
    ("resnet18_lab", "colorize", "resnet18_unet", {}, "patchgan", {}, "lab", "gan"),
    ("resnet18_rgb", "colorize", "resnet18_unet", {}, "patchgan", {}, "rgb", "gan"),
    ("unet_rgb", "colorize", "unet", {"num_feat": 64, "depth": 8}, "vgg_residual", {"num_feat": 64}, "rgb",
     "gan"),
    ("srresnet", "superres", "srresnet", {"num_feat": 64, "num_block": 16}, None, None, "rgb", "l1"),
    ("edsr", "superres", "edsr", {"num_feat": 64, "num_block": 16}, None, None, "rgb", "l1"),
    ("wdsr", "superres", "wdsr", {"kind": "B", "num_feat": 32, "num_block": 16}, None, None, "rgb", "l1"),
    ("edsr_gan", "superres", "edsr", {"num_feat": 64, "num_block": 16}, "srgan",
     {"num_feat": 64, "pool": 6, "fc": 1024}, "rgb", "gan"),
]
TINY = {"resnet18_lab": {}, "resnet18_rgb": {}, "unet_rgb": ({"num_feat": 8, "depth": 5}, {"num_feat": 8}),
        "srresnet": {"num_feat": 8, "num_block": 2}, "edsr": {"num_feat": 8, "num_block": 2},
        "wdsr": {"kind": "B", "num_feat": 8, "num_block": 2},
        "edsr_gan": ({"num_feat": 8, "num_block": 2}, {"num_feat": 8, "pool": 2, "fc": 16})}


def tiles_from(args: argparse.Namespace) -> tuple[torch.Tensor, str]:
    """uint8 (N, 3, S, S) training tiles and where they came from."""
    packed = Path(args.packed)
    if (packed / "train.npy").is_file():
        tiles, _ = read_packed(packed, "train")
        return tiles, f"packed {packed}/train.npy"
    folder = Path(args.images) if args.images else ROOT / "pipeline/sources/vendored"
    side, out = args.tile, []
    for path in sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png", ".tif")):
        rgb = load_rgb(path)
        out += [rgb[y:y + side, x:x + side].transpose(2, 0, 1)
                for y, x in tile_positions(rgb.shape[0], rgb.shape[1], side, side)]
        if len(out) >= args.max_tiles:
            break
    return torch.from_numpy(np.stack(out[:args.max_tiles])), f"{len(out[:args.max_tiles])} tiles of {folder}"


def build(entry: tuple, quick: bool, device: torch.device, fmt, compile_: bool):
    name, task, g_arch, g_kw, d_arch, d_kw, space, _ = entry
    tiny = TINY.get(name) if quick else None
    if tiny is not None:
        g_kw, d_kw = tiny if isinstance(tiny, tuple) else (tiny, d_kw)
    if task == "colorize":
        G = generator_class(g_arch)(out_channels=out_channels(space), **g_kw)
        D = discriminator_class(d_arch)(in_channels=1 + out_channels(space), **d_kw) if d_arch else None
    else:
        G = generator_class(g_arch)(scale=4, **g_kw)
        D = discriminator_class(d_arch)(**d_kw) if d_arch else None
    models = [m.to(device, memory_format=fmt).train() if m is not None else None for m in (G, D)]
    eager = list(models)
    if compile_:
        for m in models:
            if m is not None:
                m.compile()
    return eager, models


def make_step(entry: tuple, G, D, device: torch.device, precision: str) -> Callable:
    """The project's step for this entry: gan_step (pix2pix / SRGAN objective) or l1_step."""
    fused = device.type == "cuda"
    opt_g = torch.optim.Adam(G.parameters(), lr=2e-4, betas=(0.5, 0.999), fused=fused)
    autocast = autocast_for(device, precision)
    if entry[7] == "l1":
        return lambda x, y: l1_step(G, opt_g, x, y, autocast)
    opt_d = torch.optim.Adam(D.parameters(), lr=2e-4, betas=(0.5, 0.999), fused=fused)
    crit, conditional = gan_losses("vanilla"), entry[1] == "colorize"
    weights = (100.0, 1.0) if conditional else (1.0, 1e-3)
    return lambda x, y: gan_step(G, D, opt_g, opt_d, x, y, l1_weight=weights[0], criterion=crit,
                                 autocast=autocast, conditional=conditional, adversarial_weight=weights[1])


def pair_fn(entry: tuple) -> Callable:
    if entry[1] == "colorize":
        return lambda rgb: colorizer.make_pair(rgb, entry[6])
    deg = superres.Degradation(scale=4)
    return lambda rgb: superres.make_pair(rgb, deg)


def timed(run_step: Callable, steps: int, device: torch.device) -> float:
    """Seconds per step over ``steps`` steps (after the caller's warm-up), device synchronised."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    t0 = time.perf_counter()
    last = None
    for _ in range(steps):
        last = run_step()
    if last is not None:
        torch.stack(list(last.values())).sum().item()
    sync()
    return (time.perf_counter() - t0) / steps


def flops_per_image(entry: tuple, eager: list, device: torch.device, precision: str, crop: int) -> float:
    """FLOPs of one eager training step (forward + backward of G, and D for GAN steps) per image."""
    G, D = eager
    n = 2
    rgb = torch.rand(n, 3, crop, crop, device=device)
    x, y = pair_fn(entry)(rgb)
    step = make_step(entry, G, D, device, precision)
    with FlopCounterMode(display=False) as counter:
        step(x, y)
    return counter.get_total_flops() / n


def bench_model(entry: tuple, tiles: torch.Tensor, args: argparse.Namespace, device: torch.device) -> dict:
    crop = args.sr_crop if entry[1] == "superres" else args.crop
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    eager, (G, D) = build(entry, args.quick, device, fmt, args.compile)
    flops = flops_per_image(entry, eager, device, args.precision, crop)
    step = make_step(entry, G, D, device, args.precision)
    pair, batch = pair_fn(entry), args.batch
    feeder = Feeder(tiles, device)
    gen = torch.Generator().manual_seed(0)

    def real():
        rgb = feeder.next(batch, crop, gen).float().div_(255.0)
        x, y = pair(rgb)
        return step(x.contiguous(memory_format=fmt), y.contiguous(memory_format=fmt))

    x0, y0 = pair(torch.rand(batch, 3, crop, crop, device=device))
    x0, y0 = x0.contiguous(memory_format=fmt), y0.contiguous(memory_format=fmt)

    def synthetic():
        return step(x0, y0)

    out = {"model": entry[0], "task": entry[1], "step": f"{entry[7]}_step", "crop": crop, "batch": batch,
           "generator": entry[2], "discriminator": entry[4], "feeding": feeder.mode}
    for kind, fn in (("synthetic", synthetic), ("real", real)):
        timed(fn, args.warmup, device)  # compile, cudnn autotune, allocator warm-up
        out[f"{kind}_img_per_s"] = round(batch / timed(fn, args.steps, device), 2)
    out["feed_ratio"] = round(out["real_img_per_s"] / out["synthetic_img_per_s"], 3)
    out["gflop_per_image"] = round(flops / 1e9, 3)
    if not args.quick:
        out["tflops_real"] = round(flops * out["real_img_per_s"] / 1e12, 2)
    print(json.dumps(out), flush=True)
    return out


def bench_fid(args: argparse.Namespace, device: torch.device) -> dict:
    """InceptionV3 pool features at 299 px (what FID runs): pytorch-fid's weights when cached, else
    the same architecture at random init (speed does not depend on the weights)."""
    from pipeline.fid import FIDUnavailable, inception

    try:
        model, weights = inception(2048, device), "pytorch-fid FID Inception weights"
    except FIDUnavailable as e:
        import torchvision

        model = torchvision.models.inception_v3(weights=None, aux_logits=False, init_weights=False)
        model.fc = torch.nn.Identity()
        model, weights = model.to(device).eval(), f"random init ({e})"
    size = 75 if args.quick else 299
    batch = 2 if args.quick else args.fid_batch
    x = torch.rand(batch, 3, size, size, device=device)

    def run():
        with torch.no_grad():
            out = model(x)
        return {"y": (out[0] if isinstance(out, list) else out).float().sum()}

    timed(run, 1 if args.quick else 3, device)
    rate = batch / timed(run, args.steps, device)
    return {"model": "inception_v3 pool (FID features)", "size": size, "batch": batch, "precision": "fp32",
            "weights": weights, "img_per_s": round(rate, 2)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="CPU, tiny models and sizes, few steps (CI)")
    p.add_argument("--packed", default=str(ROOT / "data/packed"), help="a pack stage output folder")
    p.add_argument("--images", default=None, help="else a folder of images to tile here")
    p.add_argument("--tile", type=int, default=256)
    p.add_argument("--max-tiles", type=int, default=4096)
    p.add_argument("--models", nargs="*", default=[e[0] for e in PAPER])
    p.add_argument("--batch", type=int, default=None, help="default: 128 on CUDA, 4 on CPU")
    p.add_argument("--crop", type=int, default=None, help="colorization crop (default 256; quick 32)")
    p.add_argument("--sr-crop", type=int, default=None, help="SR HR crop (default 96; quick 32)")
    p.add_argument("--steps", type=int, default=None, help="timed steps (default 30; quick 2)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 10; quick 1)")
    p.add_argument("--fid-batch", type=int, default=50)
    p.add_argument("--no-compile", action="store_true")
    p.add_argument("--no-fid", action="store_true", help="skip the InceptionV3 feature benchmark")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() and not args.quick else "cpu")
    cuda = device.type == "cuda"
    args.batch = args.batch or (128 if cuda else 4)
    args.crop = args.crop or (32 if args.quick else 256)
    args.sr_crop = args.sr_crop or (32 if args.quick else 96)
    args.steps = args.steps or (2 if args.quick else 30)
    args.warmup = args.warmup or (1 if args.quick else 10)
    args.precision = "bf16" if cuda else "fp32"
    args.channels_last, args.compile = cuda, cuda and not args.no_compile
    if cuda:
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    tiles, source = tiles_from(args)
    out = args.out or str(ROOT / f"benchmarks/results/train_throughput{'_quick' if args.quick else ''}.json")
    report = {
        "device": torch.cuda.get_device_name(device) if cuda else platform.processor() or platform.machine(),
        "cpus": os.cpu_count(), "torch": torch.__version__, "cuda": torch.version.cuda, "python":
        platform.python_version(), "quick": args.quick, "data": source, "train_tiles": len(tiles),
        "precision": args.precision, "channels_last": args.channels_last, "compile": args.compile,
        "fused_adam": cuda, "load_average_before": [round(x, 2) for x in os.getloadavg()],
        "results": [], "errors": [], "fid_features": None, "epoch_resnet18_lab": None}

    def save() -> None:  # after every model: a run cut short (a device lease) keeps what it measured
        report["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
        ref = next((r for r in report["results"] if r["model"] == "resnet18_lab"), None)
        report["epoch_resnet18_lab"] = ({"train_tiles": len(tiles), "seconds": round(
            len(tiles) / ref["real_img_per_s"], 2)} if ref else None)
        write_json_atomic(out, report)

    for entry in (e for e in PAPER if e[0] in args.models):
        try:
            report["results"].append(bench_model(entry, tiles, args, device))
        except Exception as e:  # noqa: BLE001 - one model's failure (compile, memory) must not lose the rest
            if args.quick:
                raise
            report["errors"].append({"model": entry[0], "error": f"{type(e).__name__}: {e}"[:2000]})
            print(f"{entry[0]}: FAILED {type(e).__name__}: {e}", flush=True)
        if cuda:
            torch.cuda.empty_cache()
        save()
    if not args.no_fid:
        report["fid_features"] = bench_fid(args, device)
    save()
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
