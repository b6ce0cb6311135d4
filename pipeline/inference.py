"""Trained generators applied to whole images: model choice, colorize, upscale.

``open_model`` turns ``--model`` or nothing into a loaded generator and a line saying which and why.
Nothing: the task's default release weights (``weights/registry.json``, sha256 checked; see
weights.py), else the best model of the last ``dvc repro`` by ``metrics/`` (lowest ``ab_l1`` for
colorization, highest ``psnr_rgb`` for super-resolution). ``best``: the latter, always.
``release:NAME``, a NAME the registry lists, or a ``.safetensors`` file: release weights. Otherwise a
model folder (its ``finetuned.pt``, else ``pretrained.pt``) or a ``.pt`` checkpoint.

``colorize_image``: the input's CIE L at full resolution; the generator predicts a*b on overlapping
tiles (tiling.py); the blended a*b, scaled by ``strength``, joins the full-resolution L and goes
back to RGB. ``upscale_image``: tiles of the low-resolution RGB image, outputs blended on the 4x grid.
Both stream finished strips into a preallocated uint8/uint16 array: memory stays bounded.
"""

from __future__ import annotations

import functools
import json
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pipeline import color, hints, paths, weights
from pipeline.colorizer import takes_hints
from pipeline.decode import quantize
from pipeline.errors import AstroganError
from pipeline.fsio import sha256_file
from pipeline.models import load_generator
from pipeline.params import CHECKOUT_PARAMS, load_params
from pipeline.report import BEST, model_entries
from pipeline.tiling import count_tiles, tiled

PREFERRED = paths.PHASES[::-1]  # a model folder's finetuned.pt before its pretrained.pt


class ModelError(Exception):
    """No usable model: the message says what to do."""


@dataclass
class Loaded:
    """A generator ready to run, and what the outputs' metadata says about it."""

    model: torch.nn.Module
    path: Path
    task: str
    color_space: str
    scale: int
    multiple: int
    meta: dict
    release: str | None = None  # the release name, for release weights
    sha256: str | None = None   # the file's sha256 when already verified against the registry

    def record(self) -> dict:
        found = {"model": str(self.path), "model_sha256": self.sha256 or sha256_file(self.path),
                 "model_arch": self.meta.get("arch"), "model_step": self.meta.get("step")}
        return {**found, "release": self.release} if self.release else found


def project_paths(project: Path) -> dict[str, Path]:
    """The ``paths`` of the project's params.yaml, under ``project`` (``pipeline.paths`` builds its files
    from them). A folder without params.yaml (models and metrics copied out) has this checkout's."""
    own = project / "params.yaml"
    try:
        found = load_params(own if own.is_file() else CHECKOUT_PARAMS)["paths"]
    except AstroganError:  # no checkout beside the package either
        raise ModelError(f"{own}: not found; --project names the project root (with params.yaml)") from None
    return {key: project / value for key, value in found.items()}


def checkpoint_in(path: Path) -> Path:
    """A ``.pt`` file as is; a model folder -> its ``finetuned.pt``, else ``pretrained.pt``."""
    if path.is_dir():
        for phase in PREFERRED:
            if (path / f"{phase}.pt").is_file():
                return path / f"{phase}.pt"
        raise ModelError(f"{path}: no finetuned.pt or pretrained.pt in this folder")
    if not path.is_file():
        raise ModelError(f"{path}: no such model file or folder")
    return path


def default_model(project: Path, task: str) -> tuple[Path, str]:
    """The best checkpoint by the metrics of the last run, and a sentence saying why it was chosen."""
    found = project_paths(project)
    metrics_file = paths.metrics_file(found, task)
    hint = "run `make repro` first (or pass --model)"
    if not metrics_file.is_file():
        raise ModelError(f"no trained {task} model yet: {metrics_file} is missing; {hint}")
    metrics = json.loads(metrics_file.read_text())
    key, better, base, ref = BEST[task]
    scored = [(m[phase][key], name, phase) for name, m in model_entries(metrics, task).items()
              for phase in PREFERRED if isinstance(m.get(phase), dict) and m[phase].get(key) is not None
              and paths.checkpoint(found, task, name, phase).is_file()]
    if not scored:
        raise ModelError(f"no scored {task} checkpoint in {paths.models_dir(found, task)} (metrics: "
                         f"{metrics_file}); {hint}")
    value, name, phase = better(scored)
    why = f"{'lowest' if better is min else 'highest'} {key} {value:g} in {metrics_file}"
    baseline = metrics.get(base, {}).get(key)
    if baseline is not None:
        beats = value < baseline if better is min else value > baseline
        why += f"; {'beats' if beats else 'does NOT beat'} {ref} at {baseline:g}"
        at = metrics[name].get(f"{phase}_val_strength")
        if task == "colorize" and isinstance(at, dict) and at.get(key) is not None:
            verdict = "beats" if at[key] < baseline else "does NOT beat"
            why += f"; at its val-chosen strength {at.get('strength'):g}: {key} {at[key]:g}, {verdict} it"
    return paths.checkpoint(found, task, name, phase), why


def _multiple(model: torch.nn.Module) -> int:
    """The input size the network needs H and W to divide by: its ``input_multiple`` or module STRIDE."""
    import sys

    module = sys.modules[type(model).__module__]
    found = getattr(model, "input_multiple", None) or getattr(module, "STRIDE", 1)
    return int(found)


def _loaded(model: torch.nn.Module, meta: dict, path: Path, task: str, shown: str, **kw) -> Loaded:
    """Check the generator does ``task`` (a colorizer for colorize, a 4x model for upscale)."""
    card = meta.get("card") or {}
    found = card.get("task", "superres" if "scale" in card else "colorize")
    if found != task:
        verb = "upscale" if found == "superres" else "colorize"
        raise ModelError(f"{shown}: a {found} model; use `astrogan {verb}` with it")
    return Loaded(model, path, task, meta["color_space"], int(card.get("scale", 1)), _multiple(model), meta,
                  **kw)


def load_model(path: Path, task: str, device: torch.device) -> Loaded:
    """Load a project checkpoint (``.pt``) for ``task``."""
    try:
        model, meta = load_generator(path, device)
    except AstroganError as e:  # load_generator speaks to stage scripts; here it is one file's error
        raise ModelError(str(e)) from None
    return _loaded(model, meta, path, task, str(path))


def load_release_model(spec: str, task: str, device: torch.device) -> tuple[Loaded, str]:
    """Load release weights (a name, ``release:NAME`` or a ``.safetensors`` file) for ``task``, and the
    line that says which, and whether its sha256 was checked against the registry."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # an unregistered file: the returned line says so
            model, meta = weights.load_release(spec, device)
    except AstroganError as e:  # ReleaseError and unknown architectures: one line each
        raise ModelError(str(e)) from None
    name, path = meta["release"], meta["file"]
    lm = _loaded(model, meta, path, task, f"release {name}", release=name, sha256=meta["sha256"])
    checked = "sha256 verified" if meta["sha256"] else "no registry entry: sha256 NOT checked"
    return lm, f"release {name} ({weights.display(path)}, {checked})"


def release_spec(spec: str) -> bool:
    """Whether ``--model``/``info`` ``spec`` names release weights rather than a checkpoint: ``release:NAME``,
    a ``.safetensors`` file, or a name the registry lists that is no existing file or folder."""
    if spec.startswith(weights.PREFIX) or spec.endswith(weights.SUFFIX):
        return True
    return not Path(spec).exists() and spec in weights.registry()["models"]


def open_model(spec: str | None, project: Path, task: str, device: torch.device) -> tuple[Loaded, str]:
    """The generator ``--model`` names, or the default (module docstring), and a line saying which and
    why. Raises ModelError with one line that says what to do."""
    try:
        if spec is None:  # an empty or missing registry: the project's best, as before releases
            name = weights.default_release(task)
            spec = weights.PREFIX + name if name else "best"
        is_release = spec != "best" and release_spec(spec)
    except AstroganError as e:  # a broken registry is loud, not skipped
        raise ModelError(str(e)) from None
    if is_release:
        return load_release_model(spec, task, device)
    if spec == "best":
        path, why = default_model(project, task)
        return load_model(path, task, device), f"{path} ({why})"
    if not Path(spec).exists():
        where = weights.display(weights.weights_dir() / weights.REGISTRY)
        raise ModelError(f"{spec}: no such model file or folder, nor a release in {where} "
                         "(`astrogan info` lists them)")
    path = checkpoint_in(Path(spec))
    return load_model(path, task, device), f"{path} (--model)"


def default_strength(lm: Loaded, project: Path) -> tuple[float, str]:
    """``colorize --strength``'s default: the a*b scale chosen on the val tiles for this model (the
    release's registry entry, or ``<name>.<phase>_val_strength`` in the project's metrics), else 1."""
    release = (lm.meta.get("card") or {}).get("release") or {}
    if release.get("strength") is not None:
        return float(release["strength"]), "chosen on the val tiles of its release run"
    try:
        metrics_file = paths.metrics_file(project_paths(project), "colorize")
    except ModelError:  # no params.yaml to find the metrics by
        metrics_file = None
    if lm.path.suffix == ".pt" and metrics_file is not None and metrics_file.is_file():
        entry = json.loads(metrics_file.read_text()).get(lm.path.parent.name)
        chosen = entry.get(f"{lm.path.stem}_val_strength") if isinstance(entry, dict) else None
        if isinstance(chosen, dict) and "strength" in chosen:
            return float(chosen["strength"]), f"chosen on the val tiles, {metrics_file}"
    return 1.0, "no strength chosen on val for this model: as predicted"


def lightness(data: np.ndarray) -> np.ndarray:
    """Grey (H, W) (read as R=G=B) or RGB (H, W, 3) in [0, 1] -> CIE L in [0, 100], float32 (H, W).

    The same conversion the training used (color.rgb_to_lab), in row blocks to bound memory.
    """
    L = np.empty(data.shape[:2], np.float32)
    for y in range(0, len(L), 512):
        block = torch.from_numpy(np.ascontiguousarray(data[y:y + 512]))
        rgb = block[None].expand(3, -1, -1) if block.ndim == 2 else block.permute(2, 0, 1)
        L[y:y + 512] = color.rgb_to_lab(rgb)[0].numpy()
    return L


def colorize_image(lm: Loaded, data: np.ndarray, *, tile: int = 256, overlap: int = 32, batch: int = 4,
                   strength: float = 1.0, bit_depth: int = 8, device: torch.device | str = "cpu",
                   progress: Callable[[int], object] | None = None, points: list[hints.Hint] | None = None,
                   reference: torch.Tensor | None = None, hints_source: str = "hints") -> np.ndarray:
    """Grey (H, W) or RGB (H, W, 3) in [0, 1] -> RGB (H, W, 3) uint8/uint16.

    Only the input's L is used (a colour input is made grey); a*b are predicted per tile, L kept full-res.
    A guided model also takes colour ``points`` (``hints.Hint``, image px; one outside the image is a
    ``hints.HintError`` naming ``hints_source``) and a ``reference`` palette (``hints.reference_palette``).
    Each tile gets the points inside it as its hint map, the nearest point of the whole image as its
    propagation, and the palette, so tiles agree across their seams.
    """
    L = lightness(data)
    guided = takes_hints(lm.model)
    guide = make_guide(L.shape, L, points=points, reference=reference, source=hints_source)
    if guide is not None and not guide.empty and not guided:
        raise ModelError(f"{lm.path.name}: this model takes no colour hints; use a guided model (generator "
                         "guided_unet; `astrogan info` lists the releases)")
    image = L[None]
    if guided and guide is not None and not guide.empty:  # tiles carry their image coordinates
        rows, cols = np.indices(L.shape, dtype=np.float32)
        image = np.stack([L, rows, cols])

    def net(x: torch.Tensor) -> torch.Tensor:
        if guided:
            origin = [(int(t[1, 0, 0]), int(t[2, 0, 0])) if len(t) == 3 else (0, 0) for t in x]
            x = torch.stack([hints.encode(t[0], guide if len(t) == 3 else None, o) for t, o in zip(x, origin,
                                                                                                   strict=True)])
        else:
            x = color.normalize_l(x)
        out = lm.model(x).float()
        if lm.color_space == "rgb":  # keep only its chroma: L comes from the input
            out = color.normalize_ab(color.rgb_to_lab((out + 1) / 2)[:, 1:])
        return out

    out = np.empty((*L.shape, 3), np.uint8 if bit_depth == 8 else np.uint16)
    for y0, ab in tiled(image, net, tile=tile, overlap=overlap, multiple=lm.multiple, batch=batch,
                        device=device, progress=progress):
        rows = slice(y0, y0 + ab.shape[1])
        lab = torch.cat([torch.from_numpy(L[rows])[None], color.denormalize_ab(ab) * strength])
        out[rows] = quantize(color.lab_to_rgb(lab).permute(1, 2, 0).numpy(), bit_depth)
    return out


def make_guide(L_shape: tuple[int, int], L: np.ndarray | None = None, *,
               points: list[hints.Hint] | None = None, reference: torch.Tensor | None = None,
               source: str = "hints") -> hints.Guide | None:
    """The guide of one image (None without points or reference): user ``points`` placed on its L*
    (H, W) (a point outside the image is a ``hints.HintError`` naming it) and a reference palette."""
    if not points and reference is None:
        return None
    h, w = L_shape
    if points:
        guide = hints.hint_points(points, L, source)
    else:
        guide = hints.Guide(torch.zeros(0, 5), torch.zeros(0), None, hints.unit_of(h, w))
    guide.palette = reference
    return guide


def upscale_image(lm: Loaded, data: np.ndarray, *, tile: int = 64, overlap: int = 8, batch: int = 4,
                  bit_depth: int = 8, device: torch.device | str = "cpu",
                  progress: Callable[[int], object] | None = None) -> np.ndarray:
    """Grey (H, W) or RGB (H, W, 3) in [0, 1] -> (sH, sW[, 3]) uint8/uint16; grey in, grey out."""
    grey = data.ndim == 2
    rgb = np.repeat(data[None], 3, 0) if grey else np.ascontiguousarray(data.transpose(2, 0, 1))
    h, w = data.shape[:2]
    s = lm.scale
    out = np.empty((h * s, w * s) if grey else (h * s, w * s, 3), np.uint8 if bit_depth == 8 else np.uint16)

    def net(x: torch.Tensor) -> torch.Tensor:
        return lm.model(x).float().clamp(0, 1)

    for y0, strip in tiled(rgb, net, tile=tile, overlap=overlap, multiple=lm.multiple, scale=s, batch=batch,
                           device=device, progress=progress):
        rows = slice(y0, y0 + strip.shape[1])
        out[rows] = quantize((strip.mean(0) if grey else strip.permute(1, 2, 0)).numpy(), bit_depth)
    return out


@functools.lru_cache(maxsize=1)
def eval_tile() -> int | None:
    """Params ``tile.size`` of this checkout: the test tiles the evaluate stage (and a release's test
    split) scores colorizers on. None in an install without a checkout."""
    try:
        return int(load_params(CHECKOUT_PARAMS)["tile"]["size"])
    except AstroganError:
        return None


def default_tiling(lm: Loaded) -> tuple[int, int]:
    """The default (tile, overlap) in input px of ``astrogan colorize`` / ``upscale`` and ``serve``.

    Colorizers: tiles of the training crop from the model's card, or of params ``tile.size`` (the
    tile size the evaluate stage scores at, so what the metrics measured) when that is larger.
    Overlap: half a tile, which hides that a colorizer paints by position in its tile; a guided model
    needs only a quarter, because its colour is the hints' and the reference's, which do not depend
    on the tile (their propagation is computed over the whole image) plus a small learned
    correction: on five esahubble images of 1 MP, overlap 64 instead of 128 at 256 px tiles moved
    a*b* by 0.00-0.05 CIE units on average, with and without hints, and it halves the work.
    Upscalers: 64 px tiles, overlap 8."""
    if lm.task != "colorize":
        return 64, 8
    sizes = [int(v) for v in ((lm.meta.get("card") or {}).get("crop"), eval_tile()) if v]
    if not sizes:
        raise ModelError(f"{lm.path}: no training crop in its card and no params.yaml beside the "
                         "package; give --tile")
    tile = max(sizes)
    return tile, tile // 4 if takes_hints(lm.model) else tile // 2


def tiles_for(lm: Loaded, shape: tuple[int, ...], tile: int, overlap: int) -> int:
    """How many tiles an image of ``shape`` takes (the progress bar's total)."""
    return count_tiles(shape[0], shape[1], tile=tile, overlap=overlap, multiple=lm.multiple)
