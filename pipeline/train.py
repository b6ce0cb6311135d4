"""Training for colorization and super-resolution: pixel-loss pretraining and GAN fine-tuning,
on one device or many (torchrun + DDP), resumable after kill -9.

One flat loop (:func:`fit`) in the style of nanoGPT's ``train.py``; one GAN step (:func:`gan_step`)
with pix2pix's contract, conditional (pix2pix: D sees input and output) or not (SRGAN: D sees only
the HR image). Batches are random crops of uint8 images that a :class:`pipeline.data.Feeder` keeps
on the training device (or streams there), turned into (input, target) pairs on the device by the
run's ``make_pair`` (``pipeline.colorizer.make_pair`` for the colorizers, ``pipeline.superres.make_pair``
for SR). The generator's objective (pixel loss kind and weight, adversarial weight, an extra term
such as a perceptual loss) is the run's :class:`Objective`; its defaults are pix2pix's.

Speed knobs (params ``train.*``, every model): ``precision`` (auto: bf16 autocast on CUDA),
``channels_last``, ``compile`` (torch.compile of G and D; auto: on CUDA), ``batch_size`` (> 0
overrides every phase's), fused Adam on CUDA, losses kept on the device between log rows.
``nproc`` > 1: DDP under torchrun (``pipeline.distributed``); rank 0 writes every file.

Resume: every ``checkpoint_every`` steps the whole training state (models, optimizers, step, RNGs,
logged rows) goes atomically to ``<paths.resume>/<task>/<name>/<phase>.pt`` together with a hash of
everything the phase reads; a rerun with the same hash continues from it, bit-for-bit on CPU.
"""

from __future__ import annotations

import contextlib
import math
import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from pipeline import distributed
from pipeline.data import Feeder, images_sha256  # noqa: F401 (re-exported)
from pipeline.errors import AstroganError
from pipeline.fsio import save_torch_atomic, write_csv_atomic, write_json_atomic
from pipeline.models import save_generator
from pipeline.params import resolve_device, stage_params

PRETRAIN_FIELDS = ["step", "loss_g_l1"]
FINETUNE_FIELDS = ["step", "loss_g_gan", "loss_g_l1", "loss_d", "loss_d_real", "loss_d_fake"]
VAL_FIELDS = ["step", "val_l1"]


@dataclass(frozen=True)
class TrainConfig:
    """One training phase's settings (params: top-level ``lr``/``seed``/``device``, ``train``, and the
    phase section ``pretrain`` or ``finetune``)."""

    lr: float                        # Adam lr of G and D (paper: 2e-4)
    betas: tuple[float, float]       # Adam betas (pix2pix: 0.5, 0.999)
    l1_weight: float                 # lambda of the L1 term in the GAN generator loss (pix2pix: 100)
    gan_loss: str                    # vanilla (BCE with logits, pix2pix) | lsgan (MSE) | wgan-gp
    precision: str                   # auto (bf16 autocast on CUDA, fp32 on CPU) | fp32 | bf16
    steps: int
    batch_size: int
    crop: int                        # square crop side in px; multiple of the generator's stride (16)
    checkpoint_every: int            # steps between resume checkpoints
    log_every: int                   # steps per logged CSV row (the row holds the mean over them)
    seed: int
    device: str                      # auto | cpu | cuda | cuda:N
    gp_weight: float = 10.0          # WGAN-GP's gradient penalty weight lambda (Gulrajani et al.: 10)
    eval_every: int = 0              # steps between validation L1 evaluations (0 = no validation)
    patience: int = 0                # evaluations without a better val L1 before stopping (0 = never)
    epochs: int = 0                  # > 0: steps = epochs * ceil(train images / batch_size) (with_epochs)
    channels_last: str = "auto"      # auto (on CUDA) | on | off: NHWC models and batches
    compile: str = "auto"            # auto (on CUDA) | on | off: torch.compile G and D
    sync_batchnorm: str = "auto"     # auto (with > 1 CUDA process) | on | off
    data_on_device: str = "auto"     # auto (whole set on the GPU when it fits) | on | off (stream it)
    nproc: int = 1                   # processes (GPUs) per node; > 1 runs the stage under torchrun
    time_limit_s: float = 0.0        # > 0: stop at the first log row past this many seconds of training

    @classmethod
    def from_params(cls, params: dict, phase: str, entry: dict | None = None) -> TrainConfig:
        """From params; a zoo ``entry`` may override the phase section (``entry[phase]``: steps, crop,
        batch_size, ...) and ``train.gan_loss`` (``entry["gan_loss"]``)."""
        t, p = params["train"], {**params[phase], **((entry or {}).get(phase) or {})}
        batch = int(t.get("batch_size") or 0) or int(p["batch_size"])  # train.batch_size > 0 wins
        cfg = cls(lr=float(params["lr"]), betas=(float(t["betas"][0]), float(t["betas"][1])),
                  l1_weight=float(t["l1_weight"]), gan_loss=str((entry or {}).get("gan_loss", t["gan_loss"])),
                  precision=str(t["precision"]), steps=int(p["steps"]), batch_size=batch,
                  crop=int(p["crop"]), checkpoint_every=int(p["checkpoint_every"]),
                  log_every=int(p["log_every"]), seed=int(params["seed"]), device=str(params["device"]),
                  gp_weight=float(t.get("gp_weight", 10.0)), eval_every=int(p.get("eval_every", 0)),
                  patience=int(p.get("patience", 0)), epochs=int(p.get("epochs", 0)),
                  channels_last=_switch(t, "channels_last"), compile=_switch(t, "compile"),
                  sync_batchnorm=_switch(t, "sync_batchnorm"), data_on_device=_switch(t, "data_on_device"),
                  nproc=int(t.get("nproc", 1)), time_limit_s=float(p.get("time_limit_s", 0) or 0))
        if cfg.nproc < 1:
            raise AstroganError(f"params.yaml: train.nproc must be >= 1, got {cfg.nproc}")
        for key in ("batch_size", "crop", "checkpoint_every", "log_every"):
            if getattr(cfg, key) < 1:
                raise AstroganError(f"params.yaml: {phase}.{key} must be >= 1, got {getattr(cfg, key)}")
        for key in ("steps", "eval_every", "patience", "epochs", "time_limit_s"):
            if getattr(cfg, key) < 0:
                raise AstroganError(f"params.yaml: {phase}.{key} must be >= 0, got {getattr(cfg, key)}")
        if cfg.precision not in ("auto", "fp32", "bf16"):
            raise AstroganError(f"params.yaml: train.precision={cfg.precision!r}; use auto, fp32 or bf16")
        return cfg

    def with_epochs(self, n_images: int) -> TrainConfig:
        """``epochs > 0``: the same config with steps = epochs * ceil(n_images / batch_size)."""
        if self.epochs <= 0:
            return self
        return replace(self, steps=self.epochs * math.ceil(n_images / self.batch_size))


def _switch(section: dict, key: str) -> str:
    """A train.* switch as auto | on | off (YAML true/false read as on/off)."""
    value = section.get(key, "auto")
    value = {True: "on", False: "off"}.get(value, value)
    if value not in ("auto", "on", "off"):
        raise AstroganError(f"params.yaml: train.{key}={value!r}; use auto, true or false")
    return value


def resolved(switch: str, device: torch.device) -> bool:
    """An auto | on | off switch on ``device``: auto means on for CUDA."""
    return switch == "on" or (switch == "auto" and device.type == "cuda")


def zoo_entry(params: dict, name: str) -> dict:
    """The ``colorize.zoo.<name>`` entry (generator, color_space, discriminator)."""
    zoo = params["colorize"]["zoo"]
    if name not in zoo:
        raise AstroganError(f"colorizer {name!r} is not in params.yaml colorize.zoo; known: {', '.join(zoo)}")
    return zoo[name]


def phase_params(params: dict, name: str, phase: str) -> dict:
    """Exactly the params a phase reads: dvc.yaml's list for the stage (``params.stage_params``), hashed
    for resume and kept in the card."""
    zoo_entry(params, name)  # an unknown model name: one line first
    return stage_params(phase, params, name)


class WassersteinGP(nn.Module):
    """WGAN-GP's criterion (Gulrajani et al. 2017, "Improved Training of Wasserstein GANs") in the
    (logits, target) form of the other criteria: -mean(D) for a "real" target (ones), +mean(D) for
    "fake" (zeros). So the critic's loss_d_real + loss_d_fake = mean(D(fake)) - mean(D(real)), and the
    generator's adversarial term is -mean(D(fake)). :func:`gan_step` adds
    ``gp_weight`` * :func:`gradient_penalty` to the critic's loss (and does not halve it).
    A critic must not use BatchNorm (the penalty is per sample): PatchGAN / vgg_residual with
    ``norm: instance`` or ``none``."""

    def __init__(self, gp_weight: float = 10.0):
        super().__init__()
        self.gp_weight = gp_weight

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return -logits.mean() if bool(target.flatten()[0] > 0.5) else logits.mean()


def gan_losses(kind: str, gp_weight: float = 10.0) -> nn.Module:
    """The adversarial criterion on D's logits: vanilla GAN (BCE with logits, as pix2pix), LSGAN (MSE),
    or WGAN-GP (:class:`WassersteinGP` with penalty weight ``gp_weight``)."""
    table = {"vanilla": nn.BCEWithLogitsLoss, "lsgan": nn.MSELoss,
             "wgan-gp": lambda: WassersteinGP(gp_weight)}
    if kind not in table:
        raise AstroganError(f"params.yaml: train.gan_loss={kind!r}; use one of {', '.join(table)}")
    return table[kind]()


def gradient_penalty(D: nn.Module, real: torch.Tensor, fake: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """WGAN-GP's penalty mean((||grad_z D(z)||_2 - 1)^2) at z = eps * real + (1 - eps) * fake.

    real, fake: D's inputs (N, C, H, W) (conditional: cat(x, y) and cat(x, G(x)), so the x channels
    interpolate to x itself); eps: (N, 1, 1, 1) in [0, 1]. The norm is over each sample's whole
    input; the result keeps its graph (create_graph) so it trains D."""
    z = (eps * real.detach() + (1 - eps) * fake.detach()).requires_grad_(True)
    out = D(z).float()
    (grad,) = torch.autograd.grad(out.sum(), z, create_graph=True)
    return ((grad.flatten(1).norm(2, dim=1) - 1) ** 2).mean()


def autocast_for(device: torch.device, precision: str) -> Callable[[], contextlib.AbstractContextManager]:
    """A factory of the one autocast context used for forward passes (bf16, or a no-op for fp32)."""
    use = precision == "bf16" or (precision == "auto" and device.type == "cuda")
    return lambda: torch.autocast(device.type, dtype=torch.bfloat16, enabled=use)


def make_adam(model: nn.Module, cfg: TrainConfig, device: torch.device) -> torch.optim.Adam:
    """Adam(lr, betas); the fused kernel on CUDA (one launch for all parameters)."""
    return torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=cfg.betas, fused=device.type == "cuda")


PIXEL_LOSSES = {"l1": F.l1_loss, "mse": F.mse_loss}
# (log key, (fake, y, x) -> weighted term)
ExtraLoss = tuple[str, Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]]


def pixel_loss_fn(kind: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The pixel loss by name: ``l1`` (mean |a - b|) or ``mse`` (mean (a - b)^2)."""
    if kind not in PIXEL_LOSSES:
        raise AstroganError(f"params.yaml: pixel loss {kind!r}; use one of {', '.join(PIXEL_LOSSES)}")
    return PIXEL_LOSSES[kind]


@dataclass(frozen=True)
class Objective:
    """What the generator minimises. Defaults are pix2pix's (colorization): conditional D,
    gan + l1_weight * L1 with ``pixel_weight=None`` meaning ``TrainConfig.l1_weight``.
    SRGAN: unconditional D, pixel_weight 1 (L1 or MSE), adversarial_weight 1e-3, a VGG term.
    ``extras``: further generator terms, each (log key, (fake, y, x) -> weighted term), in both
    phases (e.g. the a*b classification loss, a colourfulness term, the VGG loss)."""

    conditional: bool = True                 # D sees cat(x, y) (pix2pix) or y alone (SRGAN)
    pixel_loss: str = "l1"                   # l1 | mse; logged as loss_g_<pixel_loss>
    pixel_weight: float | None = None        # None: TrainConfig.l1_weight
    adversarial_weight: float = 1.0
    extras: tuple[ExtraLoss, ...] = ()       # extra generator terms, already weighted

    def fields(self, gan: bool) -> list[str]:
        """The CSV columns of a phase: step, then the keys the step functions return."""
        pix, more = f"loss_g_{self.pixel_loss}", [key for key, _ in self.extras]
        if not gan:
            return ["step", pix, *more]
        return ["step", "loss_g_gan", pix, *more, "loss_d", "loss_d_real", "loss_d_fake"]


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel wrapper (``model`` itself otherwise)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def l1_step(G: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
            autocast: Callable[[], contextlib.AbstractContextManager], pixel_loss: str = "l1",
            pixel_weight: float = 1.0, extras: tuple[ExtraLoss, ...] = ()) -> dict[str, torch.Tensor]:
    """One pretraining step: minimise pixel_weight * loss(G(x), y) (``pixel_loss`` "l1", the default,
    or "mse") + the ``extras`` terms. Returns {"loss_g_<pixel_loss>": un-weighted pixel loss, extra keys:
    weighted terms} as detached 0-dim tensors (no device sync)."""
    loss_fn = pixel_loss_fn(pixel_loss)
    opt.zero_grad(set_to_none=True)
    with autocast():
        fake = G(x)
    loss = loss_fn(fake.float(), y.float())
    terms = [term(fake.float(), y.float(), x) for _, term in extras]
    (pixel_weight * loss + sum(terms)).backward()
    opt.step()
    return {f"loss_g_{pixel_loss}": loss.detach(), **{k: t.detach() for (k, _), t in zip(extras, terms,
                                                                                            strict=True)}}


def gan_step(G: nn.Module, D: nn.Module, opt_g: torch.optim.Optimizer, opt_d: torch.optim.Optimizer,
             x: torch.Tensor, y: torch.Tensor, *, l1_weight: float, criterion: nn.Module,
             autocast: Callable[[], contextlib.AbstractContextManager], conditional: bool = True,
             adversarial_weight: float = 1.0, pixel_loss: str = "l1", extras: tuple[ExtraLoss, ...] = (),
             generator: torch.Generator | None = None, rows: tuple[int, slice] | None = None
             ) -> dict[str, torch.Tensor]:
    """One GAN step. x: (N, Cx, h, w) input; y: (N, C, H, W) target.

    Conditional (pix2pix): D learns real cat(x, y) vs fake cat(x, G(x).detach()), so x and y share
    H, W. Unconditional (SRGAN, ``conditional=False``): D sees y vs G(x).detach() alone. D's loss is
    (real + fake) / 2; then, with D frozen, G minimises adversarial_weight * gan(D(fake), real) +
    l1_weight * pixel(G(x), y) [+ the ``extras`` terms, weighted by their maker]. Returns
    loss_d, loss_d_real, loss_d_fake, loss_g_gan, loss_g_<pixel_loss> (both un-weighted) and the
    extra terms' keys (weighted), as detached 0-dim tensors (no device sync).

    Under DDP (``D`` a DistributedDataParallel), D's own step goes through the wrapper (its gradients
    are averaged over ranks) and G's adversarial term through ``D.module`` (D is frozen there: no
    gradient to reduce). ``rows`` = (global batch, this rank's slice) makes random draws for the
    global batch and keep this rank's rows, so N ranks draw what one process would.

    WGAN-GP (``criterion`` a :class:`WassersteinGP`): D's loss is real + fake (not halved) +
    gp_weight * :func:`gradient_penalty`, its interpolation weights drawn from ``generator`` (a CPU
    generator, saved with the resume state), else from the global RNG.
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
    if isinstance(criterion, WassersteinGP):
        n, mine = rows or (len(x), slice(None))
        eps = torch.rand(n, 1, 1, 1, generator=generator)[mine].to(x.device)
        with autocast():
            gp = gradient_penalty(unwrap(D), d_in(y), d_in(fake.detach()), eps)
        loss_d = loss_d_real + loss_d_fake + criterion.gp_weight * gp.float()
    else:
        loss_d = (loss_d_real + loss_d_fake) / 2
    loss_d.backward()
    opt_d.step()

    D.requires_grad_(False)  # G's loss flows through D; D's weights must neither change nor gather grads
    opt_g.zero_grad(set_to_none=True)
    with autocast():
        logits = unwrap(D)(d_in(fake)).float()
    loss_g_gan = criterion(logits, torch.ones_like(logits))
    loss_g_pix = loss_fn(fake.float(), y.float())
    total = adversarial_weight * loss_g_gan + l1_weight * loss_g_pix
    terms = [loss_d, loss_d_real, loss_d_fake, loss_g_gan, loss_g_pix]
    keys = ["loss_d", "loss_d_real", "loss_d_fake", "loss_g_gan", f"loss_g_{pixel_loss}"]
    for key, fn in extras:
        term = fn(fake.float(), y.float(), x)
        total = total + term
        terms.append(term)
        keys.append(key)
    total.backward()
    opt_g.step()
    D.requires_grad_(True)
    return dict(zip(keys, torch.stack(terms).detach().unbind(), strict=True))


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
    save_torch_atomic(path, state)


@dataclass
class Run:
    """What :func:`fit` trains and where it keeps its state. ``D`` is None for pixel-loss pretraining.

    ``make_pair(rgb, gen)`` (required) turns a crop batch (RGB in [0, 1]) into (input, target) on the device;
    ``gen`` is the run's CPU generator (saved with the resume state), for random degradations.
    Each task supplies its own (``colorizer.pair_maker``, ``superres.make_pair``)."""

    name: str
    phase: str                              # pretrain | finetune
    G: nn.Module
    D: nn.Module | None
    images: torch.Tensor | list[torch.Tensor]
    run_hash: str                           # params_hash of phase params + data; guards the resume
    resume_path: Path
    csv_path: Path
    meta: dict = field(default_factory=dict)  # facts of the first start (e.g. encoder weights) kept on resume
    make_pair: Callable[[torch.Tensor, torch.Generator], tuple[torch.Tensor, torch.Tensor]] | None = None
    objective: Objective = Objective()
    val_images: torch.Tensor | None = None  # uint8 (N, 3, S, S): validation L1 every cfg.eval_every steps
    val_csv_path: Path | None = None        # (step, val_l1) rows; written (maybe header-only) when set
    siblings: list[list[int]] | None = None  # per image, the images cut from the same source (itself
    #                                          included): batches then carry a second crop of the same
    #                                          source in channels 3-5, the guided colorizers' reference


@torch.no_grad()
def val_l1(G: nn.Module, images: torch.Tensor, crop: int, batch_size: int, pair: Callable,
           autocast: Callable[[], contextlib.AbstractContextManager]) -> float:
    """Mean |G(x) - y| over the centre ``crop`` x ``crop`` of every image (uint8 (N, 3, H, W)), in eval
    mode and without gradients; G is back in train mode afterwards. Units: the network's output
    space (a*b / 110 or RGB * 2 - 1)."""
    G.eval()
    top, left = (images.shape[-2] - crop) // 2, (images.shape[-1] - crop) // 2
    total, n, gen = 0.0, 0, torch.Generator().manual_seed(0)
    for i in range(0, len(images), batch_size):
        rgb = images[i:i + batch_size, :, top:top + crop, left:left + crop].float().div(255.0)
        x, y = pair(rgb, gen)
        with autocast():
            out = G(x)
        total += F.l1_loss(out.float(), y.float(), reduction="sum").item()
        n += y.numel()
    G.train()
    return total / n


def _validate(best: dict, step: int, v: float, G: nn.Module, patience: int) -> bool:
    """Record val L1 ``v`` at ``step`` in ``best`` (rows, best value/step/state, evaluations without
    improvement); True when ``patience`` evaluations in a row did not improve (early stop)."""
    best["rows"].append({"step": step, "val_l1": float(f"{v:.6g}")})
    if best["val_l1"] is None or v < best["val_l1"]:
        best.update(val_l1=v, step=step, bad=0,
                    state={k: t.detach().cpu().clone() for k, t in G.state_dict().items()})
        return False
    best["bad"] += 1
    best["stopped_early"] = bool(patience) and best["bad"] >= patience
    return best["stopped_early"]


def _restore(state: dict, G, D, opt_g, opt_d, gen: torch.Generator, aux: torch.Generator) -> None:
    unwrap(G).load_state_dict(state["G"])
    opt_g.load_state_dict(state["opt_g"])
    if D is not None:
        unwrap(D).load_state_dict(state["D"])
        opt_d.load_state_dict(state["opt_d"])
    gen.set_state(state["gen"])
    aux.set_state(state["aux"])


def prepare(model: nn.Module | None, cfg: TrainConfig, device: torch.device, job: distributed.Dist
            ) -> nn.Module | None:
    """A model ready to train on ``device``: NHWC when ``channels_last`` (auto: on CUDA, the fast conv
    layout for bf16 tensor cores), compiled in place when ``compile`` (auto: on CUDA), and in DDP
    (with SyncBatchNorm per ``sync_batchnorm``) when the job has several processes."""
    if model is None:
        return None
    fmt = torch.channels_last if resolved(cfg.channels_last, device) else torch.contiguous_format
    model = model.to(device, memory_format=fmt).train()
    if resolved(cfg.compile, device):
        model.compile()
    return distributed.wrap(model, job, device, cfg.sync_batchnorm)


class _Log:
    """Losses summed on the device (float64, no sync per step); :meth:`row` averages them over the
    steps since the last row and over the ranks, with one sync."""

    def __init__(self, keys: list[str], device: torch.device, saved: dict | None = None):
        self.keys, self.device = keys, device
        self.sum = torch.zeros(len(keys), dtype=torch.float64, device=device)
        self.n = 0
        if saved:  # a resume state: {"sum": [...], "n": k}
            self.sum += torch.tensor(saved["sum"], dtype=torch.float64, device=device)
            self.n = int(saved["n"])

    def add(self, losses: dict[str, torch.Tensor]) -> None:
        self.sum += torch.stack([losses[k].detach().double() for k in self.keys])
        self.n += 1

    def row(self, step: int, job: distributed.Dist) -> dict:
        mean = distributed.mean_across(self.sum / self.n, job).tolist()
        self.sum.zero_()
        self.n = 0
        return {"step": step, **{k: float(f"{v:.6g}") for k, v in zip(self.keys, mean, strict=True)}}

    def state(self) -> dict:
        return {"sum": self.sum.tolist(), "n": self.n}


def _writer(run: Run, job: distributed.Dist) -> Callable[[list | None, list | None], None]:
    """Writes the loss and val CSVs (rank 0 only); None leaves that file alone."""
    def write(rows: list | None, val_rows: list | None) -> None:
        if not job.main:
            return
        if rows is not None:
            write_csv_atomic(run.csv_path, rows, run.objective.fields(gan=run.D is not None))
        if val_rows is not None and run.val_csv_path is not None:
            write_csv_atomic(run.val_csv_path, val_rows, VAL_FIELDS)
    return write


def _check_input(G: nn.Module, x: torch.Tensor, crop: int, run: Run) -> None:
    """Stop with one line when the crops do not fit the generator's ``input_multiple`` (e.g. a
    ``factor`` 4 ResNet-18 U-Net needs multiples of 64 px)."""
    m = int(getattr(G, "input_multiple", 1) or 1)
    if x.shape[-1] % m or x.shape[-2] % m:
        raise AstroganError(f"params.yaml: the {crop} px crop of {run.name} ({run.phase}) is not a "
                            f"multiple of {m}, its generator's input multiple; set {run.phase}.crop (or "
                            f"the zoo entry's {run.phase}.crop) to a multiple of {m}")


def fit(run: Run, cfg: TrainConfig) -> dict[str, Any]:
    """Train ``run.G`` (and ``run.D``) for ``cfg.steps`` steps, continuing from ``run.resume_path`` when
    its hash matches. Returns {"rows", "elapsed_s", "started", "device", "meta", ...}; models stay on
    the device. Under torchrun every rank calls it; only rank 0 writes files (``result["main"]``)."""
    job, device = distributed.setup(resolve_device(cfg.device))
    if cfg.batch_size % job.world:
        raise AstroganError(f"params.yaml: batch size {cfg.batch_size} does not split evenly over "
                            f"{job.world} processes (train.nproc); make it a multiple")
    fmt = torch.channels_last if resolved(cfg.channels_last, device) else torch.contiguous_format
    G, D = prepare(run.G, cfg, device, job), prepare(run.D, cfg, device, job)
    opt_g = make_adam(G, cfg, device)
    opt_d = make_adam(D, cfg, device) if D is not None else None
    criterion, autocast = gan_losses(cfg.gan_loss, cfg.gp_weight), autocast_for(device, cfg.precision)
    gen = torch.Generator().manual_seed(cfg.seed)      # crops: a CPU generator, the same batches anywhere
    aux = torch.Generator().manual_seed(cfg.seed + 1)  # other draws (SR noise, WGAN-GP's interpolation)
    start, rows, saved_log, elapsed, started, meta = 0, [], None, 0.0, utc_now(), run.meta
    best = {"val_l1": None, "step": None, "state": None, "bad": 0, "rows": [], "stopped_early": False}
    state = load_resume(run.resume_path, run.run_hash)
    if state is not None:
        _restore(state, G, D, opt_g, opt_d, gen, aux)
        start, rows, saved_log, elapsed, started, meta = (
            state[k] for k in ("step", "rows", "log", "elapsed_s", "started", "meta"))
        best = state.get("best", best)
        if job.main:
            print(f"resuming {run.name} {run.phase} from step {start}")
    feeder = Feeder(run.images, device, {"on": True, "off": False}.get(cfg.data_on_device, "auto"),
                    siblings=run.siblings)
    validate = run.val_images is not None and len(run.val_images) > 0 and cfg.eval_every > 0
    val_images = run.val_images.to(device) if validate else None
    obj = run.objective
    log = _Log(obj.fields(gan=D is not None)[1:], device, saved_log)
    if run.make_pair is None:
        raise ValueError(f"{run.name} {run.phase}: Run.make_pair is required (the task's input/target pair)")
    pair = run.make_pair
    pixel_weight = cfg.l1_weight if obj.pixel_weight is None else obj.pixel_weight
    mine = job.shard(cfg.batch_size)
    write = _writer(run, job)
    write(rows, best["rows"])  # at once replaces a stale log of an earlier run

    def evaluate(step: int) -> bool:
        """Score ``step`` on val, keep it if best, log it; True when patience ran out."""
        v = val_l1(unwrap(G), val_images, cfg.crop, cfg.batch_size, pair, autocast)
        stop = _validate(best, step, distributed.from_main(v, job, device), unwrap(G), cfg.patience)
        write(None, best["rows"])
        return stop

    step, time_limited = start, False
    t0 = time.perf_counter() - elapsed
    pbar = tqdm(total=cfg.steps, initial=start, desc=f"{run.phase} {run.name}", disable=not job.main)
    for step in range(start + 1, cfg.steps + 1):
        rgb = feeder.next(cfg.batch_size, cfg.crop, gen).float().div_(255.0)
        x, y = (t[mine].contiguous(memory_format=fmt) for t in pair(rgb, aux))  # this rank's rows
        if step == start + 1:
            _check_input(unwrap(G), x, cfg.crop, run)
        if D is None:
            losses = l1_step(G, opt_g, x, y, autocast, obj.pixel_loss,
                             1.0 if obj.pixel_weight is None else obj.pixel_weight, obj.extras)
        else:
            losses = gan_step(G, D, opt_g, opt_d, x, y, l1_weight=pixel_weight, criterion=criterion,
                              autocast=autocast, conditional=obj.conditional,
                              adversarial_weight=obj.adversarial_weight, pixel_loss=obj.pixel_loss,
                              extras=obj.extras, generator=aux, rows=(cfg.batch_size, mine))
        log.add(losses)
        stop = False
        if validate and (step % cfg.eval_every == 0 or step == cfg.steps):
            stop = evaluate(step)
        if stop or step % cfg.log_every == 0 or step == cfg.steps:  # a row: the mean since the last row
            rows.append(log.row(step, job))  # syncs the device, so the clock below is honest
            write(rows, None)
            pbar.set_postfix({k: v for k, v in rows[-1].items() if k != "step"})
            if cfg.time_limit_s > 0 and step < cfg.steps and not stop:
                over = float(time.perf_counter() - t0 > cfg.time_limit_s)
                if distributed.from_main(over, job, device):
                    if job.main:
                        print(f"{run.name} {run.phase}: time limit {cfg.time_limit_s:g} s reached at step "
                              f"{step} of {cfg.steps}")
                    time_limited = True
                    if validate and best["step"] is None:  # keep a checkpoint choice: score this step
                        evaluate(step)
                    break
        if stop:
            if job.main:
                print(f"{run.name} {run.phase}: early stop at step {step}, val L1 not better than "
                      f"{best['val_l1']:.6g} (step {best['step']}) for {cfg.patience} evaluations")
            break
        if step % cfg.checkpoint_every == 0 and step < cfg.steps and job.main:
            save_resume(run.resume_path, {
                "hash": run.run_hash, "step": step, "G": unwrap(G).state_dict(), "opt_g": opt_g.state_dict(),
                "D": unwrap(D).state_dict() if D is not None else {},
                "opt_d": opt_d.state_dict() if D is not None else {},
                "gen": feeder.generator_state(gen), "aux": aux.get_state(), "rows": rows, "log": log.state(),
                "elapsed_s": time.perf_counter() - t0, "started": started, "meta": meta, "best": best})
        pbar.update(1)
    pbar.close()
    validation = None
    if validate:
        unwrap(G).load_state_dict(best["state"])  # the checkpoint holds the best val L1, not the last step
        validation = {"best_step": best["step"], "best_val_l1": float(f"{best['val_l1']:.6g}"),
                      "stopped_early": best["stopped_early"], "evaluations": len(best["rows"]),
                      "eval_every": cfg.eval_every, "patience": cfg.patience}
    distributed.teardown()
    return {"rows": rows, "elapsed_s": round(time.perf_counter() - t0, 3), "started": started,
            "device": device_name(device), "meta": meta, "steps_run": step, "time_limited": time_limited,
            "validation": validation,
            "main": job.main, "processes": job.world, "feeding": feeder.mode,
            "compiled": resolved(cfg.compile, device), "channels_last": fmt == torch.channels_last}


def finish(run: Run, cfg: TrainConfig, result: dict, *, out_path: Path, arch: str, arch_kwargs: dict,
           card: dict) -> dict:
    """Write the generator checkpoint and its card (``<out>.card.json``, also inside the checkpoint),
    then drop the resume file. The card holds no timings (the same inputs give the same bytes): they
    go to ``<resume file>.timing.json`` and, as ``card["timing"]``, to the caller. ``card`` holds the
    task's and the phase's facts, first the generator's output ``color_space`` (lab | rgb), which the
    checkpoint keeps too; the common ones are added. On ranks other than 0 of a torchrun job, only
    returns the card (rank 0 writes)."""
    steps_run = result.get("steps_run", cfg.steps)
    validation = result.get("validation")
    card = {"name": run.name, "phase": run.phase, "arch": arch, "arch_kwargs": arch_kwargs, **card,
            "seed": cfg.seed, "steps": cfg.steps,
            "steps_run": steps_run, **({"validation": validation} if validation else {}),
            **({"time_limit_s": cfg.time_limit_s, "time_limited": True}
               if result.get("time_limited") else {}),
            "batch_size": cfg.batch_size, "crop": cfg.crop, "precision": cfg.precision,
            "device": result["device"], "processes": result.get("processes", 1),
            "feeding": result.get("feeding"), "compiled": result.get("compiled", False),
            "channels_last": result.get("channels_last", False),
            "torch": str(torch.__version__),
            "final_losses": {k: v for k, v in (result["rows"] or [{}])[-1].items() if k != "step"}}
    # Timings and timestamps differ run to run: they go to a log beside the resume file (not a DVC
    # output), so that a rerun with the same inputs gives the same card and checkpoint bytes.
    timing = {"wall_time_s": result["elapsed_s"],
              "seconds_per_step": round(result["elapsed_s"] / steps_run, 4) if steps_run else None,
              "started": result["started"], "finished": utc_now()}
    card["timing"] = timing  # for the caller's message; removed before anything is written
    if not result.get("main", True):
        return card
    write_json_atomic(run.resume_path.with_suffix(".timing.json"),
                      {"name": run.name, "phase": run.phase, **timing})
    written = {k: v for k, v in card.items() if k != "timing"}
    save_generator(out_path, run.G, arch=arch, arch_kwargs=arch_kwargs, color_space=card["color_space"],
                   step=validation["best_step"] if validation else steps_run, card=written)
    write_json_atomic(out_path.with_suffix(".card.json"), written)
    run.resume_path.unlink(missing_ok=True)
    return card
