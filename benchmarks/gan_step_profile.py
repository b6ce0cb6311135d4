"""Where the pix2pix step's time goes: the ResNet-18 U-Net + PatchGAN ``gan_step`` at 256 px, split
into its parts and its variants, on synthetic on-device data (the feed is measured elsewhere:
``benchmarks.train_throughput`` gives feed ratios of 0.97 on an H200).

Variants (each timed after its own warm-up, device synchronised):
- ``gan_eager`` / ``gan_compiled``: the project's ``gan_step``, eager or with G and D compiled;
- ``g_only_compiled``: G's forward + L1 backward + Adam (``l1_step``), i.e. the generator's share;
- ``d_only_compiled``: D on real and fake pairs, forward + backward + Adam, i.e. D's own step;
- ``gan_compiled_b256``: batch 256 (a recompile);
and the compiled step's top CUDA kernels (torch.profiler), dynamo's recompile and graph-break
counts, and its peak memory. Writes JSON (``--out``) after every variant.

    python -m benchmarks.gan_step_profile                 # CUDA
    python -m benchmarks.gan_step_profile --quick         # CPU, 32 px, batch 2 (a smoke run)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.train_throughput import PAPER, build, make_step, pair_fn, timed  # noqa: E402
from pipeline.fsio import write_json_atomic  # noqa: E402
from pipeline.train import autocast_for, gan_losses  # noqa: E402


def d_only(D, x, y, fake, device, autocast):
    opt = torch.optim.Adam(D.parameters(), lr=2e-4, betas=(0.5, 0.999), fused=device.type == "cuda")
    crit = gan_losses("vanilla")
    real_in, fake_in = torch.cat([x, y], 1), torch.cat([x, fake], 1)

    def step():
        opt.zero_grad(set_to_none=True)
        with autocast():
            lr_, lf = D(real_in).float(), D(fake_in).float()
        loss = (crit(lr_, torch.ones_like(lr_)) + crit(lf, torch.zeros_like(lf))) / 2
        loss.backward()
        opt.step()
        return {"loss": loss.detach()}
    return step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/gan_step_profile.json"))
    ap.add_argument("--steps", type=int, default=15)
    ap.add_argument("--warmup", type=int, default=5)
    args = ap.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() and not args.quick else "cpu")
    cuda = device.type == "cuda"
    crop, batch = (32, 2) if args.quick else (256, 128)
    steps, warmup = (2, 1) if args.quick else (args.steps, args.warmup)
    if cuda:
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    precision = "bf16" if cuda else "fp32"
    autocast = autocast_for(device, precision)
    fmt = torch.channels_last if cuda else torch.contiguous_format
    entry = next(e for e in PAPER if e[0] == "resnet18_lab")
    report = {"device": torch.cuda.get_device_name(device) if cuda else "cpu", "torch": torch.__version__,
              "crop": crop, "precision": precision, "channels_last": cuda, "variants": [], "errors": []}

    def save():
        write_json_atomic(args.out, report)

    def pair(n):
        x, y = pair_fn(entry)(torch.rand(n, 3, crop, crop, device=device))
        return x.contiguous(memory_format=fmt), y.contiguous(memory_format=fmt)

    def record(name, fn, n):
        try:
            t0 = time.perf_counter()
            timed(fn, warmup, device)
            first = time.perf_counter() - t0
            rate = n / timed(fn, steps, device)
            row = {"variant": name, "batch": n, "img_per_s": round(rate, 1), "warmup_s": round(first, 1)}
        except Exception as e:  # noqa: BLE001 - keep the other variants
            report["errors"].append({"variant": name, "error": f"{type(e).__name__}: {e}"[:1500]})
            print(f"{name}: FAILED {type(e).__name__}: {e}", flush=True)
            return
        report["variants"].append(row)
        print(json.dumps(row), flush=True)
        save()

    x, y = pair(batch)
    _, (G, D) = build(entry, args.quick, device, fmt, False)
    eager = make_step(entry, G, D, device, precision)
    record("gan_eager", lambda: eager(x, y), batch)
    _, (G, D) = build(entry, args.quick, device, fmt, True)
    step = make_step(entry, G, D, device, precision)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    record("gan_compiled", lambda: step(x, y), batch)
    if cuda:
        report["peak_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        counters = torch._dynamo.utils.counters
        report["dynamo"] = {k: {str(a): b for a, b in counters[k].items()}
                            for k in ("stats", "graph_break", "recompiles") if k in counters}
    from torch.profiler import ProfilerActivity, profile
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=acts) as prof:
        timed(lambda: step(x, y), 3, device)
    key = "self_cuda_time_total" if cuda else "self_cpu_time_total"
    table = prof.key_averages().table(sort_by=key, row_limit=30, max_name_column_width=80)
    report["profile_top"] = table.splitlines()
    print(table, flush=True)
    save()
    # the parts, compiled: G's share (l1_step) and D's own step
    g_step = make_step((*entry[:7], "l1"), G, None, device, precision)
    record("g_only_compiled", lambda: g_step(x, y), batch)
    with torch.no_grad(), autocast():
        fake = G(x).float().contiguous(memory_format=fmt)
    record("d_only_compiled", d_only(D, x, y, fake, device, autocast), batch)
    x2, y2 = pair(2 * batch)
    record("gan_compiled_b256", lambda: step(x2, y2), 2 * batch)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
