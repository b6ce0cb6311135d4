"""Tiles and photos as uint8 tensors, and random crops of them as training batches.

The stage ``pack`` stores each split's tiles once as one uint8 array file (``<split>.npy``,
(N, 3, S, S)) beside its rows (``<split>.csv``); training memory-maps it (:func:`read_packed`), and a
:class:`Feeder` puts it on the training device: whole on the GPU when it fits, else streamed from
pinned memory on a side stream. A batch is an index + crop + flip (:func:`plan_crops` draws it on
the CPU, :func:`gather_crops` does it in one gather on the data's device), with no per-sample Python
work and no DataLoader; colour conversion happens in the step (color.py), on the same device.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pipeline.decode import InputError, read_uint8
from pipeline.errors import AstroganError
from pipeline.fsio import read_csv, sha256_file


def load_rgb(path: str | os.PathLike) -> np.ndarray:
    """Decode an image file to uint8 RGB (H, W, 3) by the project's one decoder and convention
    (:func:`pipeline.decode.read_uint8`: 16-bit over its full range, float and FITS stretched, alpha
    on black), grey repeated; what the CLI sees in the same file, quantized to 8 bits. An unusable
    file raises :class:`~pipeline.decode.InputError` naming it."""
    try:
        a = read_uint8(path).data
    except InputError as e:
        raise InputError(f"{path}: {e}") from None
    return a if a.ndim == 3 else np.repeat(a[..., None], 3, axis=2)


def read_split(split_dir: str | os.PathLike, name: str) -> list[dict[str, str]]:
    """Rows of ``<split_dir>/<name>.csv`` (tile_id, image_id, ...)."""
    path = Path(split_dir) / f"{name}.csv"
    if not path.is_file():
        raise AstroganError(f"{path}: split file missing; run `dvc repro split` first")
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
        raise AstroganError(f"{tiles_dir}: cannot load the train tiles ({e}); rerun `dvc repro tile split`"
                            ) from None
    if min(tiles.shape[-2:]) < crop:
        raise AstroganError(f"{tiles_dir}: tiles are {tiles.shape[-1]} px, smaller than the {crop} px crop; "
                            f"lower {crop_params} or raise tile.size")
    return tiles


@dataclass(frozen=True)
class CropPlan:
    """Where a batch's crops come from: image index, top-left corner and flips per sample (CPU)."""

    idx: torch.Tensor      # (B,) long
    y0: torch.Tensor       # (B,) long
    x0: torch.Tensor       # (B,) long
    flip_h: torch.Tensor   # (B,) bool
    flip_v: torch.Tensor   # (B,) bool
    crop: int

    def __len__(self) -> int:
        return len(self.idx)


def _sizes(images: torch.Tensor | Sequence[torch.Tensor], idx: torch.Tensor) -> torch.Tensor:
    if isinstance(images, (torch.Tensor, np.ndarray)):
        return torch.tensor(images.shape[-2:]).expand(len(idx), 2)
    return torch.tensor([tuple(images[i].shape[-2:]) for i in idx.tolist()]).view(len(idx), 2)


def plan_crops(images: torch.Tensor | np.ndarray | Sequence[torch.Tensor], batch: int, crop: int,
               generator: torch.Generator) -> CropPlan:
    """Draw a batch's crops: ``batch`` images (with replacement), a corner uniform over each one's
    valid range and independent h/v flips, all from ``generator`` (a CPU ``torch.Generator``), in an
    order fixed forever: the same generator state gives the same plan on any device."""
    n = len(images)
    if n == 0:
        raise ValueError("no images to crop from")
    idx = torch.randint(n, (batch,), generator=generator)
    sizes = _sizes(images, idx)
    small = (sizes < crop).any(1)
    if small.any():
        i = int(idx[small.nonzero()[0, 0]])
        h, w = images[i].shape[-2:]
        raise ValueError(f"image {i} is {w}x{h}, smaller than the {crop} px crop; lower the crop")
    u = torch.rand(batch, 2, generator=generator)
    y0, x0 = (u * (sizes - crop + 1)).long().clamp_max_(sizes - crop).unbind(1)
    flip_h, flip_v = (torch.rand(batch, 2, generator=generator) < 0.5).unbind(1)
    return CropPlan(idx, y0, x0, flip_h, flip_v, crop)


def gather_crops(images: torch.Tensor | Sequence[torch.Tensor], plan: CropPlan,
                 out: torch.Tensor | None = None) -> torch.Tensor:
    """The uint8 crops (B, 3, crop, crop) of ``plan``, on the images' device, flips applied.

    A uint8 tensor (N, 3, H, W) is read with one advanced-indexing gather (flips folded into the
    row/column index grids, no per-sample Python work); ``out`` (uint8, e.g. pinned) receives it.
    A list of (3, H_i, W_i) tensors of varying size is sliced per sample."""
    crop = plan.crop
    if isinstance(images, torch.Tensor):
        dev = images.device
        r = torch.arange(crop)
        rows = plan.y0[:, None] + torch.where(plan.flip_v[:, None], crop - 1 - r, r)   # (B, crop)
        cols = plan.x0[:, None] + torch.where(plan.flip_h[:, None], crop - 1 - r, r)   # (B, crop)
        index = (plan.idx.to(dev)[:, None, None, None], torch.arange(3, device=dev)[None, :, None, None],
                 rows.to(dev)[:, None, :, None], cols.to(dev)[:, None, None, :])
        return images[index] if out is None else out.copy_(images[index])
    crops = torch.stack([images[i][:, y:y + crop, x:x + crop] for i, y, x in
                         zip(plan.idx.tolist(), plan.y0.tolist(), plan.x0.tolist(), strict=True)])
    dev = crops.device
    crops = torch.where(plan.flip_h.to(dev)[:, None, None, None], crops.flip(-1), crops)
    return torch.where(plan.flip_v.to(dev)[:, None, None, None], crops.flip(-2), crops)


def sibling_plan(images: torch.Tensor | Sequence[torch.Tensor], plan: CropPlan,
                 siblings: Sequence[Sequence[int]], generator: torch.Generator) -> CropPlan:
    """Another crop of the same source image for each crop of ``plan``: a random one of
    ``siblings[idx]`` (the indices of the tiles cut from the same image, or the photo itself), a
    new corner and new flips. Guided colour trains on it as the reference of the crop."""
    pick = torch.rand(len(plan.idx), generator=generator)
    idx = torch.tensor([siblings[i][min(int(u * len(siblings[i])), len(siblings[i]) - 1)]
                        for i, u in zip(plan.idx.tolist(), pick.tolist(), strict=True)], dtype=torch.long)
    sizes = _sizes(images, idx)
    u = torch.rand(len(idx), 2, generator=generator)
    y0, x0 = (u * (sizes - plan.crop + 1)).long().clamp_max_(sizes - plan.crop).unbind(1)
    flip_h, flip_v = (torch.rand(len(idx), 2, generator=generator) < 0.5).unbind(1)
    return CropPlan(idx, y0, x0, flip_h, flip_v, plan.crop)


def siblings_of(image_ids: Sequence[str]) -> list[list[int]]:
    """For each row, the rows cut from the same image (itself included)."""
    groups: dict[str, list[int]] = {}
    for i, key in enumerate(image_ids):
        groups.setdefault(key, []).append(i)
    return [groups[key] for key in image_ids]


def images_sha256(images: torch.Tensor | Sequence[torch.Tensor]) -> str:
    """Hash of the pixels (and shapes) the model trains on: resume is refused if the data changed."""
    h = hashlib.sha256()
    for img in images:
        h.update(str(tuple(img.shape)).encode())
        h.update(img.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def random_crops(images: torch.Tensor | Sequence[torch.Tensor], batch: int, crop: int,
                 generator: torch.Generator) -> torch.Tensor:
    """A batch of random ``crop`` x ``crop`` patches, each with its own random h/v flips.

    ``images`` is a uint8 tensor (N, 3, H, W) or a list of (3, H_i, W_i) tensors of varying size.
    ``generator`` is a CPU ``torch.Generator``; the same generator state gives the same batch.
    Returns float RGB in [0, 1], (batch, 3, crop, crop), on the images' device.
    """
    return gather_crops(images, plan_crops(images, batch, crop, generator)).float().div_(255.0)


# --- the packed tile arrays (stage ``pack``) and feeding them to the training device -------------

PACKED_COLUMNS = ["row", "tile_id", "image_id", "grey"]


def packed_paths(packed_dir: str | os.PathLike, split: str) -> tuple[Path, Path]:
    """(``<split>.npy``, ``<split>.csv``) of a packed split."""
    return Path(packed_dir) / f"{split}.npy", Path(packed_dir) / f"{split}.csv"


def read_packed(packed_dir: str | os.PathLike, split: str, *, colour_only: bool = False
                ) -> tuple[torch.Tensor, list[dict[str, str]]]:
    """A packed split as uint8 (N, 3, S, S) and its rows (row, tile_id, image_id, grey).

    The array is memory-mapped (no copy, pages read on use); ``colour_only`` keeps the rows with
    grey != "1" (a copy of those tiles). Missing or unreadable files stop with one line and the fix."""
    npy, csv_path = packed_paths(packed_dir, split)
    if not npy.is_file() or not csv_path.is_file():
        raise AstroganError(f"{npy}: packed tiles missing; run `dvc repro pack`")
    try:
        arr = np.load(npy, mmap_mode="r")
    except (OSError, ValueError) as e:
        raise AstroganError(f"{npy}: unreadable packed tiles ({e}); rerun `dvc repro pack`") from None
    rows = read_csv(csv_path)
    if arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[1] != 3 or len(arr) != len(rows):
        raise AstroganError(f"{npy}: {arr.dtype} {arr.shape} does not match {csv_path} ({len(rows)} rows) "
                            "as uint8 (N, 3, S, S); rerun `dvc repro pack`")
    if colour_only:
        keep = [i for i, r in enumerate(rows) if r.get("grey", "0") != "1"]
        if len(keep) < len(rows):
            return torch.from_numpy(np.ascontiguousarray(arr[keep])), [rows[i] for i in keep]
    with warnings.catch_warnings():  # a read-only memmap: torch warns that writes would be unsafe
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(arr), rows


def check_crop(tiles: torch.Tensor, crop: int, source: str, crop_params: str) -> torch.Tensor:
    """Stop with one line when the tiles are smaller than the training crop."""
    if len(tiles) and min(tiles.shape[-2:]) < crop:
        raise AstroganError(f"{source}: tiles are {tiles.shape[-1]} px, smaller than the {crop} px crop; "
                            f"lower {crop_params} or raise tile.size")
    return tiles


class Feeder:
    """Random-crop batches of a uint8 image set, delivered on the training device.

    - A tensor set on CUDA that fits (``on_device`` True, or ``auto`` and under 40 % of the free GPU
      memory) is moved to the GPU whole: a batch is one gather there (mode ``device``).
    - Else it stays in pinned host memory: each batch is gathered on the CPU and copied on a side
      stream while the previous step runs, one batch ahead (mode ``stream``).
    - On the CPU, and for lists of different-size photos, batches are gathered where the data is.
    Either way the crops follow :func:`plan_crops` on the given generator, so a run sees the same
    batches in every mode. :meth:`generator_state` is the generator's state as of the next batch to
    deliver (what a resume checkpoint must store, as a prefetched plan is already drawn)."""

    def __init__(self, images: torch.Tensor | list[torch.Tensor], device: torch.device,
                 on_device: bool | str = "auto", siblings: Sequence[Sequence[int]] | None = None):
        self.device, self.pending, self.siblings = device, None, siblings
        if isinstance(images, list) or device.type != "cuda":
            self.mode = "device"
            self.images = [im.to(device) for im in images] if isinstance(images, list) else images.to(device)
            return
        fits = on_device is True or (on_device == "auto" and
                                     images.numel() < 0.4 * torch.cuda.mem_get_info(device)[0])
        if fits:
            self.mode, self.images = "device", images.to(device)
        else:
            self.mode, self.images = "stream", images.pin_memory()
            self.stream = torch.cuda.Stream(device)

    def _launch(self, batch: int, crop: int, gen: torch.Generator) -> tuple:
        state = gen.get_state()
        plan = plan_crops(self.images, batch, crop, gen)
        k = 3 if self.siblings is None else 6
        host = torch.empty(batch, k, crop, crop, dtype=torch.uint8, pin_memory=True)
        gather_crops(self.images, plan, host[:, :3])
        if self.siblings is not None:
            gather_crops(self.images, sibling_plan(self.images, plan, self.siblings, gen), host[:, 3:])
        with torch.cuda.stream(self.stream):
            dev = host.to(self.device, non_blocking=True)
            event = torch.cuda.Event()
            event.record(self.stream)
        return dev, event, host, state

    def next(self, batch: int, crop: int, gen: torch.Generator) -> torch.Tensor:
        """The next batch: uint8 (batch, 3, crop, crop) on the device; (batch, 6, crop, crop) with
        ``siblings``: each crop followed by another crop of the same image (:func:`sibling_plan`)."""
        if self.mode == "device":
            plan = plan_crops(self.images, batch, crop, gen)
            crops = gather_crops(self.images, plan)
            if self.siblings is None:
                return crops
            other = sibling_plan(self.images, plan, self.siblings, gen)
            return torch.cat([crops, gather_crops(self.images, other)], dim=1)
        if self.pending is None:
            self.pending = self._launch(batch, crop, gen)
        dev, event, _host, _state = self.pending
        torch.cuda.current_stream(self.device).wait_event(event)
        dev.record_stream(torch.cuda.current_stream(self.device))
        self.pending = self._launch(batch, crop, gen)  # the next copy overlaps this step
        return dev

    def generator_state(self, gen: torch.Generator) -> torch.Tensor:
        return self.pending[3] if self.pending is not None else gen.get_state()


def load_colour_tiles(packed_dir: Path, crop: int, split: str = "train"
                      ) -> tuple[torch.Tensor, dict, list[str]]:
    """A split's colour tiles from the packed arrays as uint8 (N, 3, S, S), facts about them for the
    card, and each tile's image id. An empty train split is an error; an empty val split gives an
    empty tensor."""
    tiles, rows = read_packed(packed_dir, split, colour_only=True)
    _, csv_path = packed_paths(packed_dir, split)
    all_rows = len(read_csv(csv_path))
    if not rows and split != "train":
        return torch.empty(0, 3, crop, crop, dtype=torch.uint8), {"split": str(csv_path), "tiles": 0}, []
    if not rows:
        raise AstroganError(f"{csv_path}: none of its {all_rows} train tiles has colour (all grey == 1); "
                            "add colour images (scrape.sources) and rerun `dvc repro split pack`")
    check_crop(tiles, crop, str(csv_path), "finetune.crop")
    facts = {"split": str(csv_path), "split_sha256": sha256_file(csv_path), "tiles": len(rows),
             "grey_skipped": all_rows - len(rows), "pixels_sha256": images_sha256(tiles)}
    return tiles, facts, [r["image_id"] for r in rows]


# --- the split: by a hash of the image id (stage ``split``; the release re-evaluation too) ---------

def image_hash(image_id: str) -> float:
    """sha256 of the id as a number in [0, 1)."""
    return int(hashlib.sha256(image_id.encode("utf-8")).hexdigest(), 16) / 2**256


def choose_test_images(image_ids: set[str], test_fraction: float) -> set[str]:
    """The image ids assigned to test (never empty for >= 2 images)."""
    if len(image_ids) < 2:
        raise AstroganError(f"split: {len(image_ids)} image(s) in tiles.csv, need at least 2 for a "
                            "train/test split; add images (scrape.sources) or lower tile.min_content")
    test = {i for i in image_ids if image_hash(i) < test_fraction}
    if not test:
        test = {min(image_ids, key=image_hash)}
    if test == image_ids:
        raise AstroganError(f"split: split.test_fraction {test_fraction} puts every image in test; lower it")
    return test
