"""Training past one process with PyTorch's own engine: ``torchrun`` + DistributedDataParallel.

- ``train.nproc`` > 1 makes a training stage start itself again under
  ``torchrun --standalone --nproc-per-node <nproc>`` (:func:`relaunch`), so ``dvc repro`` needs no
  other command. Started by a user's own ``torchrun`` (multi-node, c10d rendezvous: README), the
  stage sees ``WORLD_SIZE``/``RANK``/``LOCAL_RANK`` and does not relaunch.
- :func:`setup` joins the process group: NCCL on GPUs (one per local rank), gloo on CPU.
- Rank 0 alone writes checkpoints, logs, cards and metrics (:attr:`Dist.main`).
- Batches: every rank draws the same global batch plan from the same seeded generator and takes
  its own equal slice of it (:meth:`Dist.shard`), so each step's samples are split across ranks
  with no overlap and N processes see exactly the batches one process would (gradients are
  averaged by DDP over equal slices: the same mean gradient, up to float rounding and BatchNorm).
- BatchNorm: ``train.sync_batchnorm`` (auto: on with more than one CUDA process) converts it to
  SyncBatchNorm, which PyTorch implements for GPUs only; on CPU each rank normalises its own slice.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from pipeline.errors import AstroganError


@dataclass(frozen=True)
class Dist:
    """This process's place in the job (world 1 = a plain single-process run)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1

    def shard(self, n: int) -> slice:
        """This rank's rows of a global batch of ``n`` (n divisible by world)."""
        per = n // self.world
        return slice(self.rank * per, (self.rank + 1) * per)


def from_env() -> Dist:
    """The job as torchrun describes it in the environment (a plain run: world 1)."""
    return Dist(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
                int(os.environ.get("LOCAL_RANK", 0)))


def relaunch(nproc: int, module: str, argv: list[str]) -> None:
    """Replace this process by ``torchrun --standalone --nproc-per-node nproc -m module argv`` when
    ``nproc`` > 1 and we are not already under torchrun; else return."""
    if nproc <= 1 or "LOCAL_RANK" in os.environ:
        return
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           "-m", module, *argv]
    print(f"train.nproc={nproc}: running {' '.join(cmd[1:])}", flush=True)
    sys.stdout.flush()
    os.execv(sys.executable, cmd)


def setup(device: torch.device) -> tuple[Dist, torch.device]:
    """Join the process group when under torchrun (NCCL for CUDA, gloo for CPU). Each local rank
    takes its own GPU (``cuda:<local_rank>``). Returns (job, device for this rank)."""
    job = from_env()
    if not job.active:
        return job, device
    if device.type == "cuda":
        device = torch.device("cuda", job.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return job, device


def teardown() -> None:
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def wrap(model: nn.Module, job: Dist, device: torch.device, sync_batchnorm: str) -> nn.Module:
    """``model`` in DistributedDataParallel (SyncBatchNorm first when asked and supported); as is
    for a single process."""
    if not job.active:
        return model
    if sync_batchnorm == "on" or (sync_batchnorm == "auto" and device.type == "cuda"):
        if device.type != "cuda":
            raise AstroganError("params.yaml: train.sync_batchnorm=on needs CUDA (PyTorch's SyncBatchNorm is "
                                "GPU-only); use auto or off on CPU")
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


def mean_across(t: torch.Tensor, job: Dist) -> torch.Tensor:
    """The mean of ``t`` over ranks (``t`` itself for one process)."""
    if not job.active:
        return t
    t = t.clone()
    dist.all_reduce(t)
    return t / job.world


def from_main(value: float, job: Dist, device: torch.device) -> float:
    """Rank 0's ``value`` on every rank (decisions such as early stopping must agree)."""
    if not job.active:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.broadcast(t, 0)
    return float(t.item())
