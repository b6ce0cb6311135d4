"""Stage ``sr_finetune``: fine-tune a pretrained SR generator as a GAN (SRGAN's objective).

    python -m pipeline.stages.sr_finetune <name>      # <name> in params.yaml superres.zoo

Starts from ``<paths.superres_models>/<name>/pretrained.pt`` and trains it against an unconditional
discriminator (the zoo entry's, SRGAN's by default: it sees only HR images, real or generated):
G minimises pixel loss + ``superres.adversarial_weight`` * adversarial loss +
``superres.perceptual_weight`` * VGG19 feature MSE (dropped, with a one-line notice, when the
ImageNet VGG19 weights cannot be had). Writes ``finetuned.pt`` + ``finetuned.card.json`` beside it
and ``<paths.metrics>/plots/sr_finetune/<name>.csv``. Killed runs resume on rerun; ``train.nproc``
> 1 runs it under torchrun.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pipeline import distributed, superres
from pipeline.errors import AstroganError, run_main
from pipeline.fsio import sha256_file
from pipeline.models import discriminator_class, load_generator
from pipeline.params import load_params, params_hash, resolve_device, seed_everything
from pipeline.paths import checkpoint, plot, resume_file
from pipeline.train import Objective, Run, TrainConfig, finish, fit, pixel_loss_fn

PHASE = "sr_finetune"


def objective(params: dict, device) -> tuple[Objective, dict]:
    """SRGAN's generator objective from ``superres.*`` and the perceptual-loss record for the card."""
    s = params["superres"]
    pixel = str(s["pixel_loss"])
    pixel_loss_fn(pixel)
    vgg, record = superres.perceptual_loss(float(s["perceptual_weight"]), str(s["perceptual_layer"]))
    extras = ()
    if vgg is not None:
        vgg, w = vgg.to(device), record["used_weight"]
        extras = (("loss_g_perceptual", lambda fake, y, _x: w * vgg(fake, y)),)
    return Objective(conditional=False, pixel_loss=pixel, pixel_weight=1.0,
                     adversarial_weight=float(s["adversarial_weight"]), extras=extras), record


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("name", help="SR model name in params.yaml superres.zoo")
    name = ap.parse_args(argv).name
    params = load_params()
    paths, entry = params["paths"], superres.zoo_entry(params, name)
    cfg = TrainConfig.from_params(params, PHASE)
    deg = superres.Degradation.from_params(params)
    distributed.relaunch(cfg.nproc, __spec__.name, [name])
    tiles, data = superres.load_train_tiles(Path(paths["packed"]), cfg.crop, deg.scale)

    pretrained = checkpoint(paths, "superres", name, "pretrained")
    G, meta = load_generator(pretrained)
    want = (entry["generator"], superres.generator_kwargs(params, name))
    if (meta["arch"], meta["arch_kwargs"]) != want:
        raise AstroganError(f"{pretrained}: is {meta['arch']} {meta['arch_kwargs']} but superres.zoo.{name} "
                            f"asks for {want[0]} {want[1]}; rerun sr_pretrain")
    data["pretrained_sha256"] = sha256_file(pretrained)
    seed_everything(cfg.seed)
    d_arch, d_kwargs = entry["discriminator"], dict(entry.get("discriminator_kwargs", {}))
    D = discriminator_class(d_arch)(**d_kwargs)
    obj, perceptual = objective(params, resolve_device(cfg.device))

    read = superres.phase_params(params, name, PHASE)
    run = Run(name=name, phase=PHASE, G=G, D=D, images=tiles,
              run_hash=params_hash({"params": read, "data": data, "perceptual": perceptual["used_weight"]}),
              resume_path=resume_file(paths, "superres", name, PHASE), csv_path=plot(paths, PHASE, name),
              make_pair=lambda rgb, gen: superres.make_pair(rgb, deg, gen), objective=obj)
    result = fit(run, cfg)
    out = checkpoint(paths, "superres", name, "finetuned")
    card = finish(run, cfg, result, out_path=out, arch=meta["arch"], arch_kwargs=meta["arch_kwargs"],
                  card={**superres.card(deg), "discriminator": {"arch": d_arch, "kwargs": d_kwargs},
                        "gan_loss": cfg.gan_loss, "pixel_loss": obj.pixel_loss,
                        "pixel_weight": obj.pixel_weight, "adversarial_weight": obj.adversarial_weight,
                        "perceptual_loss": perceptual,
                        "params": read, "data": data})
    if result["main"]:
        print(f"{out}: {card['steps_run']} steps in {card['timing']['wall_time_s']:.1f} s; "
              f"final {card['final_losses']}")


if __name__ == "__main__":
    run_main(main)
