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


def random_crops(images: torch.Tensor | Sequence[torch.Tensor], batch: int, crop: int,
                 generator: torch.Generator) -> torch.Tensor:
    """A batch of random ``crop`` x ``crop`` patches with random horizontal/vertical flips.

    ``images`` is a uint8 tensor (N, 3, H, W) or a list of (3, H_i, W_i) tensors of varying size.
    Returns float RGB in [0, 1], (batch, 3, crop, crop), on the images' device.
    """
    n = len(images)
    idx = torch.randint(n, (batch,), generator=generator).tolist()
    out = []
    for i in idx:
        img = images[i]
        h, w = img.shape[-2:]
        if h < crop or w < crop:
            raise ValueError(f"image {i} is {w}x{h}, smaller than the {crop} px crop; lower the crop")
        y = int(torch.randint(h - crop + 1, (1,), generator=generator))
        x = int(torch.randint(w - crop + 1, (1,), generator=generator))
        out.append(img[:, y:y + crop, x:x + crop])
    batch_t = torch.stack(out).float().div_(255.0)
    flips = torch.rand(2, generator=generator).tolist()
    if flips[0] < 0.5:
        batch_t = batch_t.flip(-1)
    if flips[1] < 0.5:
        batch_t = batch_t.flip(-2)
    return batch_t
