"""The super-resolution contract: degradation, (LR, HR) pairs, baselines, perceptual loss, SR metrics.

- HR = an RGB tile (or crop) in [0, 1]; LR = HR blurred (optional Gaussian, ``blur_sigma`` HR px),
  downscaled 1/scale by antialiased bicubic (``F.interpolate(..., mode="bicubic", antialias=True)``),
  plus optional Gaussian noise (``noise_sigma`` in 8-bit levels), clamped and rounded to 8 bits as a
  stored image would be. All on the tensors' device; noise from a CPU ``torch.Generator``, so the
  same seed gives the same LR on any device.
- Generators map LR (N, 3, h, w) in [0, 1] to (N, 3, scale*h, scale*w); clamp(0, 1) them.
- Baselines: bicubic (torch's, a = -0.75, align_corners=False) and nearest-neighbour upscaling.
- Perceptual loss: SRGAN's VGG loss, MSE between VGG19 features (ImageNet weights, torchvision weights
  API) of output and truth; offline, one line is printed and the term is dropped.
- Metrics: per tile, L1/L2 (0-255, per RGB channel), PSNR/SSIM on RGB and on Y (ITU-R BT.601 luma,
  16-235, MATLAB ``rgb2ycbcr``), all with ``border`` px cropped on every side.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.data import check_crop, images_sha256, packed_paths, read_packed
from pipeline.errors import AstroganError
from pipeline.fsio import sha256_file
from pipeline.metrics import MIN_MSE, RGB, gaussian_kernel1d, l1_per_channel, l2_per_channel, psnr, ssim
from pipeline.models import imagenet
from pipeline.params import stage_params


@dataclass(frozen=True)
class Degradation:
    """How LR inputs are made from HR tiles (params ``superres.scale`` and ``superres.degradation``)."""

    scale: int = 4
    blur_sigma: float = 0.0       # Gaussian blur before downscaling, in HR px; 0 = none
    noise_sigma: float = 0.0      # Gaussian noise on the LR image, in 8-bit levels (0-255); 0 = none

    @classmethod
    def from_params(cls, params: dict) -> Degradation:
        s, g = params["superres"], params["superres"]["degradation"]
        d = cls(int(s["scale"]), float(g["blur_sigma"]), float(g["noise_sigma"]))
        if d.scale < 1 or d.blur_sigma < 0 or d.noise_sigma < 0:
            raise AstroganError(f"params.yaml: superres scale {d.scale} must be >= 1 and degradation sigmas "
                                f">= 0 (blur {d.blur_sigma}, noise {d.noise_sigma})")
        return d


def card(deg: Degradation) -> dict:
    """The facts an SR model's card (``train.finish``) starts with: RGB out, the task, how LR was made."""
    return {"color_space": "rgb", "task": "superres", "scale": deg.scale, "degradation": asdict(deg)}


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur (scipy's kernel, radius 4 sigma), reflect padding; (N, C, H, W) kept."""
    if sigma <= 0:
        return x
    k = gaussian_kernel1d(sigma, truncate=4.0).to(x.device, x.dtype)
    r, c = k.numel() // 2, x.shape[1]
    x = F.pad(x, (r, r, r, r), mode="reflect")
    x = F.conv2d(x, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(x, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def degrade(hr: torch.Tensor, deg: Degradation, gen: torch.Generator | None = None) -> torch.Tensor:
    """HR RGB in [0, 1], (N, 3, H, W), H and W multiples of ``deg.scale`` -> LR (N, 3, H/s, W/s) in [0, 1],
    quantised to 8 bits. ``gen`` (a CPU generator) draws the noise; required when noise_sigma > 0."""
    h, w = hr.shape[-2:]
    if h % deg.scale or w % deg.scale:
        raise ValueError(f"HR size {h}x{w} is not a multiple of the scale {deg.scale}; crop it first")
    x = gaussian_blur(hr.float(), deg.blur_sigma)
    lr = F.interpolate(x, size=(h // deg.scale, w // deg.scale), mode="bicubic", align_corners=False,
                       antialias=True)
    if deg.noise_sigma > 0:
        if gen is None:
            raise ValueError("noise_sigma > 0 needs a torch.Generator for reproducible noise")
        lr = lr + torch.randn(lr.shape, generator=gen).to(lr.device) * (deg.noise_sigma / 255.0)
    return lr.clamp(0, 1).mul(255).round().div(255)


def make_pair(rgb: torch.Tensor, deg: Degradation, gen: torch.Generator | None = None
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """An HR batch in [0, 1] -> (LR network input, HR target), float32, both in [0, 1]."""
    hr = rgb.float()
    return degrade(hr, deg, gen), hr


def bicubic(lr: torch.Tensor, scale: int) -> torch.Tensor:
    """The bicubic baseline: torch bicubic (a = -0.75) upscaling, clamped to [0, 1]."""
    return F.interpolate(lr, scale_factor=scale, mode="bicubic", align_corners=False).clamp(0, 1)


def nearest(lr: torch.Tensor, scale: int) -> torch.Tensor:
    """The nearest-neighbour baseline: each LR pixel repeated scale x scale times."""
    return F.interpolate(lr, scale_factor=scale, mode="nearest")


@torch.no_grad()
def upscale(model: nn.Module, lr: torch.Tensor) -> torch.Tensor:
    """A generator's SR prediction of an LR batch, RGB in [0, 1]."""
    return model(lr).float().clamp(0, 1)


# --- perceptual loss ----------------------------------------------------------------------------

VGG19_LAYERS = {"relu2_2": 9, "relu5_4": 36}  # how many modules of vgg19().features reach that ReLU
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _vgg19_state_dict() -> dict[str, torch.Tensor]:
    """torchvision's VGG19 ImageNet weights (torch hub cache first, then download; no torchvision import)."""
    return imagenet.state_dict("VGG19_Weights.IMAGENET1K_V1")


class VGGPerceptualLoss(nn.Module):
    """SRGAN's content loss: mean squared difference of VGG19 features (after the ReLU of ``layer``,
    default relu5_4 = SRGAN's VGG54) of prediction and truth, both RGB in [0, 1], ImageNet-normalised.
    Frozen, eval mode. Build with :func:`perceptual_loss`, which handles the weights being unavailable."""

    def __init__(self, state: dict[str, torch.Tensor], layer: str = "relu5_4"):
        super().__init__()
        from torchvision.models.vgg import cfgs, make_layers

        n = VGG19_LAYERS[layer]
        features = make_layers(cfgs["E"])[:n]  # no classifier: its 100M parameters are never used
        features.load_state_dict({k[len("features."):]: v for k, v in state.items()
                                  if k.startswith("features.") and int(k.split(".")[1]) < n})
        self.features = features.eval().requires_grad_(False)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        f = self.features(torch.cat([pred, target]).sub(self.mean).div(self.std))
        fp, ft = f.chunk(2)
        return F.mse_loss(fp, ft.detach())


def perceptual_loss(weight: float, layer: str = "relu5_4") -> tuple[VGGPerceptualLoss | None, dict]:
    """The VGG loss module (or None) and the record for the model card: requested weight, used weight,
    weights source or the reason it was dropped. weight 0 builds nothing."""
    if layer not in VGG19_LAYERS:
        raise AstroganError(f"params.yaml: superres.perceptual_layer={layer!r}; "
                            f"use {', '.join(VGG19_LAYERS)}")
    record = {"requested_weight": weight, "layer": layer, "used_weight": 0.0}
    if weight <= 0:
        return None, record | {"weights": None, "reason": "perceptual_weight is 0"}
    try:
        module = VGGPerceptualLoss(_vgg19_state_dict(), layer)
    except Exception as e:  # offline, proxy, corrupt cache: all mean "no ImageNet VGG19"
        reason = f"{type(e).__name__}: {e}".splitlines()[0][:200]
        print(f"perceptual loss: VGG19 imagenet weights unavailable ({reason}); perceptual term dropped")
        return None, record | {"weights": None, "reason": reason}
    return module, record | {"used_weight": weight, "weights": "torchvision VGG19_Weights.IMAGENET1K_V1",
                             "reason": None}


# --- metrics ------------------------------------------------------------------------------------

def rgb_to_y(rgb: torch.Tensor) -> torch.Tensor:
    """ITU-R BT.601 luma of RGB in [0, 1], (N, 3, H, W) -> (N, 1, H, W) on the 16-235 scale
    (MATLAB's and ``skimage.color.rgb2ycbcr``'s Y), float64."""
    r, g, b = rgb.double().unbind(1)
    return (16.0 + 65.481 * r + 128.553 * g + 24.966 * b).unsqueeze(1)


def sr_tile_metrics(pred: torch.Tensor, target: torch.Tensor, border: int) -> dict[str, torch.Tensor]:
    """Per-tile SR metrics of RGB batches in [0, 1], (N, 3, H, W): name -> (N,) float64 on CPU.

    ``border`` px are cropped from every side first (the SR convention: crop = scale). Then
    rgb_l1/l2 (+ _r/_g/_b) on the 0-255 scale, psnr_rgb/ssim_rgb over R, G, B (data range 255),
    psnr_y/ssim_y on BT.601 Y (16-235 scale, data range 255). PSNR's MSE is floored at MIN_MSE.
    """
    if border:
        pred, target = pred[..., border:-border, border:-border], target[..., border:-border, border:-border]
    p255, t255 = pred.double() * 255.0, target.double() * 255.0
    out: dict[str, torch.Tensor] = {}
    for name, fn in (("l1", l1_per_channel), ("l2", l2_per_channel)):
        per = fn(p255, t255)
        out[f"rgb_{name}"] = per.mean(dim=1)
        out.update({f"rgb_{name}_{ch}": per[:, i] for i, ch in enumerate(RGB)})
    out["psnr_rgb"] = psnr(p255, t255, 255.0, MIN_MSE)
    out["ssim_rgb"] = ssim(p255, t255, 255.0)
    yp, yt = rgb_to_y(pred), rgb_to_y(target)
    out["psnr_y"] = psnr(yp, yt, 255.0, MIN_MSE)
    out["ssim_y"] = ssim(yp, yt, 255.0)
    return {k: v.detach().cpu() for k, v in out.items()}


# --- what the SR stages share -------------------------------------------------------------------

def zoo_entry(params: dict, name: str) -> dict:
    """``superres.zoo.<name>``: generator, generator_kwargs, discriminator, discriminator_kwargs."""
    zoo = params["superres"]["zoo"]
    if name not in zoo:
        raise AstroganError(f"SR model {name!r} is not in params.yaml superres.zoo; known: {', '.join(zoo)}")
    return zoo[name]


def generator_kwargs(params: dict, name: str) -> dict:
    """The generator's arch kwargs: its zoo entry's ``generator_kwargs`` plus ``scale``."""
    return {**zoo_entry(params, name).get("generator_kwargs", {}), "scale": int(params["superres"]["scale"])}


def phase_params(params: dict, name: str, phase: str) -> dict:
    """Exactly the params an SR phase reads: dvc.yaml's list for the stage, hashed for resume and kept
    in the card."""
    zoo_entry(params, name)
    return stage_params(phase, params, name)


def load_train_tiles(packed_dir: Path, crop: int, scale: int) -> tuple[torch.Tensor, dict]:
    """All packed train tiles (grey ones too: SR needs no colour) as uint8 (N, 3, S, S), memory-mapped,
    and facts for the card."""
    tiles, rows = read_packed(packed_dir, "train")
    _, csv_path = packed_paths(packed_dir, "train")
    if not rows:
        raise AstroganError(f"{csv_path}: no train tiles; add images or lower split.test_fraction")
    if crop % scale:
        raise AstroganError(f"params.yaml: the HR crop {crop} px is not a multiple of superres.scale {scale}")
    check_crop(tiles, crop, str(csv_path), "sr_pretrain.crop / sr_finetune.crop (the HR crop)")
    facts = {"split": str(csv_path), "split_sha256": sha256_file(csv_path), "tiles": len(rows),
             "pixels_sha256": images_sha256(tiles)}
    return tiles, facts
