"""Model zoo: builders by name, and the checkpoint format shared by training, evaluation and the CLI.

A checkpoint (``pretrained.pt`` / ``finetuned.pt``) is a plain dict, never a pickled module::

    {"arch": "resnet18_unet", "arch_kwargs": {...}, "color_space": "lab",
     "state_dict": {...}, "step": 300, "card": {...}}

and loads with ``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from pipeline.errors import AstroganError
from pipeline.fsio import save_torch_atomic


class _Registry(Mapping):
    """Architectures by name, each imported only when asked for: a stage that trains EDSR never
    imports the colorizers' modules (so dvc.yaml need not list what they import)."""

    def __init__(self, spec: dict[str, str]):
        self.spec = spec  # name -> "module:Class"

    def __getitem__(self, name: str) -> type[nn.Module]:
        module, cls = self.spec[name].split(":")
        return getattr(importlib.import_module(module), cls)

    def __iter__(self):
        return iter(self.spec)

    def __len__(self) -> int:
        return len(self.spec)


_M = "pipeline.models."
GENERATORS = _Registry({
    "resnet18_unet": _M + "resnet_unet:ResNet18UNet", "ab_classifier": _M + "ab_classifier:ABClassifier",
    "guided_unet": _M + "guided_unet:GuidedUNet", "unet": _M + "unet:UNet",
    "srresnet": _M + "srresnet:SRResNet", "edsr": _M + "edsr:EDSR", "wdsr": _M + "wdsr:WDSR",
    "rcan": _M + "rcan:RCAN"})
DISCRIMINATORS = _Registry({
    "patchgan": _M + "patchgan:PatchGAN", "vgg_residual": _M + "vgg_discriminator:VGGResidualDiscriminator",
    "resnet50_patch": _M + "resnet_patch:ResNet50Patch", "srgan": _M + "srresnet:SRGANDiscriminator"})


def _generators() -> Mapping[str, type[nn.Module]]:
    return GENERATORS


def _discriminators() -> Mapping[str, type[nn.Module]]:
    return DISCRIMINATORS


def generator_class(arch: str) -> type[nn.Module]:
    table = _generators()
    if arch not in table:
        raise AstroganError(f"unknown generator {arch!r}; known: {', '.join(table)}")
    return table[arch]


def discriminator_class(arch: str) -> type[nn.Module]:
    table = _discriminators()
    if arch not in table:
        raise AstroganError(f"unknown discriminator {arch!r}; known: {', '.join(table)}")
    return table[arch]


def out_channels(color_space: str) -> int:
    """Generators predict a*b (2 channels) in Lab, or RGB (3 channels) in rgb."""
    if color_space not in ("lab", "rgb"):
        raise AstroganError(f"unknown color_space {color_space!r}; use lab or rgb")
    return 2 if color_space == "lab" else 3


def save_generator(path: str | os.PathLike, model: nn.Module, *, arch: str, arch_kwargs: dict,
                   color_space: str, step: int, card: dict | None = None) -> None:
    """Atomically write a generator checkpoint (state dict + how to rebuild it)."""
    model = getattr(model, "_orig_mod", model)      # unwrap torch.compile
    model = getattr(model, "module", model)         # unwrap DDP
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    blob = {"arch": arch, "arch_kwargs": arch_kwargs, "color_space": color_space,
            "state_dict": state, "step": int(step), "card": card or {}}
    save_torch_atomic(path, blob)


def load_generator(path: str | os.PathLike, device: torch.device | str = "cpu"
                   ) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a generator from its checkpoint, in eval mode. Returns (model, metadata)."""
    if not os.path.isfile(path):
        raise AstroganError(f"{path}: model checkpoint not found; run `dvc repro` to train it")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise AstroganError(f"{path}: not a readable checkpoint ({type(e).__name__}); retrain it") from None
    cls = generator_class(blob["arch"])
    kwargs = dict(blob["arch_kwargs"])
    if "encoder_weights" in kwargs:
        kwargs["encoder_weights"] = None  # the state dict carries the trained weights
    model = cls(**kwargs)
    model.load_state_dict(blob["state_dict"])
    model.to(device).eval()
    meta = {k: v for k, v in blob.items() if k != "state_dict"}
    return model, meta
