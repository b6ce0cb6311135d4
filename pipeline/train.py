"""Training for colorization and super-resolution: pixel-loss pretraining and GAN fine-tuning,
resumable after kill -9.

One flat loop (:func:`fit`) in the style of nanoGPT's ``train.py``; one GAN step (:func:`gan_step`)
with pix2pix's contract, conditional (pix2pix: D sees input and output) or not (SRGAN: D sees only
the HR image). Batches are random crops of in-memory uint8 images (``pipeline.data``), turned into
(input, target) pairs on the device by the run's ``make_pair`` (``pipeline.colorizer.make_pair`` for
the colorizers, ``pipeline.superres.make_pair`` for SR). The generator's objective (pixel loss kind
and weight, adversarial weight, an extra term such as a perceptual loss) is the run's
:class:`Objective`; its defaults are pix2pix's.

Resume: every ``checkpoint_every`` steps the whole training state (models, optimizers, step, crop RNG,
logged rows) goes atomically to ``<paths.resume>/colorize/<name>/<phase>.pt`` together with a hash of
everything the phase reads; a rerun with the same hash continues from it, bit-for-bit on CPU.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from pipeline import colorizer
from pipeline.data import random_crops
from pipeline.fsio import atomic_path, write_csv_atomic, write_json_atomic
from pipeline.models import save_generator
from pipeline.params import resolve_device

PRETRAIN_FIELDS = ["step", "loss_g_l1"]
FINETUNE_FIELDS = ["step", "loss_g_gan", "loss_g_l1", "loss_d", "loss_d_real", "loss_d_fake"]


@dataclass(frozen=True)
class TrainConfig:
    """One training phase's settings (params: top-level ``lr``/``seed``/``device``, ``train``, and the
    phase section ``pretrain`` or ``finetune``)."""

    lr: float                        # Adam lr of G and D (paper: 2e-4)
    betas: tuple[float, float]       # Adam betas (pix2pix: 0.5, 0.999)
    l1_weight: float                 # lambda of the L1 term in the GAN generator loss (pix2pix: 100)
    gan_loss: str                    # vanilla (BCE with logits, pix2pix) | lsgan (MSE)
    precision: str                   # auto (bf16 autocast on CUDA, fp32 on CPU) | fp32 | bf16
    steps: int
    batch_size: int
    crop: int                        # square crop side in px; multiple of the generator's stride (16)
    checkpoint_every: int            # steps between resume checkpoints
    log_every: int                   # steps per logged CSV row (the row holds the mean over them)
    seed: int
    device: str                      # auto | cpu | cuda | cuda:N

    @classmethod
    def from_params(cls, params: dict, phase: str) -> TrainConfig:
        t, p = params["train"], params[phase]
        cfg = cls(lr=float(params["lr"]), betas=(float(t["betas"][0]), float(t["betas"][1])),
                  l1_weight=float(t["l1_weight"]), gan_loss=str(t["gan_loss"]),
                  precision=str(t["precision"]), steps=int(p["steps"]), batch_size=int(p["batch_size"]),
                  crop=int(p["crop"]), checkpoint_every=int(p["checkpoint_every"]),
                  log_every=int(p["log_every"]), seed=int(params["seed"]), device=str(params["device"]))
        for key in ("batch_size", "crop", "checkpoint_every", "log_every"):
            if getattr(cfg, key) < 1:
                raise SystemExit(f"params.yaml: {phase}.{key} must be >= 1, got {getattr(cfg, key)}")
        if cfg.steps < 0:
            raise SystemExit(f"params.yaml: {phase}.steps must be >= 0, got {cfg.steps}")
        if cfg.precision not in ("auto", "fp32", "bf16"):
            raise SystemExit(f"params.yaml: train.precision={cfg.precision!r}; use auto, fp32 or bf16")
        return cfg


def zoo_entry(params: dict, name: str) -> dict:
    """The ``colorize.zoo.<name>`` entry (generator, color_space, discriminator)."""
    zoo = params["colorize"]["zoo"]
    if name not in zoo:
        raise SystemExit(f"colorizer {name!r} is not in params.yaml colorize.zoo; known: {', '.join(zoo)}")
    return zoo[name]


def phase_params(params: dict, name: str, phase: str) -> dict:
    """Exactly the params a phase reads (as dvc.yaml lists them): hashed for resume, kept in the card."""
    keys = ["seed", "device", "lr"] + (["model"] if phase == "pretrain" else []) + ["train", phase]
    out = {k: params[k] for k in keys}
    out[f"colorize.zoo.{name}"] = zoo_entry(params, name)
    return out


def gan_losses(kind: str) -> nn.Module:
    """The adversarial criterion on D's logits: vanilla GAN (BCE with logits, as pix2pix) or LSGAN (MSE)."""
    table = {"vanilla": nn.BCEWithLogitsLoss, "lsgan": nn.MSELoss}
    if kind not in table:
        raise SystemExit(f"params.yaml: train.gan_loss={kind!r}; use one of {', '.join(table)}")
    return table[kind]()


def autocast_for(device: torch.device, precision: str) -> Callable[[], contextlib.AbstractContextManager]:
    """A factory of the one autocast context used for forward passes (bf16, or a no-op for fp32)."""
    use = precision == "bf16" or (precision == "auto" and device.type == "cuda")
    return lambda: torch.autocast(device.type, dtype=torch.bfloat16, enabled=use)


def make_adam(model: nn.Module, cfg: TrainConfig, device: torch.device) -> torch.optim.Adam:
    """Adam(lr, betas); the fused kernel on CUDA (one launch for all parameters)."""
    return torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=cfg.betas, fused=device.type == "cuda")


PIXEL_LOSSES = {"l1": F.l1_loss, "mse": F.mse_loss}
ExtraLoss = tuple[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]]  # (log key, (fake, y) -> term)


def pixel_loss_fn(kind: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The pixel loss by name: ``l1`` (mean |a - b|) or ``mse`` (mean (a - b)^2)."""
    if kind not in PIXEL_LOSSES:
        raise SystemExit(f"params.yaml: pixel loss {kind!r}; use one of {', '.join(PIXEL_LOSSES)}")
    return PIXEL_LOSSES[kind]


@dataclass(frozen=True)
class Objective:
    """What the generator minimises. Defaults are pix2pix's (colorization): conditional D,
    gan + l1_weight * L1 with ``pixel_weight=None`` meaning ``TrainConfig.l1_weight``.
    SRGAN: unconditional D, pixel_weight 1 (L1 or MSE), adversarial_weight 1e-3, a VGG term."""

    conditional: bool = True                 # D sees cat(x, y) (pix2pix) or y alone (SRGAN)
    pixel_loss: str = "l1"                   # l1 | mse; logged as loss_g_<pixel_loss>
    pixel_weight: float | None = None        # None: TrainConfig.l1_weight
    adversarial_weight: float = 1.0
    extra: ExtraLoss | None = None           # an extra generator term, already weighted (GAN phase only)

    def fields(self, gan: bool) -> list[str]:
        """The CSV columns of a phase: step, then the keys the step functions return."""
        pix = f"loss_g_{self.pixel_loss}"
        if not gan:
            return ["step", pix]
        return ["step", "loss_g_gan", pix, *([self.extra[0]] if self.extra else []), "loss_d", "loss_d_real",
                "loss_d_fake"]


def l1_step(G: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
            autocast: Callable[[], contextlib.AbstractContextManager], pixel_loss: str = "l1"
            ) -> dict[str, float]:
    """One pixel-regression step (pretraining): returns {"loss_g_<pixel_loss>": mean loss(G(x), y)}
    (``pixel_loss`` "l1", the default, or "mse")."""
    loss_fn = pixel_loss_fn(pixel_loss)
    opt.zero_grad(set_to_none=True)
    with autocast():
        fake = G(x)
    loss = loss_fn(fake.float(), y.float())
    loss.backward()
    opt.step()
    return {f"loss_g_{pixel_loss}": loss.item()}


def gan_step(G: nn.Module, D: nn.Module, opt_g: torch.optim.Optimizer, opt_d: torch.optim.Optimizer,
             x: torch.Tensor, y: torch.Tensor, *, l1_weight: float, criterion: nn.Module,
             autocast: Callable[[], contextlib.AbstractContextManager], conditional: bool = True,
             adversarial_weight: float = 1.0, pixel_loss: str = "l1", extra: ExtraLoss | None = None
             ) -> dict[str, float]:
    """One GAN step. x: (N, Cx, h, w) input; y: (N, C, H, W) target.

    Conditional (pix2pix): D learns real cat(x, y) vs fake cat(x, G(x).detach()), so x and y share
    H, W. Unconditional (SRGAN, ``conditional=False``): D sees y vs G(x).detach() alone. D's loss is
    (real + fake) / 2; then, with D frozen, G minimises adversarial_weight * gan(D(fake), real) +
    l1_weight * pixel(G(x), y) [+ the ``extra`` term, weighted by its maker]. Returns floats:
    loss_d, loss_d_real, loss_d_fake, loss_g_gan, loss_g_<pixel_loss> (both un-weighted) and the
    extra term's key (weighted) when given.
    """
    loss_fn = pixel_loss_fn(pixel_loss)
    d_in = (lambda out: torch.cat([x, out], 1)) if conditional else (lambda out: out)
    with autocast():
        fake = G(x)
    D.requires_grad_(True)
    opt_d.zero_grad(set_to_none=True)
    with autocast():
        logits_real = D(d_in(y)).float()
        logits_fake = D(d_in(fake.detach())).float()  # detached: this loss must not reach G
    loss_d_real = criterion(logits_real, torch.ones_like(logits_real))
    loss_d_fake = criterion(logits_fake, torch.zeros_like(logits_fake))
    loss_d = (loss_d_real + loss_d_fake) / 2
    loss_d.backward()
    opt_d.step()

    D.requires_grad_(False)  # G's loss flows through D; D's weights must neither change nor gather grads
    opt_g.zero_grad(set_to_none=True)
    with autocast():
        logits = D(d_in(fake)).float()
    loss_g_gan = criterion(logits, torch.ones_like(logits))
    loss_g_pix = loss_fn(fake.float(), y.float())
    total = adversarial_weight * loss_g_gan + l1_weight * loss_g_pix
    terms = [loss_d, loss_d_real, loss_d_fake, loss_g_gan, loss_g_pix]
    keys = ["loss_d", "loss_d_real", "loss_d_fake", "loss_g_gan", f"loss_g_{pixel_loss}"]
    if extra is not None:
        term = extra[1](fake.float(), y.float())
        total = total + term
        terms.append(term)
        keys.append(extra[0])
    total.backward()
    opt_g.step()
    D.requires_grad_(True)
    vals = torch.stack(terms).detach().tolist()  # 1 sync
    return dict(zip(keys, vals, strict=True))


def images_sha256(images: torch.Tensor | Sequence[torch.Tensor]) -> str:
    """Hash of the pixels (and shapes) the model trains on: resume is refused if the data changed."""
    h = hashlib.sha256()
    for img in images:
        h.update(str(tuple(img.shape)).encode())
        h.update(img.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} ({os.cpu_count()} CPUs)"
    return platform.processor() or platform.machine()


def utc_now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def load_resume(path: Path, run_hash: str) -> dict[str, Any] | None:
    """The resume state at ``path`` if it exists and was made with the same ``run_hash``, else None."""
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        print(f"{path}: unreadable resume checkpoint ({type(e).__name__}); starting fresh")
        return None
    if state.get("hash") != run_hash:
        print(f"{path}: params or data changed since it was written (hash {state.get('hash')} != "
              f"{run_hash}); starting fresh")
        return None
    return state


def save_resume(path: Path, state: dict[str, Any]) -> None:
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


@dataclass
class Run:
    """What :func:`fit` trains and where it keeps its state. ``D`` is None for pixel-loss pretraining.

    ``make_pair(rgb, gen)`` turns a crop batch (RGB in [0, 1]) into (input, target) on the device;
    ``gen`` is the run's CPU generator (saved with the resume state), for random degradations.
    None: the colorizer pair of ``color_space``."""

    name: str
    phase: str                              # pretrain | finetune
    G: nn.Module
    D: nn.Module | None
    color_space: str
    images: torch.Tensor | list[torch.Tensor]
    run_hash: str                           # params_hash of phase params + data; guards the resume
    resume_path: Path
    csv_path: Path
    meta: dict = field(default_factory=dict)  # facts of the first start (e.g. encoder weights) kept on resume
    make_pair: Callable[[torch.Tensor, torch.Generator], tuple[torch.Tensor, torch.Tensor]] | None = None
    objective: Objective = Objective()


def _restore(state: dict, G, D, opt_g, opt_d, gen: torch.Generator) -> None:
    G.load_state_dict(state["G"])
    opt_g.load_state_dict(state["opt_g"])
    if D is not None:
        D.load_state_dict(state["D"])
        opt_d.load_state_dict(state["opt_d"])
    gen.set_state(state["gen"])


def _to_device(run: Run, device: torch.device):
    """Models (NHWC on CUDA, the fast conv layout for bf16 tensor cores) and images on the device."""
    fmt = torch.channels_last if device.type == "cuda" else torch.contiguous_format
    G = run.G.to(device, memory_format=fmt).train()
    D = run.D.to(device, memory_format=fmt).train() if run.D is not None else None
    images = ([im.to(device) for im in run.images] if isinstance(run.images, list)
              else run.images.to(device))
    return G, D, images, fmt


def fit(run: Run, cfg: TrainConfig) -> dict[str, Any]:
    """Train ``run.G`` (and ``run.D``) for ``cfg.steps`` steps, continuing from ``run.resume_path`` when
    its hash matches. Returns {"rows", "elapsed_s", "started", "device", "meta"}; models stay on device."""
    device = resolve_device(cfg.device)
    G, D, images, fmt = _to_device(run, device)
    opt_g = make_adam(G, cfg, device)
    opt_d = make_adam(D, cfg, device) if D is not None else None
    criterion, autocast = gan_losses(cfg.gan_loss), autocast_for(device, cfg.precision)
    gen = torch.Generator().manual_seed(cfg.seed)  # a CPU generator: the same crops on any device
    start, rows, acc, elapsed, started, meta = 0, [], {}, 0.0, utc_now(), run.meta
    state = load_resume(run.resume_path, run.run_hash)
    if state is not None:
        _restore(state, G, D, opt_g, opt_d, gen)
        start, rows, acc, elapsed, started, meta = (state[k] for k in
                                                    ("step", "rows", "acc", "elapsed_s", "started", "meta"))
        print(f"resuming {run.name} {run.phase} from step {start}")
    obj = run.objective
    fields = obj.fields(gan=D is not None)
    pair = run.make_pair or (lambda rgb, _gen: colorizer.make_pair(rgb, run.color_space))
    pixel_weight = cfg.l1_weight if obj.pixel_weight is None else obj.pixel_weight
    write_csv_atomic(run.csv_path, rows, fields)  # at once replaces a stale log of an earlier run
    t0 = time.perf_counter() - elapsed
    pbar = tqdm(total=cfg.steps, initial=start, desc=f"{run.phase} {run.name}")
    for step in range(start + 1, cfg.steps + 1):
        rgb = random_crops(images, cfg.batch_size, cfg.crop, gen)
        x, y = (t.contiguous(memory_format=fmt) for t in pair(rgb, gen))
        if D is None:
            losses = l1_step(G, opt_g, x, y, autocast, obj.pixel_loss)
        else:
            losses = gan_step(G, D, opt_g, opt_d, x, y, l1_weight=pixel_weight, criterion=criterion,
                              autocast=autocast, conditional=obj.conditional,
                              adversarial_weight=obj.adversarial_weight, pixel_loss=obj.pixel_loss,
                              extra=obj.extra)
        acc = {k: acc.get(k, 0.0) + v for k, v in losses.items()} | {"n": acc.get("n", 0) + 1}
        if step % cfg.log_every == 0 or step == cfg.steps:  # a row holds the mean since the last row
            rows.append({"step": step, **{k: float(f"{acc[k] / acc['n']:.6g}") for k in fields[1:]}})
            acc = {}
            write_csv_atomic(run.csv_path, rows, fields)
            pbar.set_postfix({k: v for k, v in rows[-1].items() if k != "step"})
        if step % cfg.checkpoint_every == 0 and step < cfg.steps:
            save_resume(run.resume_path, {
                "hash": run.run_hash, "step": step, "G": G.state_dict(), "opt_g": opt_g.state_dict(),
                "D": D.state_dict() if D is not None else {},
                "opt_d": opt_d.state_dict() if D is not None else {}, "gen": gen.get_state(),
                "rows": rows, "acc": acc, "elapsed_s": time.perf_counter() - t0, "started": started,
                "meta": meta})
        pbar.update(1)
    pbar.close()
    return {"rows": rows, "elapsed_s": round(time.perf_counter() - t0, 3), "started": started,
            "device": device_name(device), "meta": meta}


def finish(run: Run, cfg: TrainConfig, result: dict, *, out_path: Path, arch: str, arch_kwargs: dict,
           card: dict) -> dict:
    """Write the generator checkpoint and its card (``<out>.card.json``, also inside the checkpoint),
    then drop the resume file. ``card`` holds the phase-specific facts; the common ones are added."""
    card = {"name": run.name, "phase": run.phase, "arch": arch, "arch_kwargs": arch_kwargs,
            "color_space": run.color_space, **card, "seed": cfg.seed, "steps": cfg.steps,
            "batch_size": cfg.batch_size, "crop": cfg.crop, "precision": cfg.precision,
            "wall_time_s": result["elapsed_s"],
            "seconds_per_step": round(result["elapsed_s"] / cfg.steps, 4) if cfg.steps else None,
            "device": result["device"], "torch": str(torch.__version__), "started": result["started"],
            "finished": utc_now(),
            "final_losses": {k: v for k, v in (result["rows"] or [{}])[-1].items() if k != "step"}}
    save_generator(out_path, run.G, arch=arch, arch_kwargs=arch_kwargs, color_space=run.color_space,
                   step=cfg.steps, card=card)
    write_json_atomic(out_path.with_suffix(".card.json"), card)
    run.resume_path.unlink(missing_ok=True)
    return card
