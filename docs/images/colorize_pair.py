"""Make docs/images/colorize_before.png and colorize_after.png: 30 Doradus (heic1206a, a test-split
image, never trained on) coloured by the default run's best colorizer (`--model best`, after
`make repro`) at its default strength, and the grey it sees (`--strength 0`), each downscaled to
432 px wide for the README. Run from the project root: `.venv/bin/python docs/images/colorize_pair.py`."""

import subprocess
import sys
import tempfile
from pathlib import Path

from PIL import Image

SOURCE = "pipeline/sources/vendored/heic1206a.jpg"


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        for name, extra in (("before", ["--strength", "0"]), ("after", [])):
            out = Path(tmp) / f"{name}.png"
            cmd = ["astrogan", "colorize", SOURCE, "-o", str(out), "--model", "best", *extra]
            done = subprocess.run(cmd, capture_output=True, text=True)
            sys.stderr.write(done.stderr)
            if done.returncode:
                raise SystemExit(f"{' '.join(cmd)} failed ({done.returncode}); run `make repro` first")
            im = Image.open(out).convert("RGB")
            im.resize((432, round(im.height * 432 / im.width)), Image.Resampling.LANCZOS).save(
                f"docs/images/colorize_{name}.png", optimize=True)


if __name__ == "__main__":
    main()
