"""Make docs/images/guided_hints.png and docs/images/guided_reference.png with `astrogan colorize`
and the default (guided) release: a test-split image no model trained on (30 Doradus, heic1206a).

- hints: 12 colour points read off the true image (3x3 px means) on an even 4x3 grid, as a user
  who knows the colours would spread them, written to a hints CSV and drawn as rings on the grey
  input; then the command's result and the truth;
- reference: the left half of the image as the reference for its right half.

Run from the project root: `.venv/bin/python docs/images/guided_pair.py` (CPU, a few seconds).
"""

import subprocess
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

SRC = Path("pipeline/sources/vendored/heic1206a.jpg")
OUT = Path("docs/images")
SCALE = 0.5  # the panels are shown at half size


def colorize(src: Path, out: Path, *extra: str) -> Image.Image:
    subprocess.run(["astrogan", "colorize", str(src), "-o", str(out), "--quiet", *extra], check=True)
    return Image.open(out).convert("RGB")


def ab_l1(a: Image.Image, b: Image.Image) -> float:
    from skimage import color

    x, y = (color.rgb2lab(np.asarray(im, float) / 255)[..., 1:] for im in (a, b))
    return float(np.abs(x - y).mean())


def strip(panels: list[tuple[str, Image.Image]], path: Path) -> None:
    w, h = (int(v * SCALE) for v in panels[0][1].size)
    out = Image.new("RGB", (len(panels) * (w + 4), h + 22), "white")
    draw = ImageDraw.Draw(out)
    for i, (title, im) in enumerate(panels):
        out.paste(im.resize((w, h), Image.Resampling.LANCZOS), (i * (w + 4), 22))
        draw.text((i * (w + 4) + 4, 5), title, fill="black")
    out.save(path, optimize=True)
    print(f"wrote {path}: " + "; ".join(t for t, _ in panels))


def main() -> None:
    truth = Image.open(SRC).convert("RGB")
    w, h = truth.size
    grey = truth.convert("L").convert("RGB")
    points = [(int((i + 0.5) * w / 4), int((j + 0.5) * h / 3)) for j in range(3) for i in range(4)]
    pixels = np.asarray(truth)
    colours = [tuple(int(v) for v in pixels[y - 1:y + 2, x - 1:x + 2].reshape(-1, 3).mean(0))
               for x, y in points]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "hints.csv").write_text("x,y,color\n" + "".join(
            f"{x},{y},#{r:02x}{g:02x}{b:02x}\n" for (x, y), (r, g, b) in zip(points, colours, strict=True)))
        auto = colorize(SRC, tmp / "auto.png")
        hinted = colorize(SRC, tmp / "hinted.png", "--hints", str(tmp / "hints.csv"))
        marked = grey.copy()
        draw = ImageDraw.Draw(marked)
        for (x, y), c in zip(points, colours, strict=True):
            draw.ellipse((x - 11, y - 11, x + 11, y + 11), outline="white", width=3)
            draw.ellipse((x - 8, y - 8, x + 8, y + 8), fill=c)
        strip([("grey input + 12 colour points", marked),
               (f"no hints: a*b* L1 {ab_l1(auto, truth):.2f}", auto),
               (f"--hints: a*b* L1 {ab_l1(hinted, truth):.2f}", hinted),
               (f"truth (grey: {ab_l1(grey, truth):.2f})", truth)], OUT / "guided_hints.png")

        left, right = truth.crop((0, 0, w // 2, h)), truth.crop((w // 2, 0, w, h))
        left.save(tmp / "left.png")
        right.convert("L").save(tmp / "right.png")
        guided = colorize(tmp / "right.png", tmp / "right_out.png", "--reference", str(tmp / "left.png"))
        auto_r = colorize(tmp / "right.png", tmp / "right_auto.png")
        strip([("reference: the left half", left),
               (f"right half, no hints: {ab_l1(auto_r, right):.2f}", auto_r),
               (f"--reference left: {ab_l1(guided, right):.2f}", guided),
               (f"truth (grey: {ab_l1(right.convert('L').convert('RGB'), right):.2f})", right)],
              OUT / "guided_reference.png")


if __name__ == "__main__":
    main()
