"""Tiles and photos as in-memory uint8 tensors, and random crops of them as training batches.

The data sets here are small enough (hundreds of 256 px tiles) to sit in memory as one uint8
tensor (N, 3, S, S): a batch is an index + crop + flip, done on whatever device holds the tensor,
with no per-sample Python work and no DataLoader. Colour conversion happens in the step (color.py).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from pipeline.fsio import read_csv


def load_rgb(path: str | os.PathLike) -> np.ndarray:
    """Decode an image file to uint8 RGB (H, W, 3); grey, RGBA, palette and 16-bit handled."""
    with Image.open(path) as im:
        im.load()
        if im.mode in ("I;16", "I;16B", "I;16L", "I"):
            a = np.asarray(im, dtype=np.float64)
            a = (a / max(a.max(), 1) * 255.0).round().astype(np.uint8)
            return np.repeat(a[..., None], 3, axis=2)
        if im.mode in ("RGBA", "LA", "P", "PA"):
            im = im.convert("RGBA")
            bg = Image.new("RGBA", im.size, (0, 0, 0, 255))  # sky is black: composite on black
            im = Image.alpha_composite(bg, im)
        return np.asarray(im.convert("RGB"))


def read_split(split_dir: str | os.PathLike, name: str) -> list[dict[str, str]]:
    """Rows of ``<split_dir>/<name>.csv`` (tile_id, image_id, ...)."""
    path = Path(split_dir) / f"{name}.csv"
    if not path.is_file():
        raise SystemExit(f"{path}: split file missing; run `dvc repro split` first")
    return read_csv(path)


def load_tiles(tiles_dir: str | os.PathLike, tile_ids: Sequence[str]) -> torch.Tensor:
    """Stack the PNG tiles named ``<tiles_dir>/<tile_id>.png`` into a uint8 tensor (N, 3, S, S)."""
    arrays = [load_rgb(Path(tiles_dir) / f"{t}.png") for t in tile_ids]
    if not arrays:
        return torch.empty(0, 3, 0, 0, dtype=torch.uint8)
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def load_tiles_checked(tiles_dir: str | os.PathLike, tile_ids: Sequence[str], crop: int,
                     crop_params: str) -> torch.Tensor:
    """``load_tiles`` for training: unreadable tiles or tiles smaller than ``crop`` stop the stage with
    one line that names the fix (``crop_params``: the params to lower, e.g. ``finetune.crop``)."""
    try:
        tiles = load_tiles(tiles_dir, tile_ids)
    except (OSError, ValueError) as e:
        raise SystemExit(f"{tiles_dir}: cannot load the train tiles ({e}); rerun `dvc repro tile split`"
                         ) from None
    if min(tiles.shape[-2:]) < crop:
        raise SystemExit(f"{tiles_dir}: tiles are {tiles.shape[-1]} px, smaller than the {crop} px crop; "
                         f"lower {crop_params} or raise tile.size")
    return tiles


def random_crops(images: torch.Tensor | Sequence[torch.Tensor], batch: int, crop: int,
                 generator: torch.Generator) -> torch.Tensor:
    """A batch of random ``crop`` x ``crop`` patches, each with its own random h/v flips.

    ``images`` is a uint8 tensor (N, 3, H, W) or a list of (3, H_i, W_i) tensors of varying size.
    ``generator`` is a CPU ``torch.Generator``; the same generator state gives the same batch.
    Returns float RGB in [0, 1], (batch, 3, crop, crop), on the images' device.
    """
    n = len(images)
    if n == 0:
        raise ValueError("no images to crop from")
    idx = torch.randint(n, (batch,), generator=generator)
    if isinstance(images, torch.Tensor):
        sizes = torch.tensor(images.shape[-2:]).expand(batch, 2)
    else:
        sizes = torch.tensor([tuple(images[i].shape[-2:]) for i in idx.tolist()]).view(batch, 2)
    small = (sizes < crop).any(1)
    if small.any():
        i = int(idx[small.nonzero()[0, 0]])
        h, w = images[i].shape[-2:]
        raise ValueError(f"image {i} is {w}x{h}, smaller than the {crop} px crop; lower the crop")
    # Top-left corners, uniform over the valid range of each sample's own image; flips per sample.
    u = torch.rand(batch, 2, generator=generator)
    y0, x0 = (u * (sizes - crop + 1)).long().clamp_max_(sizes - crop).unbind(1)
    flip_h, flip_v = (torch.rand(batch, 2, generator=generator) < 0.5).unbind(1)
    if isinstance(images, torch.Tensor):
        # One gather for the whole batch: row/column index grids per sample, flips folded into them.
        dev = images.device
        r = torch.arange(crop)
        rows = y0[:, None] + torch.where(flip_v[:, None], crop - 1 - r, r)       # (B, crop)
        cols = x0[:, None] + torch.where(flip_h[:, None], crop - 1 - r, r)       # (B, crop)
        out = images[idx.to(dev)[:, None, None, None], torch.arange(3, device=dev)[None, :, None, None],
                     rows.to(dev)[:, None, :, None], cols.to(dev)[:, None, None, :]]
        return out.float().div_(255.0)
    # Images of different sizes cannot be gathered at once: slice each, then flip the batch at once.
    out = torch.stack([images[i][:, y:y + crop, x:x + crop]
                       for i, y, x in zip(idx.tolist(), y0.tolist(), x0.tolist(), strict=True)])
    out = out.float().div_(255.0)
    dev = out.device
    out = torch.where(flip_h.to(dev)[:, None, None, None], out.flip(-1), out)
    return torch.where(flip_v.to(dev)[:, None, None, None], out.flip(-2), out)
