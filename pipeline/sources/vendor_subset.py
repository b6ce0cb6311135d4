"""Make ``pipeline/sources/vendored/``: a small credited ESA/Hubble subset shipped with the code.

    python -m pipeline.sources.vendor_subset --src /path/to/esahubble-381 --out pipeline/sources/vendored

The selection is the fixed list ``SELECTION`` below (so a rerun gives the same files): 48 images
of esahubble-381 spread over science releases (heic), NASA/STScI releases (opo), Pictures of the
Week (potw) and two announcements (ann); one image per release, no two of the same object, no
annotated comparison panels or multi-panel figures (checked by eye on contact sheets). Each is
downscaled 1024x768 -> 768x576 (Lanczos) and re-encoded as JPEG quality 90 (about 6 MB in all).
Licence CC BY 4.0 (esahubble.org/copyright); credit ESA/Hubble & NASA, kept in the manifest.
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path

from PIL import Image

from pipeline.errors import AstroganError, run_main
from pipeline.fsio import (
    MANIFEST,
    read_jsonl,
    sha256_bytes,
    write_bytes_atomic,
    write_jsonl_atomic,
    write_text_atomic,
)

# Chosen by eye from contact sheets of the first image of each of the 217 releases.
SELECTION: tuple[str, ...] = (
    # ESA/Hubble science releases (16)
    "heic0101a", "heic0105a", "heic0114a", "heic0305a", "heic0307a", "heic0312a", "heic0412c",
    "heic0414a", "heic0507a", "heic0601a", "heic0609a", "heic0703a", "heic1018a", "heic1102a",
    "heic1206a", "heic1912a",
    # NASA/STScI releases mirrored by ESA/Hubble (16)
    "opo0012a", "opo0015a", "opo0118c", "opo0139a", "opo0214a", "opo0215a", "opo0225a", "opo0309a",
    "opo0320a", "opo0613a", "opo0635a", "opo0932a", "opo1022a", "opo9301a", "opo9738a", "opo9811d",
    # Pictures of the Week (14)
    "potw1003a", "potw1010a", "potw1019a", "potw1106a", "potw1124a", "potw1127a", "potw1222a",
    "potw1232a", "potw1317a", "potw1444a", "potw1606a", "potw1740a", "potw2033a", "potw2113a",
    # announcements (2)
    "ann0901a", "ann1406a",
)
DERIVED = "downscaled from the 1024x768 screensize JPEG"
CREDIT_LINE = "ESA/Hubble & NASA"


def downscale_jpeg(path: Path, size: tuple[int, int], quality: int = 90) -> bytes:
    """Lanczos-resize the image at ``path`` to ``size`` (w, h) and encode it as a JPEG."""
    with Image.open(path) as im:
        small = im.convert("RGB").resize(size, Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    small.save(buf, format="JPEG", quality=quality, optimize=True)
    return buf.getvalue()


def vendor(src: Path, out: Path, count: int, size: tuple[int, int]) -> list[dict]:
    """Write the first ``count`` images of SELECTION, their manifest and CREDITS.md; return the rows."""
    by_name = {Path(r["file"]).stem: r for r in read_jsonl(src / MANIFEST)}
    missing = [n for n in SELECTION[:count] if n not in by_name]
    if missing:
        raise AstroganError(f"{src / MANIFEST}: no record for {', '.join(missing)}; is --src esahubble-381?")
    rows = []
    for name in SELECTION[:count]:
        rec = by_name[name]
        data = downscale_jpeg(src / rec["file"], size)
        write_bytes_atomic(out / rec["file"], data)
        rows.append({"id": f"esahubble-{name}", "file": rec["file"], "source": "esahubble",
                     "url": rec["url"], "sha256": sha256_bytes(data), "width": size[0],
                     "height": size[1], "title": rec.get("title") or f"esahubble-{name}",
                     "credit": rec["credit"], "licence": rec["licence"], "kind": rec.get("kind", ""),
                     "derived": DERIVED})
    write_jsonl_atomic(out / MANIFEST, rows)
    write_text_atomic(out / "CREDITS.md", credits_md(rows))
    return rows


def credits_md(rows: list[dict]) -> str:
    lines = ["# Vendored ESA/Hubble images", "",
             "Licence: **CC BY 4.0** (https://esahubble.org/copyright/).",
             f"Credit: **{CREDIT_LINE}**; the full credit line of each image is on its page (URL below).",
             f"Each file was {DERIVED} (768x576, Lanczos, JPEG quality 90) by",
             "`python -m pipeline.sources.vendor_subset`.", "", "| id | URL |", "|---|---|"]
    lines += [f"| {r['id']} | {r['url']} |" for r in rows]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--src", type=Path, required=True, help="the esahubble-381 folder (with manifest.jsonl)")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "vendored")
    ap.add_argument("--count", type=int, default=len(SELECTION), help=f"at most {len(SELECTION)}")
    ap.add_argument("--size", default="768x576", help="WxH of the vendored images")
    a = ap.parse_args(argv)
    w, h = (int(v) for v in a.size.lower().split("x"))
    rows = vendor(a.src, a.out, min(a.count, len(SELECTION)), (w, h))
    total = sum((a.out / r["file"]).stat().st_size for r in rows)
    print(f"vendored {len(rows)} images into {a.out} ({total / 1e6:.2f} MB)")


if __name__ == "__main__":
    run_main(main)
