"""MkDocs hooks: the site's figures are made when the site is built.

Nothing drawn is committed under docs/: the plan diagram is drawn from a real
``jaxinv.explain`` (docs/_tools/figures.py), and the benchmark's plots are the
ones ``python -m benchmarks`` committed with its results, so a page can never
show a figure older than the code or the measurements it describes.
"""

from __future__ import annotations

import pathlib

from mkdocs.structure.files import File

import figures  # docs/_tools/figures.py: MkDocs (>= 1.6) imports a hook with its folder on sys.path

ROOT = pathlib.Path(__file__).resolve().parents[2]
BENCHMARK_RESULTS = ROOT / "benchmarks" / "results" / "cpu"


def on_files(files, config):
    """Add the generated figures as if they were files under docs/images/."""
    for name in ("memory.png", "time_ratio.png"):
        files.append(File.generated(config, f"images/{name}", abs_src_path=str(BENCHMARK_RESULTS / name)))
    files.append(File.generated(config, "images/coupling-plan.png", content=figures.coupling_plan_png()))
    return files
