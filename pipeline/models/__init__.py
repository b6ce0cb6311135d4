"""Model zoo: builders by name, and the checkpoint format shared by training, evaluation and the CLI.

A checkpoint (``pretrained.pt`` / ``finetuned.pt``) is a plain dict, never a pickled module::

    {"arch": "resnet18_unet", "arch_kwargs": {...}, "color_space": "lab",
     "state_dict": {...}, "step": 300, "card": {...}}

and loads with ``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn

from pipeline.fsio import atomic_path


def _generators() -> dict[str, type[nn.Module]]:
    from pipeline.models.ab_classifier import ABClassifier
    from pipeline.models.edsr import EDSR
    from pipeline.models.guided_unet import GuidedUNet
    from pipeline.models.resnet_unet import ResNet18UNet
    from pipeline.models.srresnet import SRResNet
    from pipeline.models.unet import UNet
    from pipeline.models.wdsr import WDSR

    return {"resnet18_unet": ResNet18UNet, "ab_classifier": ABClassifier, "guided_unet": GuidedUNet,
            "unet": UNet, "srresnet": SRResNet,
            "edsr": EDSR, "wdsr": WDSR}


def _discriminators() -> dict[str, type[nn.Module]]:
    from pipeline.models.patchgan import PatchGAN
    from pipeline.models.resnet_patch import ResNet50Patch
    from pipeline.models.srresnet import SRGANDiscriminator
    from pipeline.models.vgg_discriminator import VGGResidualDiscriminator

    return {"patchgan": PatchGAN, "vgg_residual": VGGResidualDiscriminator, "resnet50_patch": ResNet50Patch,
            "srgan": SRGANDiscriminator}


def generator_class(arch: str) -> type[nn.Module]:
    table = _generators()
    if arch not in table:
        raise SystemExit(f"unknown generator {arch!r}; known: {', '.join(table)}")
    return table[arch]


def discriminator_class(arch: str) -> type[nn.Module]:
    table = _discriminators()
    if arch not in table:
        raise SystemExit(f"unknown discriminator {arch!r}; known: {', '.join(table)}")
    return table[arch]


def out_channels(color_space: str) -> int:
    """Generators predict a*b (2 channels) in Lab, or RGB (3 channels) in rgb."""
    if color_space not in ("lab", "rgb"):
        raise SystemExit(f"unknown color_space {color_space!r}; use lab or rgb")
    return 2 if color_space == "lab" else 3


def save_generator(path: str | os.PathLike, model: nn.Module, *, arch: str, arch_kwargs: dict,
                   color_space: str, step: int, card: dict | None = None) -> None:
    """Atomically write a generator checkpoint (state dict + how to rebuild it)."""
    model = getattr(model, "_orig_mod", model)      # unwrap torch.compile
    model = getattr(model, "module", model)         # unwrap DDP
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    blob = {"arch": arch, "arch_kwargs": arch_kwargs, "color_space": color_space,
            "state_dict": state, "step": int(step), "card": card or {}}
    with atomic_path(path) as tmp:
        torch.save(blob, tmp)


def load_generator(path: str | os.PathLike, device: torch.device | str = "cpu"
                   ) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a generator from its checkpoint, in eval mode. Returns (model, metadata)."""
    if not os.path.isfile(path):
        raise SystemExit(f"{path}: model checkpoint not found; run `dvc repro` to train it")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise SystemExit(f"{path}: not a readable checkpoint ({type(e).__name__}); retrain it") from None
    cls = generator_class(blob["arch"])
    kwargs = dict(blob["arch_kwargs"])
    if "encoder_weights" in kwargs:
        kwargs["encoder_weights"] = None  # the state dict carries the trained weights
    model = cls(**kwargs)
    model.load_state_dict(blob["state_dict"])
    model.to(device).eval()
    meta = {k: v for k, v in blob.items() if k != "state_dict"}
    return model, meta
