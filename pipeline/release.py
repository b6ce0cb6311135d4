"""Release weights: re-evaluation on our test tiles and the export command.

    python -m pipeline.release export superres models/superres/edsr/pretrained.pt edsr_x4_esahubble \\
        --run-metrics metrics/superres.json --run-model edsr --command "..." --default
    python -m pipeline.release evaluate edsr_x4_esahubble      # re-evaluate a release, print JSON
    python -m pipeline.release strength resnet18_lab_guided_esahubble run/data/packed
    python -m pipeline.release reference-head resnet18_lab_guided_esahubble run/data/packed --epochs 80

"Our test tiles" (``default_test``) are the default run's test tiles, rebuilt from the repository
alone: the vendored ESA/Hubble images that ``split`` sends to test (by the hash of their id), cut
into 256 px tiles with the ``tile`` stage's content filter, exactly what ``make repro`` evaluates
on (41 tiles of 7 images). A release trained on the esahubble-381 folder never sees them: the
folder's images carry the same ids, so the same hash keeps them in its test split too.
SR metrics: PSNR/SSIM on Y and RGB, 4 px border, of the release and of bicubic, for the LR made by
the training degradation (antialiased bicubic 1/4). Colorization: a*b L1/L2, RGB PSNR and
colourfulness of the release and of the grey baseline (a*b = 0), and the truth's colourfulness.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from pipeline import colorizer, guided_eval, superres, weights
from pipeline.data import choose_test_images, load_rgb, read_packed
from pipeline.errors import run_main
from pipeline.metrics import colorization_tile_metrics, colourfulness, mean_over_tiles
from pipeline.params import CHECKOUT_PARAMS, load_params
from pipeline.sources.embedded import VENDORED
from pipeline.tileset import TileConfig, scored_tiles

EXTRA_IDS = ("skimage-hubble_deep_field",)          # the embedded source's other image


def default_test_tiles() -> tuple[torch.Tensor, list[str]]:
    """The default run's test tiles as uint8 (N, 3, 256, 256) and their tile ids, from the repo."""
    records = [json.loads(line) for line in (VENDORED / "manifest.jsonl").read_text().splitlines() if line]
    params = load_params(CHECKOUT_PARAMS)  # the repository's defaults: what `make repro` cuts
    cfg, test_fraction = TileConfig.from_params(params), float(params["split"]["test_fraction"])
    test = choose_test_images({r["id"] for r in records} | set(EXTRA_IDS), test_fraction)
    tiles, ids = [], []
    for rec in sorted(records, key=lambda r: r["id"]):
        if rec["id"] not in test:
            continue
        for y, x, tile, score in scored_tiles(load_rgb(VENDORED / rec["file"]), cfg):
            if score >= cfg.min_content:
                tiles.append(tile.transpose(2, 0, 1))
                ids.append(f"{rec['id']}_{y}_{x}")
    return torch.from_numpy(np.stack(tiles)), ids


def _round(d: dict) -> dict:
    return {k: round(float(v), 4) for k, v in d.items()}


@torch.no_grad()
def evaluate_superres(model: torch.nn.Module, tiles: torch.Tensor, scale: int = 4, batch: int = 8) -> dict:
    deg = superres.Degradation(scale=scale)
    per = {"model": [], "bicubic": []}
    for i in range(0, len(tiles), batch):
        hr = tiles[i:i + batch].float().div(255.0)
        lr = superres.degrade(hr, deg)
        per["model"].append(superres.sr_tile_metrics(superres.upscale(model, lr), hr, scale))
        per["bicubic"].append(superres.sr_tile_metrics(superres.bicubic(lr, scale), hr, scale))
    m, b = mean_over_tiles(per["model"]), mean_over_tiles(per["bicubic"])
    keys = ("psnr_y", "psnr_rgb", "ssim_y", "ssim_rgb")
    return _round({**{k: m[k] for k in keys}, **{f"bicubic_{k}": b[k] for k in keys},
                   "gain_psnr_y": m["psnr_y"] - b["psnr_y"], "gain_psnr_rgb": m["psnr_rgb"] - b["psnr_rgb"],
                   "tiles": len(tiles)})


@torch.no_grad()
def evaluate_colorize(model: torch.nn.Module, color_space: str, tiles: torch.Tensor, batch: int = 8,
                      strength: float = 1.0) -> dict:
    """a*b L1/L2, RGB PSNR and colourfulness of the release (and of grey) on ``tiles``; with a
    ``strength`` other than 1, also the release's at that a*b scale (``<key>_at_strength``)."""
    per = {"model": [], "grey": [], "scaled": []}
    truth = []
    for i in range(0, len(tiles), batch):
        rgb = tiles[i:i + batch].float().div(255.0)
        out = colorizer.colorize_batch(model, rgb, color_space)
        per["model"].append(colorization_tile_metrics(out, rgb))
        per["grey"].append(colorization_tile_metrics(colorizer.grey_baseline(rgb), rgb))
        if strength != 1.0:
            per["scaled"].append(colorization_tile_metrics(colorizer.scale_ab(out, rgb, strength), rgb))
        truth.append(colourfulness(rgb * 255.0))
    m, g = mean_over_tiles(per["model"]), mean_over_tiles(per["grey"])
    keys = ("ab_l1", "ab_l2", "psnr", "colourfulness")
    at = {}
    if strength != 1.0:
        s = mean_over_tiles(per["scaled"])
        at = {"strength": strength, **{f"{k}_at_strength": s[k] for k in keys},
              "ab_l1_vs_grey_at_strength": s["ab_l1"] / g["ab_l1"]}
    return _round({**{k: m[k] for k in keys}, **{f"grey_{k}": g[k] for k in keys if k != "colourfulness"},
                   "truth_colourfulness": torch.cat(truth).double().mean(),
                   "ab_l1_vs_grey": m["ab_l1"] / g["ab_l1"], "tiles": len(tiles), **at})


@torch.no_grad()
def choose_release_strength(model: torch.nn.Module, color_space: str, val: torch.Tensor, rows: list[dict],
                            e: dict, strengths: tuple[float, ...] | None = None) -> tuple[float, dict]:
    """The a*b scale with the lowest a*b L1 on evenly spread val tiles (uint8; ``rows``: their split
    rows) among those that do no harm on faint images at a confidence over their images, exactly as
    the evaluate stage chooses it for the project's models, with ``e`` the repository's params
    ``evaluate`` section (``strengths`` unless given, ``val_max_tiles``, ``no_harm_faint``,
    ``no_harm_confidence``); and each strength's val a*b L1."""
    strengths = tuple(strengths or (float(v) for v in e["strengths"]))
    val, images = colorizer.spread_val(val, rows, int(e.get("val_max_tiles", 256)))
    faint, confidence = float(e.get("no_harm_faint", 0.0)), float(e.get("no_harm_confidence", 0.0))
    return colorizer.choose_strength(lambda rgb: colorizer.colorize_batch(model, rgb, color_space),
                                     val, strengths, 8, torch.device("cpu"), faint, images, confidence)


def evaluate(name: str) -> dict:
    """A release's metrics on ``default_test`` (what the registry stores under that key)."""
    model, meta = weights.load_release(name)
    tiles, _ = default_test_tiles()
    if meta["card"].get("task") == "superres":
        return evaluate_superres(model, tiles, int(meta["card"].get("scale", 4)))
    strength = float((meta["card"].get("release") or {}).get("strength", 1.0))
    return evaluate_colorize(model, meta["color_space"], tiles, strength=strength)


def set_strength(name: str, packed: Path, strengths: tuple[float, ...] | None = None) -> dict:
    """Choose colorize release ``name``'s default a*b strength on the val split of its release run
    (``packed``: that run's pack stage output), score it on that run's test split and on
    ``default_test``, and record all of it in the registry entry (the weights file is unchanged).
    A guided release's strength is that of its automatic path (no hints); its guided scores on the
    run's test split (``pipeline.guided_eval``) go beside them."""
    model, meta = weights.load_release(name)
    if meta["card"].get("task") != "colorize":
        raise weights.ReleaseError(f"release {name}: a strength is for colorize releases")
    space = meta["color_space"]
    val, val_rows = read_packed(packed, "val", colour_only=True)
    test, rows = read_packed(packed, "test", colour_only=True)
    if not len(val) or not len(test):
        raise weights.ReleaseError(f"{packed}: no colour val or test tiles to choose and score a strength on")
    e = load_params(CHECKOUT_PARAMS)["evaluate"]
    strength, per = choose_release_strength(model, space, val, val_rows, e, strengths)
    run = evaluate_colorize(model, space, test, strength=float(strength))
    run["images"] = len({r["image_id"] for r in rows})
    if colorizer.takes_hints(model):  # guided colour on the same test tiles (pipeline.guided_eval)
        run["guided"] = guided_eval.score(model, test, [r["image_id"] for r in rows],
                                          auto_strength=float(strength))
    reg = weights.registry()
    entry = reg["models"][name]
    entry["strength"] = float(strength)
    entry["strength_chosen_on"] = {"val_tiles": min(int(e.get("val_max_tiles", 256)), len(val)),
                                   "val_ab_l1_by_strength": per, "no_harm_faint": e.get("no_harm_faint"),
                                   "no_harm_confidence": e.get("no_harm_confidence")}
    entry["metrics"]["release_run_test"] = run
    entry["metrics"]["default_test"] = evaluate_colorize(model, space, default_test_tiles()[0],
                                                         strength=float(strength))  # = evaluate(name) now
    weights.write_registry(reg)
    return entry


def add_reference_head(name: str, packed: Path, epochs: int = 80, width: int = 64, seed: int = 0) -> dict:
    """Give guided colorize release ``name`` a reference head (``GuidedUNet(reference_head=width)``)
    trained alone on the train pairs of its release run (``packed``; ``pipeline.reference_head``), the
    epoch chosen on val; re-export it (the other tensors unchanged, so its automatic and hint paths
    are too) with the head's record in its card and the command appended, then re-score it on that
    run (:func:`set_strength`). A release that has a head already gets a new one."""
    from pipeline.models.guided_unet import GuidedUNet, ReferenceHead
    from pipeline.reference_head import train_head

    old, meta = weights.load_release(name)
    entry = meta["card"]["release"]
    if not isinstance(old, GuidedUNet):
        raise weights.ReleaseError(f"release {name}: a reference head is for guided colorizers (guided_unet)")
    kwargs = {**entry["arch_kwargs"], "reference_head": int(width)}
    with weights._no_random_init():
        model = GuidedUNet(**{**kwargs, "encoder_weights": None})
    torch.manual_seed(seed)
    model.reference_head = ReferenceHead(int(width), model.factor)  # seeded (the one above is uninitialised)
    state = {k: v for k, v in old.state_dict().items() if not k.startswith("reference_head.")}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or any(not k.startswith("reference_head.") for k in missing):
        raise weights.ReleaseError(f"release {name}: its tensors do not fit a guided U-Net "
                                   f"({unexpected or missing})")
    record = train_head(model, packed, epochs, seed)
    record["packed"] = str(packed)
    card = {**entry["card"], "params": entry.get("params") or {}, "data": entry["data"],
            "device": entry.get("device"), "steps_run": entry.get("steps"), "reference_head": record}
    command = entry["command"].split("; then python -m pipeline.release reference-head")[0]
    command += (f"; then python -m pipeline.release reference-head {name} <that run's data/packed> "
                f"--epochs {epochs} --width {width} --seed {seed}")
    reproducible = entry["reproducible"].split(" The reference head:")[0].rstrip(".") + "."
    reproducible += (" The reference head: trained alone afterwards on the CPU, seeded, from features "
                     "computed once; the rest of the weights are unchanged")
    extra = {"command": command, "reproducible": reproducible, "data": entry["data"],
             "default": bool(entry.get("default")), "metrics": entry.get("metrics") or {},
             **{k: entry[k] for k in ("strength", "strength_chosen_on") if k in entry}}
    blob = {"state_dict": model.state_dict(), "arch": entry["arch"], "arch_kwargs": kwargs,
            "color_space": entry["color_space"], "step": entry.get("step"), "card": card}
    folder = weights.weights_dir()
    tmp = folder / f".{name}.reference-head.pt"
    try:
        torch.save(blob, tmp)
        weights.export(tmp, name, task="colorize", extra=extra)
    finally:
        tmp.unlink(missing_ok=True)
    return set_strength(name, packed)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("export", help="write a checkpoint as a release and re-evaluate it")
    e.add_argument("task", choices=("superres", "colorize"))
    e.add_argument("checkpoint")
    e.add_argument("name")
    e.add_argument("--run-metrics", help="the release run's metrics JSON (its test split's numbers)")
    e.add_argument("--run-model", help="the model's key in --run-metrics")
    e.add_argument("--run-phase", default="pretrained")
    e.add_argument("--command", required=True, help="the command that reproduces the checkpoint")
    e.add_argument("--reproducible", required=True, help="bit-for-bit or why not")
    e.add_argument("--data", default="{}", help="JSON: source, licence, credit, manifest_sha256, images")
    e.add_argument("--default", action="store_true")
    v = sub.add_parser("evaluate", help="re-evaluate a release on the default test tiles")
    v.add_argument("name")
    st = sub.add_parser("strength", help="choose a colorize release's default strength on its run's val "
                        "split")
    st.add_argument("name")
    st.add_argument("packed", help="the release run's pack stage output (val.npy, test.npy)")
    st.add_argument("--strengths", type=float, nargs="+",
                    help="the a*b scales tried (default: params.yaml evaluate.strengths)")
    rh = sub.add_parser("reference-head", help="train a guided colorize release's reference head alone on "
                        "its run's train pairs and re-export it")
    rh.add_argument("name")
    rh.add_argument("packed", help="the release run's pack stage output (train, val and test .npy)")
    rh.add_argument("--epochs", type=int, default=80, help="the release's head: 80 (about 14 min on 2 cores)")
    rh.add_argument("--width", type=int, default=64, help="the head's hidden width")
    rh.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.cmd == "reference-head":
        entry = add_reference_head(args.name, Path(args.packed), args.epochs, args.width, args.seed)
        print(json.dumps({"reference_head": {k: v for k, v in entry["card"]["reference_head"].items()
                                             if k != "curve"}, "metrics": entry["metrics"]}, indent=2))
        return
    if args.cmd == "evaluate":
        print(json.dumps(evaluate(args.name), indent=2))
        return
    if args.cmd == "strength":
        entry = set_strength(args.name, Path(args.packed), tuple(args.strengths or ()) or None)
        print(json.dumps({k: entry[k] for k in ("strength", "strength_chosen_on", "metrics")}, indent=2))
        return
    extra = {"command": args.command, "reproducible": args.reproducible, "data": json.loads(args.data),
             "default": args.default, "metrics": {}}
    if args.run_metrics:
        run = json.loads(Path(args.run_metrics).read_text())
        base = "bicubic" if args.task == "superres" else "grey"
        keys = (("psnr_y", "psnr_rgb", "ssim_y") if args.task == "superres" else
                ("ab_l1", "ab_l2", "psnr", "colourfulness"))
        mine = run[args.run_model][args.run_phase]
        extra["metrics"]["release_run_test"] = {
            "tiles": run.get("test_tiles"), "images": run.get("test_images"),
            **{k: mine[k] for k in keys}, **{f"{base}_{k}": run[base][k] for k in keys if k in run[base]},
            **({"truth_colourfulness": run["colourfulness_truth"]} if "colourfulness_truth" in run else {})}
    weights.export(args.checkpoint, args.name, task=args.task, extra=extra)
    extra["metrics"]["default_test"] = evaluate(args.name)  # of the fp16 weights a user loads
    entry = weights.export(args.checkpoint, args.name, task=args.task, extra=extra)
    print(json.dumps({k: entry[k] for k in ("file", "sha256", "bytes", "metrics")}, indent=2))


if __name__ == "__main__":
    run_main(main)
