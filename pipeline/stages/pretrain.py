"""Stage ``pretrain``: L1-pretrain a colorization generator on natural photos.

    python -m pipeline.stages.pretrain <name>      # <name> in params.yaml colorize.zoo

Reads ``<paths.natural>/manifest.jsonl`` (records with ``file``, a name inside paths.natural) and
writes ``<paths.colorize_models>/<name>/pretrained.pt`` + ``pretrained.card.json`` and the loss curve
``<paths.metrics>/plots/pretrain/<name>.csv`` (step, loss_g_l1).
Killed runs resume on rerun; ``train.nproc`` > 1 runs it under torchrun.
The zoo entry names the generator, its ``generator_kwargs`` (widths, depth) and may override the
``pretrain`` section with its own ``pretrain`` keys (e.g. fewer steps for a CPU-sized run).
``pretrain.data``: natural (the photos), astro (the colour train tiles of ``<paths.packed>``, grey
input made from them) or both; ``pretrain.mono``: the fraction of samples whose grey input is one
R, G or B channel alone (a single-filter image). The entry's colour terms (classification head,
colourfulness weight: ``pipeline.colorizer.colour_objective``) apply here too. A guided entry
(generator ``guided_unet``) gets colour hints simulated from the truth at every step (its ``guide``
keys, ``pipeline.hints``), the reference being another crop of the same photo or another tile of
the same image.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from pipeline import colorizer, distributed
from pipeline.data import images_sha256, load_colour_tiles, load_rgb, siblings_of
from pipeline.decode import InputError
from pipeline.errors import AstroganError, run_main
from pipeline.fsio import MANIFEST, read_jsonl, sha256_file
from pipeline.models import generator_class, out_channels
from pipeline.params import load_params, params_hash, resolve_device, seed_everything
from pipeline.paths import checkpoint, plot, resume_file
from pipeline.train import Objective, Run, TrainConfig, finish, fit, phase_params, zoo_entry

PHASE = "pretrain"


def load_photos(natural_dir: Path, crop: int) -> tuple[list[torch.Tensor], Path]:
    """Every photo of the manifest as a uint8 tensor (3, H, W); returns (photos, manifest path)."""
    manifest = natural_dir / MANIFEST
    if not manifest.is_file():
        raise AstroganError(f"{manifest}: missing; run `dvc repro natural` first")
    records = read_jsonl(manifest)
    if not records:
        raise AstroganError(f"{manifest}: lists no photos; rerun `dvc repro natural` (see params natural.*)")
    photos = []
    for rec in tqdm(records, desc="loading photos"):
        path = natural_dir / rec["file"]
        try:
            rgb = load_rgb(path)
        except InputError as e:  # it names the file
            raise AstroganError(f"cannot read photo {e}; rerun `dvc repro natural`") from None
        if min(rgb.shape[:2]) < crop:
            raise AstroganError(f"{path}: {rgb.shape[1]}x{rgb.shape[0]} is smaller than the {crop} px crop; "
                                "lower pretrain.crop or raise natural.size")
        photos.append(torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1))))  # a writable copy
    return photos, manifest


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("name", help="colorizer name in params.yaml colorize.zoo")
    name = ap.parse_args(argv).name
    params = load_params()
    paths, entry = params["paths"], zoo_entry(params, name)
    cfg = TrainConfig.from_params(params, PHASE, entry)  # the entry's "pretrain" keys override
    distributed.relaunch(cfg.nproc, __spec__.name, [name])
    section = {**params[PHASE], **(entry.get(PHASE) or {})}
    source, mono = str(section.get("data", "natural")), float(section.get("mono", 0.0))
    if source not in ("natural", "astro", "both"):
        raise AstroganError(f"params.yaml: {PHASE}.data={source!r}; use natural, astro or both")
    images, data = [], {"source": source, "mono": mono}
    if source in ("natural", "both"):
        photos, manifest = load_photos(Path(paths["natural"]), cfg.crop)
        images += photos
        data.update(manifest=str(manifest), manifest_sha256=sha256_file(manifest), photos=len(photos))
    siblings = [[i] for i in range(len(images))]  # a photo's other crop is of itself
    if source in ("astro", "both"):  # the astronomical train tiles, colour ones: grey inputs made from them
        tiles, tile_facts, ids = load_colour_tiles(Path(paths["packed"]), cfg.crop)
        siblings += [[len(images) + j for j in group] for group in siblings_of(ids)]
        images += list(tiles.unbind(0))
        data["astro"] = tile_facts
    data["pixels_sha256"] = images_sha256(images)

    seed_everything(cfg.seed)
    weights = params["model"]["encoder_weights"]
    arch = entry["generator"]
    arch_kwargs = {"out_channels": out_channels(entry["color_space"]),
                   "in_channels": colorizer.in_channels(entry),
                   "encoder_weights": None if weights in (None, "none") else weights,
                   **(entry.get("generator_kwargs") or {})}
    G = generator_class(arch)(**arch_kwargs)
    encoder = {"requested": weights, "used": getattr(G, "encoder_weights_used", None),
               "reason": getattr(G, "encoder_weights_reason", None)}

    read = phase_params(params, name, PHASE)
    terms, colour = colorizer.colour_objective(entry, images, G, resolve_device(cfg.device), None)
    run = Run(name=name, phase=PHASE, G=G, D=None, images=images,
              run_hash=params_hash({"params": read, "data": data}),
              resume_path=resume_file(paths, "colorize", name, PHASE), csv_path=plot(paths, PHASE, name),
              meta={"encoder_weights": encoder}, objective=Objective(**terms),
              make_pair=colorizer.pair_maker(entry, mono),
              siblings=siblings if colorizer.is_guided(entry) else None)
    result = fit(run, cfg)
    out = checkpoint(paths, "colorize", name, "pretrained")
    card = finish(run, cfg, result, out_path=out, arch=arch, arch_kwargs=arch_kwargs,
                  card={"color_space": entry["color_space"],
                        "encoder_weights": result["meta"]["encoder_weights"], "params": read, "data": data,
                        **colour})
    if result["main"]:
        print(f"{out}: {card['steps_run']} steps in {card['timing']['wall_time_s']:.1f} s; "
              f"final {card['final_losses']}")


if __name__ == "__main__":
    run_main(main)
