"""Stage ``finetune``: fine-tune a pretrained colorizer as a pix2pix conditional GAN on astronomy tiles.

    python -m pipeline.stages.finetune <name>      # <name> in params.yaml colorize.zoo

Starts from ``<paths.colorize_models>/<name>/pretrained.pt``, trains on the colour tiles of the
packed train split (``<paths.packed>/train.npy``; grey == "1" rows carry no colour and are skipped),
and writes ``finetuned.pt`` + ``finetuned.card.json`` beside it and the loss curves
``<paths.metrics>/plots/finetune/<name>.csv``. Killed runs resume on rerun; ``train.nproc`` > 1
runs it under torchrun (DDP).

The zoo entry picks the discriminator (``discriminator``: patchgan | vgg_residual | resnet50_patch,
with ``discriminator_kwargs``), may override ``train.gan_loss`` (``gan_loss``) and the ``finetune``
section (its own ``finetune`` keys), and add colour terms (a classification head, a colourfulness
weight, the adversarial weight: ``pipeline.colorizer.colour_objective``). With
``finetune.eval_every`` > 0, the val L1 on the colour tiles of the packed val split (centre crops)
is logged to ``<paths.metrics>/plots/val/<name>.csv`` (a guided entry: with hints simulated from the
truth, each val tile its own reference),
``finetuned.pt`` holds the best of them, and ``patience`` evaluations without improvement stop early.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from pipeline import colorizer, distributed
from pipeline.data import load_colour_tiles, siblings_of
from pipeline.errors import AstroganError, run_main
from pipeline.fsio import sha256_file
from pipeline.models import discriminator_class, load_generator, out_channels
from pipeline.params import load_params, params_hash, resolve_device, seed_everything
from pipeline.paths import checkpoint, plot, resume_file
from pipeline.train import Objective, Run, TrainConfig, finish, fit, phase_params, zoo_entry

PHASE = "finetune"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("name", help="colorizer name in params.yaml colorize.zoo")
    name = ap.parse_args(argv).name
    params = load_params()
    paths, entry = params["paths"], zoo_entry(params, name)
    cfg = TrainConfig.from_params(params, PHASE, entry)
    distributed.relaunch(cfg.nproc, __spec__.name, [name])
    tiles, data, ids = load_colour_tiles(Path(paths["packed"]), cfg.crop)
    cfg = cfg.with_epochs(len(tiles))
    val, val_data, _ = (load_colour_tiles(Path(paths["packed"]), cfg.crop, "val")
                        if cfg.eval_every > 0 else (None, None, None))
    if val_data is not None:
        data["val"] = val_data
        if not len(val) and distributed.from_env().main:
            print(f"{val_data['split']}: no colour val tiles; no validation, finetuned.pt is the last step")

    pretrained = checkpoint(paths, "colorize", name, "pretrained")
    G, meta = load_generator(pretrained)
    if (meta["arch"], meta["color_space"]) != (entry["generator"], entry["color_space"]):
        raise AstroganError(f"{pretrained}: is a {meta['arch']}/{meta['color_space']} model but colorize.zoo."
                            f"{name} asks for {entry['generator']}/{entry['color_space']}; rerun pretrain")
    data["pretrained_sha256"] = sha256_file(pretrained)
    seed_everything(cfg.seed)
    d_arch = entry["discriminator"]
    d_kwargs = {"in_channels": colorizer.in_channels(entry) + out_channels(entry["color_space"]),
                **(entry.get("discriminator_kwargs") or {})}
    D = discriminator_class(d_arch)(**d_kwargs)
    d_card = {"arch": d_arch, "kwargs": d_kwargs}
    if hasattr(D, "weights_used"):
        d_card["weights"] = {"used": D.weights_used, "reason": D.weights_reason}
    if cfg.gan_loss == "wgan-gp" and any(isinstance(m, torch.nn.BatchNorm2d) for m in D.modules()):
        print(f"warning: WGAN-GP with a BatchNorm critic ({d_arch}); its per-sample gradient penalty "
              "assumes none: set discriminator_kwargs norm: instance or none")

    read = phase_params(params, name, PHASE)
    terms, colour = colorizer.colour_objective(entry, tiles, G, resolve_device(cfg.device), None)
    run = Run(name=name, phase=PHASE, G=G, D=D, images=tiles,
              objective=Objective(**terms),
              run_hash=params_hash({"params": read, "data": data}),
              resume_path=resume_file(paths, "colorize", name, PHASE), csv_path=plot(paths, PHASE, name),
              val_images=val,
              make_pair=colorizer.pair_maker(entry),
              siblings=siblings_of(ids) if colorizer.is_guided(entry) else None,
              val_csv_path=plot(paths, "val", name))
    result = fit(run, cfg)
    out = checkpoint(paths, "colorize", name, "finetuned")
    card = finish(run, cfg, result, out_path=out, arch=meta["arch"], arch_kwargs=meta["arch_kwargs"],
                  card={"color_space": entry["color_space"], "discriminator": d_card,
                        "gan_loss": cfg.gan_loss, "l1_weight": cfg.l1_weight,
                        **({"gp_weight": cfg.gp_weight} if cfg.gan_loss == "wgan-gp" else {}),
                        "encoder_weights": meta.get("card", {}).get("encoder_weights"),
                        "params": read, "data": data, **colour})
    if result["main"]:
        print(f"{out}: {card['steps_run']} steps in {card['timing']['wall_time_s']:.1f} s; "
              f"final {card['final_losses']}")


if __name__ == "__main__":
    run_main(main)
