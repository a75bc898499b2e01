"""``python -m benchmarks``: jaxinv against jax.grad, jax.checkpoint and a
hand-fused reversible backward pass, over a depth sweep.

Writes ``results.md`` (table and targets), ``results.json`` and, with
matplotlib installed, ``memory.png`` and ``time_ratio.png`` to ``--out``
(default ``benchmarks/results/<backend>``, the committed results; a smoke run's
default is ``benchmarks/results/smoke``, not committed). ``--smoke`` is a
seconds-long run on tiny networks (the test suite runs it); ``--update-readme`` puts a full
run's summary in README.md. Exits 1 if a target is missed in a full run.

Example::

    python -m benchmarks                  # the full sweep, ~25 min on 2 CPU cores
    python -m benchmarks --smoke --out /tmp/bench
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

import jax
from tqdm import tqdm

from benchmarks.report import markdown, plot, summary, targets, update_readme
from benchmarks.sweep import SWEEPS, run_sweep, total_steps


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="a seconds-long run on tiny networks")
    parser.add_argument("--out", type=pathlib.Path, default=None, help="output directory")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per method (median)")
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    parser.add_argument("--update-readme", action="store_true",
                        help="put this run's summary in README.md (full runs only)")
    args = parser.parse_args(argv)
    if args.update_readme and args.smoke:
        parser.error("--update-readme needs a full run")

    sweep = "smoke" if args.smoke else "full"
    configs = SWEEPS[sweep]
    out = args.out or pathlib.Path(__file__).parent / "results" / ("smoke" if args.smoke else jax.default_backend())
    out.mkdir(parents=True, exist_ok=True)
    repeats = args.repeats or (2 if args.smoke else 15)
    with tqdm(total=total_steps(configs), desc=f"{sweep} benchmark", unit="depth", file=sys.stderr) as bar:
        def step(label: str) -> None:
            bar.set_postfix_str(label, refresh=False)
            bar.update()
        records = run_sweep(configs, repeats=repeats, time_budget_s=1.0 if args.smoke else 10.0, progress=step)

    checked = [] if args.smoke else targets(records)
    command = "python -m benchmarks" + (" --smoke" if args.smoke else "")
    (out / "results.md").write_text(markdown(records, checked, command))
    (out / "results.json").write_text(json.dumps(records, indent=1))
    written = [out / "results.md", out / "results.json"]
    if not args.no_plots:
        try:
            written += plot(records, out)
        except ImportError:
            print("matplotlib is not installed: no plots (pip install 'jaxinv[bench]')", file=sys.stderr)
    if args.update_readme:
        readme = pathlib.Path(__file__).resolve().parents[1] / "README.md"
        update_readme(readme, summary(records, checked))
        written.append(readme)
    for t in checked:
        print(f"{'ok  ' if t.holds else 'MISS' if t.holds is False else '--  '} {t.name}: "
              f"{'—' if t.value is None else f'{t.value:.3f}'} (limit {t.limit})")
    print("wrote " + ", ".join(str(p) for p in written))
    return 1 if any(t.holds is False for t in checked) else 0


if __name__ == "__main__":
    sys.exit(main())
