"""The benchmark's outputs: a markdown table, the targets checked, PNG plots.

Example::

    text = markdown(records, targets(records))
    plot(records, out_dir)        # memory.png, time_ratio.png (needs matplotlib)
"""

from __future__ import annotations

import dataclasses
import pathlib
import platform
import statistics
from typing import Any

import jax

JAXINV_METHODS = ("jaxinv.grad", "jaxinv.invertible")
TARGET_NETWORK = "RevNet MLP"


@dataclasses.dataclass(frozen=True)
class Target:
    name: str
    value: float | None     # the measured ratio (None: not measured in this run)
    limit: float

    @property
    def holds(self) -> bool | None:
        return None if self.value is None else self.value <= self.limit


def _get(records, network, mode, depth, method, field):
    for r in records:
        if (r["network"], r["mode"], r["depth"], r["method"]) == (network, mode, depth, method):
            return r.get(field)
    return None


def _ratio(a, b):
    return None if a is None or b is None or b == 0 else a / b


def _build_s(records, mode, depth, method):
    """Trace + compile seconds of the RevNet MLP, or None when not measured."""
    trace = _get(records, TARGET_NETWORK, mode, depth, method, "trace_s")
    return None if trace is None else trace + _get(records, TARGET_NETWORK, mode, depth, method, "compile_s")


def _typical_build_s(records, mode, depth, method):
    """The median of every build kept (the fastest alone leans on one lucky
    build when two depths were built minutes apart), else trace + compile."""
    builds = _get(records, TARGET_NETWORK, mode, depth, method, "build_s")
    return statistics.median(builds) if builds else _build_s(records, mode, depth, method)


def _build_ratio(records, mode, depth, method, reference):
    """Build time of ``method`` / ``reference`` on the RevNet MLP: the median of
    the ratios of builds made in the same round (alternated, so each pair saw the
    same machine) when both kept every build, else the ratio of the fastest."""
    a, b = (_get(records, TARGET_NETWORK, mode, depth, m, "build_s") for m in (method, reference))
    if a and b and len(a) == len(b) > 1:
        return statistics.median(x / y for x, y in zip(a, b))
    return _ratio(_build_s(records, mode, depth, method), _build_s(records, mode, depth, reference))


def _growth(records, method, field="temp_bytes", network=TARGET_NETWORK):
    """A network's ``field`` at depth 64 minus at depth 16 (unrolled), or None."""
    hi, lo = (_get(records, network, "unrolled", d, method, field) for d in (64, 16))
    return None if hi is None or lo is None else hi - lo


PEAK_NETWORK = "RevNet MLP, batch 1024"   # activations dominate: the reversible nets' users' case


def _peak_growth_beyond_params(records, method, network):
    """(peak growth 16 -> 64 - the params' and gradients' own growth) / jax.grad's peak growth.

    Data-parallel, a device holds its gradients twice: its own partial sums
    and the all-reduced result. XLA combines every layer's all-reduce into one
    at the end of the backward pass, so all the partial sums are alive at once
    (the hand-fused backward's peak grows exactly as much)."""
    peak, params, base = (_growth(records, method, "peak_bytes", network),
                          _growth(records, method, "param_bytes", network),
                          _growth(records, "jax.grad", "peak_bytes", network))
    if None in (peak, params, base):
        return None
    copies = 3 if (_get(records, network, "unrolled", 64, method, "devices") or 1) > 1 else 2
    return _ratio(peak - copies * params, base)


def _shapes(records) -> list[str]:
    """The RevNet MLPs measured unrolled at depths 16 and 64 (the targets' network
    in other shapes; the other networks are reported, not held to its targets)."""
    names = dict.fromkeys(r["network"] for r in records if r["mode"] == "unrolled" and r["depth"] == 64
                          and r["network"].startswith(TARGET_NETWORK))
    return [n for n in names if any(r["network"] == n and r["depth"] == 16 for r in records)]


def targets(records: list[dict[str, Any]]) -> list[Target]:
    """The issue's targets, on the RevNet MLP, for each jaxinv method."""
    g = lambda mode, depth, method, field: _get(records, TARGET_NETWORK, mode, depth, method, field)
    typical = lambda mode, depth, method: _typical_build_s(records, mode, depth, method)
    growth = lambda method: _growth(records, method)
    out = []
    for m in JAXINV_METHODS:
        out.append(Target(f"{m}: temp memory at depth 64 / jax.grad's",
                          _ratio(g("unrolled", 64, m, "temp_bytes"), g("unrolled", 64, "jax.grad", "temp_bytes")),
                          0.06))
        out.append(Target(f"{m}: temp memory growth depth 16 -> 64 / jax.grad's", _ratio(growth(m), growth("jax.grad")),
                          0.02))
        out.append(Target(f"{m}: wall time at depth 64 / hand-fused",
                          _ratio(g("unrolled", 64, m, "time_s"), g("unrolled", 64, "hand-fused", "time_s")), 1.10))
        out.append(Target(f"{m}: wall time at depth 64 / jax.grad",
                          _ratio(g("unrolled", 64, m, "time_s"), g("unrolled", 64, "jax.grad", "time_s")), 1.45))
        out.append(Target(f"{m}: scan, trace + compile at depth 512 / depth 8",
                          _ratio(typical("scan", 512, m), typical("scan", 8, m)), 1.3))
        out.append(Target(f"{m}: unrolled depth 64, trace + compile / jax.grad's",
                          _build_ratio(records, "unrolled", 64, m, "jax.grad"), 2.0))
        for depth in (64, 256):
            out.append(Target(f"{m}: unrolled depth {depth}, trace + compile / hand-fused's",
                              _build_ratio(records, "unrolled", depth, m, "hand-fused"), 1.1))
        peak = lambda method: _get(records, PEAK_NETWORK, "unrolled", 64, method, "peak_bytes")
        out.append(Target(f"{m}: peak memory at depth 64, batch 1024 / jax.grad's", _ratio(peak(m), peak("jax.grad")),
                          0.3))
        for network in _shapes(records):
            out.append(Target(f"{m}: {network}: peak growth 16 -> 64 beyond params and gradients / jax.grad's",
                              _peak_growth_beyond_params(records, m, network), 0.02))
    return out


def _kib(n):
    return f"{n / 1024:,.1f}" if n < 10 * 1024 else f"{n / 1024:,.0f}"


def machine() -> str:
    dev = jax.devices()[0]
    return (f"{platform.processor() or platform.machine()}, {jax.default_backend()} ({dev.device_kind}), "
            f"JAX {jax.__version__}, Python {platform.python_version()}")


def markdown(records: list[dict[str, Any]], checked: list[Target], command: str = "python -m benchmarks") -> str:
    lines = [f"# jaxinv benchmark", "", f"`{command}` on {machine()}.", "",
             "Gradient of a scalar loss with respect to the params, `jax.jit`-compiled. "
             "**peak**: arguments + outputs + temp - aliased (`compile().memory_analysis()`), the memory a "
             "user feels, params and gradients included; **temp**: XLA's temporary buffers alone; **residuals**: "
             "bytes the `vjp` function keeps between the passes, besides the params and input (memory per "
             "device on a sharded network); "
             "**time**: median of alternated runs; **build**: trace + compile (the RevNet MLP: the "
             "fastest of 5 builds alternated between methods; its ratios to another method are the median of "
             "the ratios within each round, between depths the ratio of the medians); **error**: "
             "relative to `jax.grad` in float64.", ""]
    if checked:
        lines += ["## Targets (RevNet MLP)", "", "| target | measured | limit | holds |", "|---|---:|---:|:---:|"]
        for t in checked:
            value = "—" if t.value is None else f"{t.value:.3f}"
            holds = "—" if t.holds is None else ("yes" if t.holds else "**no**")
            lines.append(f"| {t.name} | {value} | {t.limit} | {holds} |")
        lines.append("")
    groups: dict = {}
    for r in records:
        groups.setdefault((r["network"], r["mode"]), []).append(r)
    for (network, mode), rows in groups.items():
        per_device = " per device" if rows[0].get("devices", 1) > 1 else ""
        lines += [f"## {network} ({mode})", "",
                  f"| depth | method | peak KiB{per_device} | temp KiB | residuals KiB | time ms | × jax.grad | "
                  "× hand-fused | build s | error |",
                  "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in rows:
            base = _get(records, network, mode, r["depth"], "jax.grad", "time_s")
            hand = _ratio(r["time_s"], _get(records, network, mode, r["depth"], "hand-fused", "time_s"))
            lines.append(f"| {r['depth']} | {r['method']} | {_kib(r['peak_bytes'])} | {_kib(r['temp_bytes'])} | "
                         f"{_kib(r['residual_bytes'])} | "
                         f"{r['time_s'] * 1e3:.1f} | {_ratio(r['time_s'], base):.2f} | "
                         f"{'—' if hand is None else f'{hand:.2f}'} | {r['trace_s'] + r['compile_s']:.2f} | "
                         f"{r['grad_error']:.1e} |")
        lines.append("")
    return "\n".join(lines)


SUMMARY_START, SUMMARY_END = "<!-- benchmark summary: python -m benchmarks --update-readme -->", "<!-- end -->"


def summary(records: list[dict[str, Any]], checked: list[Target]) -> str:
    """The README's summary of a full run: RevNet MLP figures and the targets."""
    methods = list(dict.fromkeys(r["method"] for r in records))
    g = lambda mode, depth, method, field: _get(records, TARGET_NETWORK, mode, depth, method, field)
    build = lambda mode, depth, m: _build_s(records, mode, depth, m)
    rows = [
        ("XLA temp memory, depth 16 / 64 / 256 (KiB)",
         lambda m: " / ".join(_kib(g("unrolled", d, m, "temp_bytes")) for d in (16, 64, 256))),
        ("wall time at depth 64 (ms)", lambda m: f"{g('unrolled', 64, m, 'time_s') * 1e3:.1f}"),
        ("trace + compile at depth 64 (s)", lambda m: f"{build('unrolled', 64, m):.2f}"),
        ("scanned: temp memory at depth 8 / 1024 (KiB)",
         lambda m: " / ".join(_kib(g("scan", d, m, "temp_bytes")) for d in (8, 1024))),
        ("scanned: trace + compile at depth 8 / 512, median build (s)",
         lambda m: " / ".join(f"{_typical_build_s(records, 'scan', d, m):.2f}" for d in (8, 512))),
    ]
    lines = ["| RevNet MLP, gradient w.r.t. params | " + " | ".join(methods) + " |",
             "|---|" + "---:|" * len(methods)]
    lines += [f"| {label} | " + " | ".join(cell(m) for m in methods) + " |" for label, cell in rows]
    lines += _scaling_table(records, methods)
    lines += _conversions_table(records, methods)
    lines += ["", "| target (RevNet MLP) | jaxinv.grad | jaxinv.invertible | limit |", "|---|---:|---:|---:|"]
    by_name = {t.name: t for t in checked}
    for t in checked:
        if t.name.startswith("jaxinv.grad: "):
            name = t.name.removeprefix("jaxinv.grad: ")
            other = by_name.get("jaxinv.invertible: " + name)
            cells = [f"{x.value:.3f}" + ("" if x.holds else " (missed)") if x and x.value is not None else "—"
                     for x in (t, other)]
            lines.append(f"| {name} | {cells[0]} | {cells[1]} | {t.limit} |")
    return "\n".join(lines)


def _scaling_table(records, methods) -> list[str]:
    """Peak memory per device and wall time at depth 64 of the networks
    measured on several devices, beside their one-device run."""
    sharded = [n for n in dict.fromkeys(r["network"] for r in records if (r.get("devices") or 1) > 1)]
    if not sharded:
        return []
    alone = [n for n in dict.fromkeys(r["network"] for r in records)
             if any(s.startswith(n + " on ") for s in sharded)]
    lines = ["", "| depth 64: peak KiB per device / time ms | " + " | ".join(methods) + " |",
             "|---|" + "---:|" * len(methods)]
    for network in alone + sharded:
        cell = lambda m: (f"{_kib(_get(records, network, 'unrolled', 64, m, 'peak_bytes'))} / "
                          f"{_get(records, network, 'unrolled', 64, m, 'time_s') * 1e3:.1f}")
        if _get(records, network, "unrolled", 64, methods[0], "peak_bytes") is not None:
            lines.append(f"| {network} | " + " | ".join(cell(m) for m in methods) + " |")
    return lines


# Residual networks jaxinv.nn converts, and exact mode beside floating point, at two depths
CONVERSIONS = (("MomentumNet MLP, gamma=0.9", (16, 64)), ("Converted transformer (reversible_blocks)", (4, 16)),
               ("RevNet MLP", (16, 64)), ("RevNet MLP, exact_bits=12", (16, 64)),
               ("MomentumNet MLP, gamma=0.5, exact_bits=12", (16, 64)))


def _conversions_table(records, methods) -> list[str]:
    """Residual KiB at two depths and wall time / jax.grad's at the deeper, unrolled."""
    lines = ["", "| unrolled: residuals KiB at two depths, (time × jax.grad) at the deeper | "
             + " | ".join(methods) + " |", "|---|" + "---:|" * len(methods)]
    for network, (lo, hi) in CONVERSIONS:
        get = lambda depth, m, field: _get(records, network, "unrolled", depth, m, field)
        if get(hi, "jax.grad", "time_s") is None:
            continue

        def cell(m):
            if get(hi, m, "residual_bytes") is None:
                return "—"
            return (f"{_kib(get(lo, m, 'residual_bytes'))} / {_kib(get(hi, m, 'residual_bytes'))} "
                    f"({get(hi, m, 'time_s') / get(hi, 'jax.grad', 'time_s'):.2f}×)")
        lines.append(f"| {network}, depth {lo} / {hi} | " + " | ".join(cell(m) for m in methods) + " |")
    return lines if len(lines) > 3 else []


def update_readme(readme: pathlib.Path, text: str) -> None:
    """Replace the README's benchmark summary (between the markers) with ``text``."""
    content = readme.read_text()
    start, end = content.index(SUMMARY_START) + len(SUMMARY_START), content.index(SUMMARY_END)
    readme.write_text(content[:start] + "\n" + text + "\n" + content[end:])


PLOT_COLUMNS = 3


def plot(records: list[dict[str, Any]], out_dir: pathlib.Path) -> list[pathlib.Path]:
    """memory.png (temp memory vs depth) and time_ratio.png (time / jax.grad vs
    depth), one panel per network. Needs matplotlib (``pip install jaxinv[bench]``)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups: dict = {}
    for r in records:
        groups.setdefault((r["network"], r["mode"]), []).append(r)
    methods = list(dict.fromkeys(r["method"] for r in records))
    paths = []
    for name, field, ylabel, log in [("memory.png", "temp_bytes", "XLA temp memory (MiB)", True),
                                      ("time_ratio.png", "time_ratio", "wall time / jax.grad", False)]:
        columns = min(len(groups), PLOT_COLUMNS)  # a grid, so that each panel stays readable on a page
        rows_of_panels = -(-len(groups) // columns)
        fig, axes = plt.subplots(rows_of_panels, columns, figsize=(4.2 * columns, 3.6 * rows_of_panels),
                                 squeeze=False)
        for ax in axes.flat[len(groups):]:
            ax.set_visible(False)
        for ax, ((network, mode), rows) in zip(axes.flat, groups.items()):
            for method in methods:
                pts = sorted((r["depth"], r) for r in rows if r["method"] == method)
                if not pts:
                    continue
                xs = [d for d, _ in pts]
                if field == "time_ratio":
                    ys = [r["time_s"] / _get(records, network, mode, d, "jax.grad", "time_s") for d, r in pts]
                else:
                    ys = [r[field] / 2 ** 20 for _, r in pts]
                ax.plot(xs, ys, marker="o", label=method)
            ax.set_xscale("log", base=2)
            if log:
                ax.set_yscale("log")
            ax.set_title(f"{network} ({mode})", fontsize=10)
            ax.set_xlabel("depth (blocks)")
            ax.set_ylabel(ylabel)
            ax.grid(alpha=0.3)
        axes[0][0].legend(fontsize=8)
        fig.tight_layout()
        path = out_dir / name
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths
