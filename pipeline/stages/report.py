"""Stage ``report``: render ``metrics/report.md`` from the metrics JSON of both tasks, and the
headline numbers DVC tracks, ``metrics/summary.json`` (``pipeline.report.summary``).

The paper's Tables 1-5 (colorization, from ``colorization.json``) and 6-7 (super-resolution, from
``superres.json``), each beside the paper's published values and with every number's definition.
Pure rendering (``pipeline.report``): no timestamps, so an unchanged input gives the same bytes.
"""

from __future__ import annotations

import json
from pathlib import Path

from pipeline.errors import AstroganError, run_main
from pipeline.fsio import write_json_atomic, write_text_atomic
from pipeline.params import load_params
from pipeline.paths import figure, metrics_file
from pipeline.report import render_report, render_superres_report, save_guided_plot, summary


def read_metrics(path: Path) -> dict:
    if not path.is_file():
        raise AstroganError(f"{path}: missing; run `dvc repro` (the evaluate stages write it)")
    return json.loads(path.read_text())


def main() -> None:
    params = load_params()
    paths = params["paths"]
    out = Path(paths["metrics"])
    colorization = read_metrics(metrics_file(paths, "colorize"))
    superres = read_metrics(metrics_file(paths, "superres"))
    text = render_report(colorization, params, sections=[render_superres_report(superres, params)])
    write_text_atomic(out / "report.md", text)
    dedup, tile = read_metrics(out / "data.dedup.json"), read_metrics(out / "data.tile.json")
    data = {"images": dedup.get("images_kept"), "tiles": tile.get("tiles_kept"),
            "test_tiles": colorization.get("test_tiles")}
    write_json_atomic(out / "summary.json", summary(colorization, superres, data))
    if colorization.get("guided"):
        save_guided_plot(figure(paths, "guided.png"), colorization["guided"])
    print(f"report: wrote {out / 'report.md'}, {out / 'summary.json'}")


if __name__ == "__main__":
    run_main(main)
