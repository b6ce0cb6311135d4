"""Make docs/images/upscale_before_after.png: a test-split image (heic0414a, never trained on),
a 256 px centre crop degraded to 64 px, upscaled by `astrogan upscale` with the release weights
(the default) and with the default run's best model (`--model best`, when `make repro` has run).
Run from the project root: `.venv/bin/python docs/images/upscale_pair.py`."""

import subprocess
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw


def psnr(a: Image.Image, b: Image.Image) -> float:
    x, y = np.asarray(a, float), np.asarray(b, float)
    return float(10 * np.log10(255**2 / ((x - y) ** 2).mean()))


def main() -> None:
    src = Image.open("pipeline/sources/vendored/heic0414a.jpg").convert("RGB")
    w, h = src.size
    truth = src.crop((w // 2 - 128, h // 2 - 128, w // 2 + 128, h // 2 + 128))
    lr = truth.resize((64, 64), Image.Resampling.BICUBIC)  # PIL antialiases when it shrinks
    bic = lr.resize((256, 256), Image.Resampling.BICUBIC)
    panels = [("input 64 px (nearest)", lr.resize((256, 256), Image.Resampling.NEAREST)),
              (f"bicubic {psnr(bic, truth):.2f} dB", bic)]
    with tempfile.TemporaryDirectory() as tmp:
        lr.save(Path(tmp) / "lr.png")
        for title, extra in (("default run's best", ["--model", "best"]), ("release weights", [])):
            out = Path(tmp) / f"sr{len(panels)}.png"
            cmd = ["astrogan", "upscale", str(Path(tmp) / "lr.png"), "-o", str(out), "--quiet", *extra]
            done = subprocess.run(cmd)
            if done.returncode == 0:
                sr = Image.open(out).convert("RGB")
                panels.append((f"{title} {psnr(sr, truth):.2f} dB", sr))
    panels.append(("truth", truth))
    print("; ".join(title for title, _ in panels))
    out = Image.new("RGB", (len(panels) * 258 + 2, 256 + 24), "white")
    draw = ImageDraw.Draw(out)
    for i, (title, im) in enumerate(panels):
        out.paste(im, (2 + i * 258, 22))
        draw.text((4 + i * 258, 5), title, fill="black")
    out.save("docs/images/upscale_before_after.png", optimize=True)


if __name__ == "__main__":
    main()
