"""Stage ``sr_pretrain``: pretrain a 4x super-resolution generator with a pixel loss (SRResNet-style).

    python -m pipeline.stages.sr_pretrain <name>      # <name> in params.yaml superres.zoo

Trains on random HR crops of every train tile (the packed train split, ``<paths.packed>/train.npy``),
LR made on the fly by ``pipeline.superres.degrade``, with ``superres.pixel_loss`` (l1 or mse) only. Writes
``<paths.superres_models>/<name>/pretrained.pt`` + ``pretrained.card.json`` and the loss curve
``<paths.metrics>/plots/sr_pretrain/<name>.csv``. Killed runs resume on rerun; ``train.nproc`` > 1
runs it under torchrun.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pipeline import distributed, superres
from pipeline.errors import run_main
from pipeline.models import generator_class
from pipeline.params import load_params, params_hash, seed_everything
from pipeline.paths import checkpoint, plot, resume_file
from pipeline.train import Objective, Run, TrainConfig, finish, fit, pixel_loss_fn

PHASE = "sr_pretrain"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("name", help="SR model name in params.yaml superres.zoo")
    name = ap.parse_args(argv).name
    params = load_params()
    paths, entry = params["paths"], superres.zoo_entry(params, name)
    cfg = TrainConfig.from_params(params, PHASE)
    deg = superres.Degradation.from_params(params)
    pixel = str(params["superres"]["pixel_loss"])
    pixel_loss_fn(pixel)  # an unknown kind fails here, before any data is loaded
    distributed.relaunch(cfg.nproc, __spec__.name, [name])
    tiles, data = superres.load_train_tiles(Path(paths["packed"]), cfg.crop, deg.scale)

    seed_everything(cfg.seed)
    arch, arch_kwargs = entry["generator"], superres.generator_kwargs(params, name)
    G = generator_class(arch)(**arch_kwargs)
    read = superres.phase_params(params, name, PHASE)
    run = Run(name=name, phase=PHASE, G=G, D=None, images=tiles,
              run_hash=params_hash({"params": read, "data": data}),
              resume_path=resume_file(paths, "superres", name, PHASE), csv_path=plot(paths, PHASE, name),
              make_pair=lambda rgb, gen: superres.make_pair(rgb, deg, gen),
              objective=Objective(conditional=False, pixel_loss=pixel))
    result = fit(run, cfg)
    out = checkpoint(paths, "superres", name, "pretrained")
    card = finish(run, cfg, result, out_path=out, arch=arch, arch_kwargs=arch_kwargs,
                  card={**superres.card(deg), "pixel_loss": pixel, "params": read, "data": data})
    if result["main"]:
        print(f"{out}: {card['steps_run']} steps in {card['timing']['wall_time_s']:.1f} s; "
              f"final {card['final_losses']}")


if __name__ == "__main__":
    run_main(main)
