"""Release weights shipped in the repository: fp16 safetensors files and ``weights/registry.json``.

One file per model, ``weights/<name>.safetensors``: the generator's state dict, float tensors stored
as fp16 (others, such as BatchNorm's ``num_batches_tracked``, keep their dtype), no pickle anywhere.
Its header metadata names the architecture, so a lone file describes itself. The registry holds,
per model, the file's sha256 and size, how to rebuild the network, the training params, where the
data came from (credit, licence), the command that reproduces it, and its metrics::

    {"format": 1, "models": {"edsr": {
        "task": "superres", "file": "edsr.safetensors", "sha256": "...", "bytes": 3034512,
        "arch": "edsr", "arch_kwargs": {...}, "color_space": "rgb", "scale": 4, "step": 5000,
        "params": {...}, "data": {"source": ..., "manifest_sha256": ..., "images": 381,
        "licence": ..., "credit": ...}, "steps": 5000, "device": "NVIDIA H200",
        "command": "...", "reproducible": "...", "metrics": {...}, "default": true,
        "card": {...the rest of the training card: seed, crop, wall time, final losses...}}}}

``export`` writes both atomically and keeps all files together within ``MAX_TOTAL_BYTES``;
``load_release`` checks the file's sha256 against the registry before it reads the weights. The
folder is the repository's ``weights/``, or ``$ASTROGAN_WEIGHTS``.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import warnings
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

import pipeline
from pipeline.errors import AstroganError
from pipeline.fsio import atomic_path, safe_name, sha256_file, write_json_atomic
from pipeline.models import generator_class

FORMAT = 1
MAX_TOTAL_BYTES = 25_000_000  # all release files together: 25 MB (decimal, under 25 MiB), a light clone
ENV = "ASTROGAN_WEIGHTS"
REGISTRY = "registry.json"
PREFIX = "release:"
SUFFIX = ".safetensors"
FROM_CHECKPOINT = ("task", "file", "sha256", "bytes", "arch", "arch_kwargs", "color_space", "scale", "step")
REQUIRED = ("command", "reproducible")
REQUIRED_DATA = ("source", "licence", "credit")
PROMOTED = {"task", "scale", "arch", "arch_kwargs", "color_space", "params", "data", "device"}


class ReleaseError(AstroganError):
    """Release weights that cannot be used: one line that says the fix. A SystemExit, as
    ``load_generator``'s errors are, so a script stops with the message; the CLI catches it."""


def weights_dir() -> Path:
    """``$ASTROGAN_WEIGHTS``, else the repository's ``weights/`` folder (beside ``pipeline/``)."""
    env = os.environ.get(ENV)
    return Path(env) if env else Path(pipeline.__file__).resolve().parent.parent / "weights"


def _folder(given: str | os.PathLike | None) -> Path:
    return Path(given) if given is not None else weights_dir()


def display(path: Path) -> str:
    """``path`` relative to the working directory when inside it (``weights/x.safetensors``)."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _restore(folder: Path) -> str:
    return f"restore it with `git checkout -- {display(folder)}/` (or `git lfs pull`)"


def registry(weights_dir: str | os.PathLike | None = None) -> dict:
    """The registry of ``weights_dir`` (default ``weights_dir()``); an empty one if it has none."""
    path = _folder(weights_dir) / REGISTRY
    if not path.is_file():
        return {"format": FORMAT, "models": {}}
    try:
        reg = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ReleaseError(f"{display(path)}: not valid JSON ({type(e).__name__}); "
                           f"{_restore(path.parent)}") from None
    if not isinstance(reg, dict) or reg.get("format") != FORMAT or not isinstance(reg.get("models"), dict):
        raise ReleaseError(f"{display(path)}: not a format-{FORMAT} weights registry; "
                           f"{_restore(path.parent)}")
    return reg


def write_registry(reg: dict, weights_dir: str | os.PathLike | None = None) -> None:
    """Write ``reg`` as the registry of ``weights_dir`` (atomically)."""
    write_json_atomic(_folder(weights_dir) / REGISTRY, reg)


def default_release(task: str, weights_dir: str | os.PathLike | None = None) -> str | None:
    """The release marked ``"default": true`` for ``task``, else its only one, else None."""
    models = {n: e for n, e in registry(weights_dir)["models"].items() if e.get("task") == task}
    marked = sorted(n for n, e in models.items() if e.get("default"))
    if len(marked) > 1:
        where = display(_folder(weights_dir) / REGISTRY)
        raise ReleaseError(f"{where}: several default {task} models ({', '.join(marked)}); mark one")
    if marked:
        return marked[0]
    return next(iter(models)) if len(models) == 1 else None


def export(checkpoint_path: str | os.PathLike, name: str, weights_dir: str | os.PathLike | None = None, *,
           task: str, extra: dict) -> dict:
    """Write checkpoint ``checkpoint_path`` (a project ``.pt``) as release ``name``: an fp16 safetensors
    file and its registry entry (merged; other entries kept). ``extra`` gives what the checkpoint
    cannot know: ``command``, ``reproducible``, ``data`` (source, licence, credit, ...), ``metrics``,
    ``default`` (true clears the other defaults of the task), and may override params/steps/device.
    Returns the entry. Refuses (ReleaseError) past ``MAX_TOTAL_BYTES`` for all files together."""
    if name != safe_name(name) or name == "best":  # `--model best` means the project's best
        raise ReleaseError(f"release name {name!r}: use letters, digits, '.', '_' and '-', not 'best'")
    folder = _folder(weights_dir)
    try:
        blob = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ReleaseError(f"{checkpoint_path}: not a readable checkpoint ({type(e).__name__})") from None
    entry = _entry(name, blob, task, extra, checkpoint_path)
    tensors = _fp16(blob["state_dict"], checkpoint_path)
    reg = registry(folder)
    others = sum(int(e.get("bytes") or 0) for n, e in reg["models"].items() if n != name)
    with atomic_path(folder / entry["file"]) as tmp:
        save_file(tensors, str(tmp), metadata=_header(name, entry))
        size = tmp.stat().st_size
        if others + size > MAX_TOTAL_BYTES:
            raise ReleaseError(f"release {name}: {size:,} bytes would bring {display(folder)}/ to "
                               f"{others + size:,} bytes, over the {MAX_TOTAL_BYTES:,}-byte cap; "
                               "drop a release or export a smaller model")
        entry.update(sha256=sha256_file(tmp), bytes=size)
    if entry["default"]:
        for other in reg["models"].values():
            if other.get("task") == task:
                other["default"] = False
    reg["models"][name] = entry
    reg["models"] = dict(sorted(reg["models"].items()))
    write_registry(reg, folder)
    return entry


def _entry(name: str, blob: dict, task: str, extra: dict, source) -> dict:
    """The registry entry of a checkpoint (sha256 and bytes still to fill in)."""
    card = dict(blob.get("card") or {})
    found = card.get("task", "superres" if "scale" in card else "colorize")
    if found != task:
        raise ReleaseError(f"{source}: a {found} model, not {task}")
    clash = sorted(set(extra) & set(FROM_CHECKPOINT))
    data = {**(card.get("data") or {}), **(extra.get("data") or {})}
    missing = [k for k in REQUIRED if not extra.get(k)]
    missing += [f"data.{k}" for k in REQUIRED_DATA if not data.get(k)]
    if clash:
        raise ReleaseError(f"release {name}: extra may not set {', '.join(clash)}: the checkpoint says")
    if missing:
        raise ReleaseError(f"release {name}: extra lacks {', '.join(missing)}: a release says how to "
                           "reproduce it and whose data it learned from")
    scale = card.get("scale", blob["arch_kwargs"].get("scale"))
    if task == "superres" and scale is None:
        raise ReleaseError(f"{source}: its card does not say the scale factor")
    entry = {"task": task, "file": name + SUFFIX, "sha256": None, "bytes": None, "arch": blob["arch"],
             "arch_kwargs": blob["arch_kwargs"], "color_space": blob["color_space"],
             **({"scale": int(scale)} if task == "superres" else {}), "step": int(blob.get("step") or 0),
             "params": card.get("params") or {}, "data": data,
             "steps": card.get("steps_run", blob.get("step")), "device": card.get("device"),
             "command": None, "reproducible": None, "metrics": {}, "default": False}
    entry.update({k: v for k, v in extra.items() if k != "data"})
    entry["default"] = bool(entry["default"])
    entry["card"] = {k: v for k, v in card.items() if k not in PROMOTED}
    return entry


def _fp16(state: dict, source) -> dict[str, torch.Tensor]:
    """Float tensors as fp16 (refused if that overflows), the others as they are."""
    out = {}
    for key, value in state.items():
        value = value.detach().cpu()
        if value.is_floating_point():
            half = value.to(torch.float16)
            if not torch.isfinite(half).all() and torch.isfinite(value).all():
                raise ReleaseError(f"{source}: {key} has values beyond fp16's range (65504)")
            value = half
        out[key] = value.contiguous().clone()  # safetensors refuses tensors that share memory
    return out


def _header(name: str, entry: dict) -> dict[str, str]:
    """What makes a lone file self-describing (safetensors metadata is a str -> str dict)."""
    head = {"format": f"astrogan-release-{FORMAT}", "name": name, "task": entry["task"],
            "arch": entry["arch"], "arch_kwargs": json.dumps(entry["arch_kwargs"], sort_keys=True),
            "color_space": entry["color_space"], "step": str(entry["step"])}
    if "scale" in entry:
        head["scale"] = str(entry["scale"])
    if entry["card"].get("crop"):
        head["crop"] = str(entry["card"]["crop"])
    return head


def locate(name_or_path: str | os.PathLike) -> tuple[Path, str, dict | None]:
    """(file, release name, registry entry or None): a name, ``release:NAME``, or a ``.safetensors`` path
    (looked up by file name in the registry of its own folder)."""
    text = str(name_or_path)
    if text.endswith(SUFFIX) and not text.startswith(PREFIX):
        path = Path(text)
        if not path.is_file():
            raise ReleaseError(f"{text}: no such file")
        for name, entry in registry(path.parent)["models"].items():
            if entry.get("file") == path.name:
                return path, name, entry
        return path, path.name[: -len(SUFFIX)], None
    name, folder = text.removeprefix(PREFIX), weights_dir()
    models = registry(folder)["models"]
    if name not in models:
        known = f"known: {', '.join(models)}" if models else "it lists none"
        raise ReleaseError(f"no release {name!r} in {display(folder / REGISTRY)}; {known}")
    file = str(models[name].get("file", ""))
    if Path(file).name != file or not file.endswith(SUFFIX):
        raise ReleaseError(f"{display(folder / REGISTRY)}: release {name} names file {file!r}; "
                           f"{_restore(folder)}")
    return folder / file, name, models[name]


def check(path: Path, entry: dict) -> str | None:
    """None if ``path`` is there and matches the registry's sha256, else the one-line problem."""
    folder = path.parent
    if not path.is_file():
        return (f"{display(path)}: file missing, though {display(folder / REGISTRY)} lists it; "
                f"{_restore(folder)}")
    digest = sha256_file(path)
    if digest == entry.get("sha256"):
        return None
    with path.open("rb") as f:
        if f.read(100).startswith(b"version https://git-lfs"):
            return f"{display(path)}: a Git LFS pointer, not the weights; run `git lfs pull`"
    return (f"{display(path)}: sha256 {digest[:12]}… does not match the registry "
            f"({str(entry.get('sha256'))[:12]}…); the file is corrupt or was changed: {_restore(folder)}")


def describe(name_or_path: str | os.PathLike) -> dict:
    """A release's card without loading it: its registry entry (or a lone file's header metadata) with
    ``release`` (name), ``path``, ``registered`` and ``check`` ("ok" or the one-line problem)."""
    path, name, entry = locate(name_or_path)
    if entry is not None:
        problem = check(path, entry)
        return {"release": name, "path": str(path), "registered": True, "check": problem or "ok", **entry}
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
    except (SafetensorError, OSError) as e:
        raise ReleaseError(f"{display(path)}: not a readable safetensors file ({type(e).__name__})") from None
    return {"release": name, "path": str(path), "registered": False,
            "check": f"not in {display(path.parent / REGISTRY)}: no sha256 to check against",
            **_from_header(path, header), "sha256": sha256_file(path), "bytes": path.stat().st_size}


def load_release(name_or_path: str | os.PathLike, device: torch.device | str = "cpu"
                 ) -> tuple[nn.Module, dict]:
    """Rebuild release weights in eval mode, float32, after checking their sha256 against the registry.

    Returns (model, meta) with meta shaped as ``load_generator``'s (arch, arch_kwargs, color_space,
    step, card; the card with task, scale and the whole entry under ``release``), plus ``release``
    (name), ``file`` (path) and ``sha256`` (the verified hash, None for an unregistered file)."""
    path, name, entry = locate(name_or_path)
    if entry is not None and (problem := check(path, entry)) is not None:
        raise ReleaseError(problem)
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError) as e:
        raise ReleaseError(f"{display(path)}: not a readable safetensors file ({type(e).__name__}); "
                           f"{_restore(path.parent)}") from None
    verified = entry is not None
    if entry is None:
        entry = _from_header(path, header)
        warnings.warn(f"{display(path)}: not in {display(path.parent / REGISTRY)}; built from its header, "
                      "no checksum was checked", stacklevel=2)
    model = _build(entry, tensors, path).to(device).eval()
    card = {**(entry.get("card") or {}), "task": entry["task"],
            **({"scale": entry["scale"]} if "scale" in entry else {}), "release": entry}
    meta = {"arch": entry["arch"], "arch_kwargs": entry["arch_kwargs"], "color_space": entry["color_space"],
            "step": entry.get("step"), "card": card, "release": name, "file": path,
            "sha256": entry["sha256"] if verified else None}
    return model, meta


def _from_header(path: Path, header: dict[str, str]) -> dict:
    """A registry-like entry from a lone file's metadata."""
    if not {"task", "arch", "arch_kwargs", "color_space"} <= set(header):
        raise ReleaseError(f"{display(path)}: not in a registry and no astrogan metadata in its header")
    entry = {"task": header["task"], "file": path.name, "arch": header["arch"],
             "arch_kwargs": json.loads(header["arch_kwargs"]), "color_space": header["color_space"],
             "step": int(header.get("step", 0)), "card": {}}
    if "scale" in header:
        entry["scale"] = int(header["scale"])
    if "crop" in header:
        entry["card"]["crop"] = int(header["crop"])
    return entry


def _build(entry: dict, tensors: dict[str, torch.Tensor], path: Path) -> nn.Module:
    kwargs = dict(entry["arch_kwargs"])
    if "encoder_weights" in kwargs:
        kwargs["encoder_weights"] = None  # the file carries the trained weights: no download
    cls = generator_class(entry["arch"])
    with _no_random_init():  # every parameter is then replaced by the file's (strict load below)
        model = cls(**kwargs)
    state = {k: v.float() if v.is_floating_point() else v for k, v in tensors.items()}
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise ReleaseError(f"{display(path)}: its tensors do not fit {entry['arch']} {json.dumps(kwargs)} "
                           f"({str(e).splitlines()[0]})") from None
    return model


_INITS = ("uniform_", "normal_", "trunc_normal_", "constant_", "ones_", "zeros_", "eye_", "dirac_",
          "xavier_uniform_", "xavier_normal_", "kaiming_uniform_", "kaiming_normal_", "orthogonal_",
          "sparse_")
_INIT_LOCK = threading.Lock()


@contextlib.contextmanager
def _no_random_init():
    """``torch.nn.init``'s fills as no-ops while a model whose every parameter a file then replaces is
    built: its layers' random initialisation (0.24 s of the CLI's 1 MP guided colorize, a tenth of
    what follows torch's import) is skipped. The weights are loaded with ``strict=True``, so nothing
    left uninitialised can survive. (Building on the meta device instead pulls in torch's
    decompositions, 3 s of imports.)"""
    with _INIT_LOCK:
        saved = {name: getattr(nn.init, name) for name in _INITS if hasattr(nn.init, name)}
        try:
            for name in saved:
                setattr(nn.init, name, _keep)
            yield
        finally:
            for name, fn in saved.items():
                setattr(nn.init, name, fn)


def _keep(tensor: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    return tensor
