"""The astrogan command: colorize or 4x-upscale your own images with the trained models; show a card.

    astrogan colorize IN... -o OUT [--model NAME | best | models/colorize/<name> | FILE.safetensors]
    astrogan upscale  IN... -o OUT [--model NAME | best | models/superres/<name> | FILE.pt]
    astrogan info [MODEL]
    astrogan serve [FOLDER] [--port 8000]   (the browser page: click to place colour hints)

Without ``--model`` the task's default release weights shipped in ``weights/`` are used (their
sha256 checked against ``weights/registry.json``); with no release there, the best model of the
project's last ``dvc repro`` by ``metrics/``, which ``--model best`` always picks. ``info`` alone lists
the release weights; ``info MODEL`` shows a release's card or a checkpoint's.

IN: files or folders (``--recursive`` for subfolders). OUT: a folder (outputs keep the inputs' names
and subfolders, as PNG or ``--format tiff``), or with one input file, an output file name. A file
that cannot be processed gets one line on stderr naming it and why; the others are still done, and
the exit status is the number of failed files (at most 100).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

from pipeline import __version__, hints, paths, weights
from pipeline import inference as inf
from pipeline.colorizer import takes_hints
from pipeline.decode import STRETCHES, InputError, is_image_name, read_picture
from pipeline.errors import AstroganError
from pipeline.fsio import sha256_file
from pipeline.hints import HintError
from pipeline.imageio import write_picture
from pipeline.inference import ModelError
from pipeline.params import resolve_device

OUT_SUFFIXES = {".png": ".png", ".tif": ".tif", ".tiff": ".tiff"}
EXIT_NO_MODEL = 101
EPILOG = ("Exit status: 0 when every file was written, else the number of files that failed (at most "
          f"100); {EXIT_NO_MODEL} when no model could be loaded; 2 for a usage error.")


def _positive(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text} is not a positive integer")
    return value


def _image_args(p: argparse.ArgumentParser, task: str, tile_help: str, overlap_help: str) -> None:
    p.add_argument("inputs", nargs="+", metavar="IN", help="image files or folders")
    p.add_argument("-o", "--output", required=True, metavar="OUT",
                   help="output folder (created), or an output .png/.tif file when IN is one file")
    p.add_argument("--model", help="release weights (NAME or release:NAME from weights/registry.json, or a "
                   ".safetensors file), 'best' (the best model in the project's metrics/), a model folder "
                   "(its finetuned.pt, else pretrained.pt) or a .pt file; default: the default "
                   f"{task} release in weights/, else 'best'")
    p.add_argument("--project", default=".", metavar="DIR",
                   help="project root holding params.yaml, models/ and metrics/, for --model best "
                   "(default: .)")
    p.add_argument("--recursive", "-r", action="store_true", help="also process images in subfolders")
    p.add_argument("--format", choices=("png", "tiff"), default="png", help="output format (default png)")
    p.add_argument("--bit-depth", choices=("auto", "8", "16"), default="auto",
                   help="8 or 16 bits per sample; auto: 16 for 16-bit/float/FITS inputs, else 8")
    g = p.add_argument_group("tiling (any image size, bounded memory)")
    g.add_argument("--tile", type=_positive, default=None,
                   help=f"tile size in input px (default: {tile_help})")
    g.add_argument("--overlap", type=int, default=None,
                   help=f"tile overlap in input px (default: {overlap_help})")
    g.add_argument("--batch", type=_positive, default=4, help="tiles per forward pass (default 4)")
    g.add_argument("--device", default="auto", help="auto (GPU when available) | cpu | cuda | cuda:N")
    g = p.add_argument_group("input decoding")
    g.add_argument("--stretch", choices=STRETCHES, default=None,
                   help="display stretch; default: asinh for FITS and float data, none (the dtype's "
                   "full range) for 8/16-bit PNG/JPEG/TIFF")
    g.add_argument("--percentiles", nargs=2, type=float, default=(0.5, 99.5), metavar=("LO", "HI"),
                   help="stretch interval as percentiles of the finite pixels (default 0.5 99.5)")
    g.add_argument("--hdu", type=int, default=None,
                   help="FITS HDU index (default: SCI, else the first image)")
    g.add_argument("--max-pixels", type=_positive, default=100_000_000,
                   help="refuse inputs with more pixels (decompression-bomb guard; default 100000000)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bars or per-file lines")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="astrogan", description=__doc__.split("\n\n")[0], epilog=EPILOG)
    parser.add_argument("--version", action="version", version=f"astrogan {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{colorize,upscale,info,serve}")
    c = sub.add_parser("colorize", help="colour grey images (colour inputs are made grey first)",
                       description="Predict a*b colour for grey images; L stays at full resolution.",
                       epilog=EPILOG)
    _image_args(c, "colorize", "the model's training crop from its card or 256, the larger",
                "tile/2; tile/4 for a guided model")
    c.add_argument("--strength", type=float, default=None,
                   help="scale the predicted a*b: a saturation control; 0 = grey, 1 = as predicted, >1 more "
                   "saturated (default: the strength chosen on the val tiles for this model, else 1)")
    g = c.add_argument_group("guided colour (a guided model: the default release)")
    g.add_argument("--hints", metavar="HINTS.csv",
                   help="colour points: a CSV with header x,y,color (0-based px from the top-left, #rrggbb "
                   "sRGB) and an optional radius column (patch half-size, px; default 1)")
    g.add_argument("--reference", metavar="REF",
                   help="a colour image (any format IN takes) whose palette guides the colours")
    u = sub.add_parser("upscale", help="4x super-resolution", epilog=EPILOG,
                       description="Upscale images 4x; grey inputs give grey outputs.")
    _image_args(u, "superres", "64, the training LR patch size", "tile/8")
    i = sub.add_parser("info", help="list the release weights, or show a model's card, checksum and metrics",
                       description="No MODEL: list the release weights in weights/registry.json. MODEL: "
                       "show its card. Exit status 101 when a registered release file is missing or fails "
                       "its sha256 check.")
    i.add_argument("model", metavar="MODEL", nargs="?",
                   help="a release (NAME, release:NAME or a .safetensors file), a model folder or a .pt file")
    i.add_argument("--project", default=".", metavar="DIR", help="project root (for metrics/; default .)")
    i.add_argument("--json", action="store_true", help="print one JSON object")
    _serve_args(sub)
    return parser


def _serve_args(sub) -> None:
    s = sub.add_parser("serve", help="colorize and upscale in the browser; click to place colour hints",
                       description="Start a local web page: open an image (upload, or pick it from FOLDER), "
                       "click to place colour hints, compare, download the full-resolution result.")
    s.add_argument("folder", metavar="FOLDER", nargs="?",
                   help="a folder whose images the page may open (nothing outside it); default: uploads only")
    s.add_argument("--port", type=int, default=8000, help="TCP port (default 8000; 0 picks a free one)")
    s.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1, this machine only; others get a warning)")
    s.add_argument("--colorize-model", metavar="MODEL",
                   help="the colorizer, as colorize --model (default: the default colorize release)")
    s.add_argument("--upscale-model", metavar="MODEL",
                   help="the 4x model, as upscale --model (default: the default superres release)")
    s.add_argument("--project", default=".", metavar="DIR", help="project root, for 'best' (default: .)")
    s.add_argument("--device", default="auto", help="auto (GPU when available) | cpu | cuda | cuda:N")
    s.add_argument("--max-pixels", type=_positive, default=100_000_000,
                   help="refuse images with more pixels (default 100000000)")
    s.add_argument("--max-upload-mb", type=_positive, default=200, help="upload size cap, MB (default 200)")
    s.add_argument("--max-sessions", type=_positive, default=32,
                   help="images kept open at once (one per tab; the least recently used is closed; "
                   "default 32)")
    s.add_argument("--memory-mb", type=_positive, default=2048,
                   help="decoded pixels kept open at once, MB (default 2048)")
    s.add_argument("--preview-side", type=_positive, default=512,
                   help="long side of the preview, px (default 512; the download is full resolution)")
    s.add_argument("--workers", type=_positive, default=1,
                   help="previews computed at once (default 1; more use more memory)")
    s.add_argument("--batch", type=_positive, default=4, help="tiles per forward pass (default 4)")


def expand_inputs(inputs: list[str], recursive: bool, skip: Path) -> list[tuple[Path, Path | None]]:
    """(file, its path relative to the IN folder it came from, or None for a file named directly)."""
    found: list[tuple[Path, Path | None]] = []
    for name in inputs:
        p = Path(name)
        if not p.is_dir():
            found.append((p, None))
            continue
        # Outputs written into a subfolder of IN are not inputs of a later run's --recursive walk.
        inside = skip != p.resolve() and p.resolve() in skip.parents
        files = sorted(f for f in (p.rglob("*") if recursive else p.iterdir())
                       if f.is_file() and is_image_name(f) and not (inside and skip in f.resolve().parents))
        if not files:
            found.append((p, None))  # reported as a failure: a folder with nothing to do
        found.extend((f, f.relative_to(p)) for f in files)
    return found


def _out_name(rel: Path, suffix: str) -> Path:
    stem = rel.name[: -len(".gz")] if rel.name.lower().endswith(".gz") else rel.name
    return rel.with_name(Path(stem).stem + suffix)


def plan_outputs(items: list[tuple[Path, Path | None]], out: Path, fmt: str) -> list[tuple[Path, Path]]:
    """Output path per input. Names are kept; a clash (a.jpg, a.png) keeps the input suffix too."""
    single_file = len(items) == 1 and items[0][1] is None and out.suffix.lower() in OUT_SUFFIXES
    if single_file:
        return [(items[0][0], out)]
    suffix = ".png" if fmt == "png" else ".tif"
    plans, taken = [], set()
    for path, rel in items:
        rel = rel if rel is not None else Path(path.name)
        target = out / _out_name(rel, suffix)
        if target in taken:
            target = out / rel.with_name(rel.name + suffix)
        taken.add(target)
        plans.append((path, target))
    return plans


class Inputs:
    """The set of input files, to refuse any output that is one of them (by path or by inode)."""

    def __init__(self, paths: list[Path]):
        self.paths = {p.resolve() for p in paths}
        self.inodes = {(st.st_dev, st.st_ino) for st in (_stat(p) for p in paths) if st is not None}

    def __contains__(self, path: Path) -> bool:
        st = _stat(path)
        return path.resolve() in self.paths or (st is not None and (st.st_dev, st.st_ino) in self.inodes)


def _stat(path: Path):
    try:
        return path.stat()
    except OSError:
        return None


def _bits(choice: str, source_bits: int) -> int:
    return int(choice) if choice != "auto" else (8 if source_bits == 8 else 16)


def _tiling(args: argparse.Namespace, lm: inf.Loaded) -> str | None:
    """Fill in --tile/--overlap defaults; return an error message if they do not fit together."""
    if args.tile is None or args.overlap is None:
        try:
            tile, overlap = inf.default_tiling(lm)
        except ModelError as e:
            return str(e)
        if args.tile is None:
            args.tile = tile
        if args.overlap is None:  # the default's share of the tile
            args.overlap = args.tile * overlap // tile
    if not 0 <= args.overlap <= args.tile // 2:
        return f"--overlap {args.overlap} must be between 0 and tile/2 ({args.tile // 2})"
    return None


def run_images(args: argparse.Namespace) -> int:
    task = "colorize" if args.command == "colorize" else "superres"
    device = resolve_device(args.device)
    try:
        lm, chosen = inf.open_model(args.model, Path(args.project), task, device)
    except ModelError as e:
        print(f"astrogan: {e}", file=sys.stderr)
        return EXIT_NO_MODEL
    if (problem := _tiling(args, lm)) is not None:
        print(f"astrogan: {problem}", file=sys.stderr)
        return 2
    say = (lambda *a: None) if args.quiet else (lambda *a: print(*a, file=sys.stderr))
    say(f"model: {chosen}; device {device}; tiles {args.tile} px, overlap {args.overlap}")
    if task == "colorize":
        try:
            guidance = _guidance(args, lm)
        except (HintError, InputError) as e:
            for line in getattr(e, "lines", [str(e)]):
                print(f"astrogan: {line}", file=sys.stderr)
            return 2
        if args.strength is None:
            args.strength, why = ((1.0, "colour hints given: as predicted") if guidance
                                  else inf.default_strength(lm, Path(args.project)))
            say(f"strength {args.strength:g} ({why})")
        if args.strength < 0:
            print(f"astrogan: --strength {args.strength:g}: use a value >= 0 (0 = grey)", file=sys.stderr)
            return 2
    record = lm.record()
    items = expand_inputs(args.inputs, args.recursive, Path(args.output).resolve())
    out_suffix = Path(args.output).suffix.lower()
    if out_suffix not in OUT_SUFFIXES and is_image_name(Path(args.output)):
        print(f"astrogan: -o {args.output}: outputs are PNG or TIFF; name a .png, .tif or .tiff file, "
              "or a folder", file=sys.stderr)
        return 2
    if out_suffix in OUT_SUFFIXES and (len(items) > 1 or items[0][1] is not None):
        print(f"astrogan: -o {args.output} names one file but IN holds {len(items)} images; "
              "give an output folder", file=sys.stderr)
        return min(len(items), 100)
    plans = plan_outputs(items, Path(args.output), args.format)
    sources = Inputs([p for p, _ in items if p.is_file()])
    failed = 0
    for src, dst in plans:
        try:
            if src.is_dir():
                raise InputError("no images (PNG, JPEG, TIFF, FITS) in this folder"
                                 + ("" if args.recursive else "; --recursive for subfolders"))
            if dst in sources:
                raise InputError(f"output {dst} is an input file; refusing to overwrite it")
            _one(args, lm, record, src, dst, device, say)
        except (InputError, OSError, ValueError, RuntimeError, MemoryError) as e:
            why = str(e) if isinstance(e, InputError) else f"{type(e).__name__}: {e}"
            print(f"astrogan: {src}: {why.splitlines()[0] if why else type(e).__name__}", file=sys.stderr)
            failed += 1
    say(f"{len(plans) - failed} written, {failed} failed")
    return min(failed, 100)


def _guidance(args: argparse.Namespace, lm: inf.Loaded) -> dict:
    """Read ``--hints`` and ``--reference`` once (a ``HintError`` or ``InputError`` names the file);
    stores them on ``args`` and returns their record for the outputs' metadata."""
    args.points, args.reference_palette, args.guidance, record = None, None, {}, {}
    if args.hints is None and args.reference is None:
        return record
    if not takes_hints(lm.model):
        raise HintError([f"{lm.path.name}: this model takes no colour hints; drop --hints/--reference or "
                         "use a guided model (`astrogan info` lists the releases)"])
    if args.hints is not None:
        args.points = hints.read_hints(args.hints)
        record["hints"] = {"file": args.hints, "points": [[t.x, t.y, hints.hex_colour(t.rgb), t.radius]
                                                          for t in args.points]}
    if args.reference is not None:
        try:
            ref = read_picture(args.reference, stretch_kind=args.stretch, percentiles=tuple(args.percentiles),
                               hdu=args.hdu, max_pixels=args.max_pixels)
        except InputError as e:
            raise HintError([f"{args.reference}: {e}"]) from None
        args.reference_palette = hints.reference_palette(ref.data, str(args.reference))
        record["reference"] = {"file": args.reference, "sha256": sha256_file(Path(args.reference))}
    args.guidance = record
    return record


def _one(args, lm, record: dict, src: Path, dst: Path, device: torch.device, say) -> None:
    """Read, run, write one image (raises on failure)."""
    t0 = time.perf_counter()
    if dst.suffix.lower() not in OUT_SUFFIXES:
        raise InputError(f"output {dst}: use a .png, .tif or .tiff name, or a folder")
    pic = read_picture(src, stretch_kind=args.stretch, percentiles=tuple(args.percentiles), hdu=args.hdu,
                       max_pixels=args.max_pixels)
    if pic.meta.get("notice"):
        say(f"{src}: {pic.meta['notice']}")
    data = pic.data
    meta = {"software": f"astrogan {__version__}", "command": args.command, "source": str(src),
            **record, "input": pic.meta, "tile": args.tile, "overlap": args.overlap}
    bits = _bits(args.bit_depth, pic.bit_depth)
    bar = tqdm(total=inf.tiles_for(lm, data.shape, args.tile, args.overlap), desc=src.name, unit="tile",
               disable=True if args.quiet else None, leave=False)
    with bar:
        if args.command == "colorize":
            if not pic.grey:
                say(f"{src}: colour input: converted to grey (CIE L) before colorizing")
            meta["strength"] = args.strength
            meta.update(args.guidance)
            try:
                pixels = inf.colorize_image(lm, data, tile=args.tile, overlap=args.overlap, batch=args.batch,
                                            strength=args.strength, bit_depth=bits, device=device,
                                            progress=bar.update, points=args.points,
                                            reference=args.reference_palette, hints_source=str(args.hints))
            except HintError as e:  # hints outside this image: one line each, then the file fails
                for line in e.lines[:-1]:
                    print(f"astrogan: {src}: {line}", file=sys.stderr)
                raise InputError(e.lines[-1]) from None
        else:
            pixels = inf.upscale_image(lm, data, tile=args.tile, overlap=args.overlap, batch=args.batch,
                                       bit_depth=bits, device=device, progress=bar.update)
    write_picture(dst, pixels, meta)
    h, w = pixels.shape[:2]
    say(f"{src} -> {dst} ({w}x{h}, {bits}-bit, {time.perf_counter() - t0:.1f} s)")


def run_info(args: argparse.Namespace) -> int:
    try:
        if args.model is None:
            return _list_releases(args)
        if inf.release_spec(args.model):
            return _release_card(args)
    except AstroganError as e:  # weights.ReleaseError: a broken registry, an unknown name
        print(f"astrogan: {e}", file=sys.stderr)
        return EXIT_NO_MODEL
    try:
        path = inf.checkpoint_in(Path(args.model))
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except ModelError as e:
        print(f"astrogan: {e}", file=sys.stderr)
        return EXIT_NO_MODEL
    except Exception as e:
        print(f"astrogan: {args.model}: not a readable checkpoint ({type(e).__name__})", file=sys.stderr)
        return EXIT_NO_MODEL
    card = blob.get("card") or {}
    task = card.get("task", "superres" if "scale" in card else "colorize")
    name, phase = card.get("name", path.parent.name), path.stem
    try:
        metrics_file = paths.metrics_file(inf.project_paths(Path(args.project)), task)
    except ModelError as e:
        print(f"astrogan: {e}", file=sys.stderr)
        return EXIT_NO_MODEL
    metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else {}
    info = {"model": str(path), "sha256": sha256_file(path), "task": task, "arch": blob.get("arch"),
            "arch_kwargs": blob.get("arch_kwargs"), "color_space": blob.get("color_space"),
            "step": blob.get("step"), "card": card,
            "metrics": (metrics.get(name) or {}).get(phase), "metrics_file": str(metrics_file),
            "baseline": metrics.get(inf.BEST[task].baseline)}
    if args.json:
        print(json.dumps(info, indent=2, default=str))
        return 0
    print(f"model:    {path}\nsha256:   {info['sha256']}\ntask:     {task}\narch:     {info['arch']} "
          f"{json.dumps(info['arch_kwargs'])}\ncolour:   {info['color_space']}\nstep:     {info['step']}")
    print("card:\n" + json.dumps(card, indent=2, default=str))
    if info["metrics"] is None:
        print(f"metrics:  none for {name}/{phase} in {metrics_file}")
    else:
        print(f"metrics ({metrics_file}, {name}/{phase}):\n" + json.dumps(info["metrics"], indent=2))
    return 0


def _headline(entry: dict) -> str:
    """A release's few key figures, one short line (``astrogan info NAME`` shows them all)."""
    metrics = entry.get("metrics") or {}
    run, default = metrics.get("release_run_test") or {}, metrics.get("default_test") or {}
    parts = []
    if entry.get("task") == "superres":
        for label, m in (("release-run test", run), ("default test", default)):
            if m.get("psnr_y") is not None and m.get("bicubic_psnr_y") is not None:
                gain = m["psnr_y"] - m["bicubic_psnr_y"]
                parts.append(f"{label}: PSNR-Y {m['psnr_y']:.2f} dB ({gain:+.2f} over bicubic)")
        return "; ".join(parts)
    for label, m in (("release-run test", run), ("default test", default)):
        ratio = m.get("ab_l1_vs_grey_at_strength", m.get("ab_l1_vs_grey"))
        if ratio is not None:
            parts.append(f"{label}: a*b* L1 {ratio:.3f}x grey")
    guided = run.get("guided") or {}
    if ten := guided.get("points", {}).get("10"):
        parts.append(f"10 hints {ten['model_vs_grey']:.3f}x")
    if reference := guided.get("reference"):
        parts.append(f"reference {reference['model_vs_grey']:.3f}x")
    return "; ".join(parts)


def _list_releases(args: argparse.Namespace) -> int:
    """``astrogan info`` alone: the release weights, each file checked against its sha256."""
    folder = weights.weights_dir()
    models = weights.registry(folder)["models"]
    rows = {name: {**e, "check": weights.check(folder / str(e.get("file")), e) or "ok"}
            for name, e in models.items()}
    status = EXIT_NO_MODEL if any(e["check"] != "ok" for e in rows.values()) else 0
    if args.json:
        print(json.dumps({"weights_dir": str(folder), "models": rows}, indent=2, default=str))
        return status
    if not rows:
        print(f"no release weights in {weights.display(folder)}/ (no {weights.REGISTRY} entries): "
              "colorize and upscale use the best model in the project's metrics/")
        return 0
    total = sum(int(e.get("bytes") or 0) for e in rows.values())
    print(f"release weights in {weights.display(folder)}/: {len(rows)}, {total:,} of "
          f"{weights.MAX_TOTAL_BYTES:,} bytes")
    for name, e in rows.items():
        state = "ok" if e["check"] == "ok" else "MISSING" if "file missing" in e["check"] else "BAD FILE"
        print(f"  {name:<30} {e.get('task', '?'):<9} {'default' if e.get('default') else '':<7} "
              f"{int(e.get('bytes') or 0):>10,} B  sha256 {str(e.get('sha256'))[:12]}  {state}")
        if headline := _headline(e):
            print(f"    {headline}")
    return status


def _release_card(args: argparse.Namespace) -> int:
    """``astrogan info NAME``: a release's registry entry (or a lone file's header), its file checked."""
    card = weights.describe(args.model)
    if args.json:
        print(json.dumps(card, indent=2, default=str))
    else:
        data = card.get("data") or {}
        default = f" (the default {card['task']} model)" if card.get("default") else ""
        checked = "the file matches" if card["check"] == "ok" else card["check"]
        lines = [("release", f"{card['release']}{default}"),
                 ("file", f"{weights.display(Path(card['path']))} ({card.get('bytes', '?')} bytes)"),
                 ("sha256", f"{card.get('sha256', '?')} ({checked})"),
                 ("task", card["task"] + (f", {card['scale']}x" if card.get("scale") else "")),
                 ("arch", f"{card['arch']} {json.dumps(card['arch_kwargs'])}"),
                 ("colour", card["color_space"]),
                 ("trained", f"{card.get('steps', '?')} steps on {card.get('device', '?')}"),
                 ("data", f"{data.get('source', '?')}, {data.get('images', '?')} images, manifest sha256 "
                          f"{data.get('manifest_sha256', '?')}"),
                 ("credit", data.get("credit", "?")), ("licence", data.get("licence", "?")),
                 ("command", card.get("command", "?")), ("reproducible", card.get("reproducible", "?"))]
        print("\n".join(f"{key + ':':<13} {value}" for key, value in lines))
        print("metrics:\n" + json.dumps(card.get("metrics", {}), indent=2))
        print("params:\n" + json.dumps(card.get("params", {}), indent=2, default=str))
    return EXIT_NO_MODEL if card["registered"] and card["check"] != "ok" else 0


def main(argv: list[str] | None = None) -> int:
    """Run the command; returns the exit status (the console script passes it to sys.exit). Output
    piped into a reader that stops early (``astrogan info | head``) ends the command quietly."""
    try:
        return _main(argv)
    except BrokenPipeError:
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return 1


def _main(argv: list[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "info":
        return run_info(args)
    if args.command == "serve":
        from pipeline import serve  # aiohttp only when serving

        return serve.run(args)
    lo, hi = args.percentiles
    if not 0 <= lo < hi <= 100:
        parser.error(f"--percentiles {lo:g} {hi:g}: need 0 <= LO < HI <= 100")
    return run_images(args)
