"""Figures drawn when the site is built (see hooks.py).

``coupling_plan_png()`` draws the plan jaxinv makes for one affine coupling
block followed by a squashing ``tanh`` (the function ``coupling`` below). The
diagram is read off a real run, never drawn by hand:

* the **nodes** are the function's inputs and the equations of the flat jaxpr
  jaxinv plans (``jaxinv._src.tracing.trace``, the same trace ``jaxinv.explain``
  makes), numbered as in ``explain``'s table, each coloured by the fate
  ``explain`` reports for its value: reconstructed (by inverting a later
  equation, or assembled from pieces), recomputed, saved, output;
* the **edges** are the data flow between them, from the jaxpr's variables,
  drawn top (inputs) to bottom (outputs): the forward pass runs down, the
  backward pass rebuilds upward from the output;
* above the graph, the source of ``coupling`` with its line numbers (each
  node names its line), a legend, and ``explain``'s byte totals.

The layout is a small layered (Sugiyama-style) drawing in matplotlib (Agg, no
graphviz): layers by longest path, long edges through dummy points, crossings
reduced by barycentre sweeps, positions by ordered least squares. Everything
is deterministic; nothing is written to disk.

Look at it with ``python docs/_tools/figures.py /tmp/coupling-plan.png``.
"""

from __future__ import annotations

import inspect
import io
import re
import statistics
import sys
import textwrap
from collections import defaultdict

import jax
import jax.numpy as jnp
from jax.extend.core import Literal

import jaxinv
from jaxinv._src.knowledge import SourceKind
from jaxinv._src.tracing import trace


# The example: an affine coupling (Real NVP) with a bounded log-scale, then a
# squashing tanh. Its source is printed in the figure, so it has no docstring.
def coupling(p, x):
    x1, x2 = x[:, :4], x[:, 4:]
    h = jnp.tanh(x1 @ p["w"])
    s = jnp.exp(jnp.tanh(h @ p["s"]))
    y2 = x2 * s + h @ p["t"]
    y = jnp.concatenate([x1, y2], 1)
    return jnp.tanh(y)


def _coupling_args():
    p = {"w": jnp.zeros((4, 16)), "s": jnp.zeros((16, 4)), "t": jnp.zeros((16, 4))}
    return p, jnp.zeros((16, 8))


# fate -> (face colour, edge colour, legend text)
STYLE = {
    "reconstructed": ("#b7e4c7", "#2d6a4f", "reconstructed (inverted, or assembled)"),
    "recomputed": ("#cfe2ff", "#3a6ea5", "recomputed forward"),
    "saved": ("#f8c291", "#b34700", "saved activation"),
    "saved input": ("#fde8d4", "#b34700", "saved input (referenced, not copied)"),
    "output": ("#d8c8f0", "#5a3d99", "output (the backward pass starts here)"),
    "given": ("#e6e6e6", "#6b6b6b", "given (closure value, constant)"),
    "unused": ("#ffffff", "#999999", "unused"),
}
PRIORITY = ["saved", "output", "reconstructed", "recomputed", "given", "unused"]


def _category(fate: str, is_input: bool) -> str:
    fates = {f.strip() for f in fate.split(",")}
    fates = {"given" if f in ("closure value", "constant") else f for f in fates}
    for f in PRIORITY:
        if f in fates:
            return "saved input" if (f == "saved" and is_input) else f
    return "unused"


def _line_of(source: str, first: int) -> int | None:
    """The line of ``coupling`` (1 = its ``def``) that ``explain`` names."""
    m = re.search(r":(\d+):\d+ \(", source) or re.search(r":(\d+) \(", source)
    return None if m is None else int(m.group(1)) - first + 1


def _input_names(f, args) -> list[str]:
    names = []
    for name, arg in zip(inspect.signature(f).parameters, args):
        for path, _ in jax.tree_util.tree_flatten_with_path(arg)[0]:
            names.append(name + jax.tree_util.keystr(path).replace("'", '"'))
    return names


def plan_graph(f, args):
    """The nodes and edges of ``f``'s plan: ``(nodes, edges, report)``.

    ``nodes`` maps ``("in", k)`` / ``("eq", i)`` to a dict with ``title``,
    ``note``, ``category``; ``edges`` lists ``(src, dst)`` pairs of data flow.
    """
    report = jaxinv.explain(f, *args)
    traced = trace(f, args)
    plan, jaxpr, nc = traced.plan, traced.plan.jaxpr, traced.num_consts
    first = inspect.getsourcelines(f)[1]
    input_rows = [r for r in report.rows if r.index is None]
    eqn_rows = [r for r in report.rows if r.index is not None]
    if len(input_rows) != len(jaxpr.invars) - nc or [r.index for r in eqn_rows] != list(plan.live):
        raise RuntimeError("explain's rows do not match the traced plan")

    producer, nodes = {}, {}

    def note(v, row, is_input):
        cat = _category(row.fate, is_input)
        src = plan.sources.get(v)
        if src is not None and src.kind == SourceKind.INVERT:
            return cat, f"inverts #{src.eqn}"
        if src is not None and src.kind == SourceKind.ASSEMBLE:
            steps = dict.fromkeys(plan.pieces[k].eqn for k in src.pieces)
            return cat, "assembled from " + ", ".join(f"#{i}" for i in steps)
        if cat in ("saved", "saved input"):
            return cat, f"saved, {row.saved_bytes} B"
        return cat, cat

    names = _input_names(f, args)
    for k, (v, row) in enumerate(zip(jaxpr.invars[nc:], input_rows)):
        cat, text = note(v, row, True)
        nodes[("in", k)] = dict(title=names[k], note=text, category=cat)
        producer[v] = ("in", k)
    for k, v in enumerate(jaxpr.invars[:nc]):
        producer[v] = ("const", k)
    edges = []
    for row in eqn_rows:
        e = jaxpr.eqns[row.index]
        if row.primitive.split("[")[0] != e.primitive.name:
            raise RuntimeError(f"equation {row.index}: explain says {row.primitive}, the jaxpr {e.primitive.name}")
        for v in e.invars:
            src = None if isinstance(v, Literal) else producer.get(v)
            if src is not None:
                if src[0] == "const" and src not in nodes:  # a closure value, given: drawn where first read
                    nodes[src] = dict(title=f"closure value {src[1]}", note="given", category="given")
                if (src, ("eq", row.index)) not in edges:
                    edges.append((src, ("eq", row.index)))
        cat, text = note(e.outvars[0], row, False)
        line = _line_of(row.source, first)
        nodes[("eq", row.index)] = dict(title=f"#{row.index} {row.primitive}",
                                        note=(f"line {line} · " if line else "") + text, category=cat)
        for v in e.outvars:
            producer[v] = ("eq", row.index)
    return nodes, edges, report


# ------------------------------------------------------------------ layout


def _layers(nodes, edges):
    preds, succs = defaultdict(list), defaultdict(list)
    for a, b in edges:
        preds[b].append(a)
        succs[a].append(b)
    layer = {}
    for n in nodes:  # nodes are in program order: inputs first, then equations
        layer[n] = 0 if n[0] != "eq" else 1 + max((layer[p] for p in preds[n]), default=-1)
    for n in nodes:  # an input sits just above its first reader
        if n[0] != "eq" and succs[n]:
            layer[n] = min(layer[s] for s in succs[n]) - 1
    return layer


def _layout(nodes, edges, widths, gap):
    """Positions (x in inches, layer) of nodes and of the dummy points of long edges."""
    layer = _layers(nodes, edges)
    chains, up, down = [], defaultdict(list), defaultdict(list)
    rank = defaultdict(list)
    for n in nodes:
        rank[layer[n]].append(n)
    for a, b in edges:
        chain = [a] + [("dummy", a, b, k) for k in range(layer[a] + 1, layer[b])] + [b]
        for k, d in enumerate(chain[1:-1], start=layer[a] + 1):
            rank[k].append(d)
            layer[d] = k
        for u, v in zip(chain, chain[1:]):
            down[u].append(v)
            up[v].append(u)
        chains.append(chain)
    levels = [rank[k] for k in range(max(rank) + 1)]
    width = lambda n: widths[n] if n[0] != "dummy" else 0.12

    def crossings(order):
        pos = {n: i for lvl in order for i, n in enumerate(lvl)}
        total = 0
        for lvl in order:
            pairs = [(pos[u], pos[v]) for u in lvl for v in down[u]]
            total += sum(1 for i, (a, b) in enumerate(pairs) for c, d in pairs[i + 1:] if (a - c) * (b - d) < 0)
        return total

    best = [list(lvl) for lvl in levels]
    order = [list(lvl) for lvl in levels]
    for sweep in range(12):
        rng = range(1, len(order)) if sweep % 2 == 0 else range(len(order) - 2, -1, -1)
        nbrs = up if sweep % 2 == 0 else down
        for k in rng:
            pos = {n: i for lvl in order for i, n in enumerate(lvl)}
            old = {n: i for i, n in enumerate(order[k])}
            key = lambda n: (statistics.fmean(pos[m] for m in nbrs[n]) if nbrs[n] else old[n], old[n])
            order[k] = sorted(order[k], key=key)
        if crossings(order) < crossings(best):
            best = [list(lvl) for lvl in order]
    improved = True
    while improved:  # then swap neighbours while that removes crossings
        improved = False
        for lvl in best:
            for i in range(len(lvl) - 1):
                before = crossings(best)
                lvl[i], lvl[i + 1] = lvl[i + 1], lvl[i]
                if crossings(best) < before:
                    improved = True
                else:
                    lvl[i], lvl[i + 1] = lvl[i + 1], lvl[i]

    # x: each node as close as possible to the mean of its neighbours, keeping
    # the order and the gaps (isotonic regression, pool-adjacent-violators).
    x = {}
    for lvl in best:
        offset = 0.0
        for n in lvl:
            x[n] = offset + width(n) / 2
            offset += width(n) + gap
        for n in lvl:
            x[n] -= offset / 2
    for sweep in range(24):
        nbrs = up if sweep % 2 == 0 else down
        for lvl in (best if sweep % 2 == 0 else best[::-1]):
            offs, acc = [], 0.0
            for i, n in enumerate(lvl):
                if i:
                    acc += (width(lvl[i - 1]) + width(n)) / 2 + (gap if n[0] != "dummy" or lvl[i - 1][0] != "dummy"
                                                                 else 0.05)
                offs.append(acc)
            want = [(statistics.fmean(x[m] for m in nbrs[n]) + x[n]) / 2 if nbrs[n] else x[n] for n in lvl]
            blocks = []  # [sum, count, first index]
            for i, w in enumerate(want):
                blocks.append([w - offs[i], 1, i])
                while len(blocks) > 1 and blocks[-2][0] / blocks[-2][1] > blocks[-1][0] / blocks[-1][1]:
                    s, c, _ = blocks.pop()
                    blocks[-1][0] += s
                    blocks[-1][1] += c
            for j, (s, c, start) in enumerate(blocks):
                end = blocks[j + 1][2] if j + 1 < len(blocks) else len(lvl)
                for i in range(start, end):
                    x[lvl[i]] = s / c + offs[i]
    left = min(x[n] - width(n) / 2 for n in x)
    return {n: x[n] - left for n in x}, layer, chains, best


# ------------------------------------------------------------------ drawing


def _smooth(pts):
    """A smooth path through ``pts`` (Catmull-Rom as cubic Béziers), vertical at both ends."""
    from matplotlib.path import Path
    ext = [(pts[0][0], 2 * pts[0][1] - pts[1][1])] + pts + [(pts[-1][0], 2 * pts[-1][1] - pts[-2][1])]
    verts, codes = [pts[0]], [Path.MOVETO]
    for i in range(1, len(ext) - 2):
        (x0, y0), (x1, y1), (x2, y2), (x3, y3) = ext[i - 1:i + 3]
        if i == 1:
            x0 = x1   # leave the source straight down
        if i == len(ext) - 3:
            x3 = x2   # and arrive straight down
        verts += [(x1 + (x2 - x0) / 6, y1 + (y2 - y0) / 6), (x2 - (x3 - x1) / 6, y2 - (y3 - y1) / 6), (x2, y2)]
        codes += [Path.CURVE4] * 3
    return Path(verts, codes)


def draw_plan(f, args, *, title: str, subtitle: str, dpi: int = 180) -> bytes:
    """Draw the plan of ``f(*args)`` (nodes coloured by fate, data-flow edges) as PNG bytes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg, RendererAgg
    from matplotlib.figure import Figure
    from matplotlib.font_manager import FontProperties
    from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

    nodes, edges, report = plan_graph(f, args)
    mono, fs = "DejaVu Sans Mono", 9.5
    box_h, gap, row_h = 0.5, 0.2, 0.7
    measure = RendererAgg(10, 10, 72).get_text_width_height_descent  # in points
    width_of = lambda text, **font: measure(text, FontProperties(**font), ismath=False)[0] / 72  # inches
    title_font = dict(weight="bold", size=fs + 0.3)
    widths = {n: 0.24 + max(width_of(i["title"], **title_font, family=mono if n[0] != "eq" else None),
                            width_of(i["note"], size=fs - 0.6))
              for n, i in nodes.items()}
    x, layer, chains, order = _layout(nodes, edges, widths, gap)
    graph_w = max(x[n] + (widths[n] / 2 if n[0] != "dummy" else 0.06) for n in x)
    lines = inspect.getsource(f).rstrip().splitlines()
    code_w = 0.55 + width_of(max(lines, key=len), family=mono, size=fs)
    seen = [c for c in STYLE if any(i["category"] == c for i in nodes.values())]
    totals = (f"saved: {report.saved_bytes} B = {report.saved_input_bytes} B of inputs\n"
              f"   + {report.saved_activation_bytes} B of activations\n"
              f"outputs: {report.output_bytes} B; closure values: {report.closure_bytes} B")
    legend_w = 0.42 + max(width_of(STYLE[c][2], size=fs) for c in seen)
    legend_w = max(legend_w, max(width_of(t, size=fs) for t in totals.splitlines()))
    margin, between, step = 0.2, 0.35, 0.29
    fig_w = 2 * margin + max(code_w + between + legend_w, graph_w)
    subtitle_lines = textwrap.wrap(subtitle, width=int(len(subtitle) * (fig_w - 2 * margin)
                                                        / max(width_of(subtitle, size=fs), 1e-9)))
    band_top = 0.62 + 0.21 * len(subtitle_lines)
    code_h = step * len(lines) + 0.16
    legend_h = 0.12 + 0.3 * (len(seen) + 1) + 0.2 * len(totals.splitlines()) * 1.4
    top = band_top + max(code_h, legend_h) + 0.1
    fig_h = top + len(order) * row_h + 0.1
    fig = Figure(figsize=(fig_w, fig_h), dpi=dpi)
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(0, fig_w)
    ax.set_ylim(fig_h, 0)  # inches from the top-left corner
    ax.axis("off")
    gx = (fig_w - graph_w) / 2
    ys = lambda n: top + (layer[n] + 0.5) * row_h
    xs = lambda n: gx + x[n]

    ax.text(margin, 0.18, title, fontsize=13.5, fontweight="bold", va="top")
    ax.text(margin, 0.55, "\n".join(subtitle_lines), fontsize=fs, va="top", color="#333333", linespacing=1.4)

    # the source, with the line numbers the nodes name
    ax.add_patch(FancyBboxPatch((margin, band_top), code_w, code_h,
                                boxstyle="round,pad=0,rounding_size=0.06", fc="#f6f8fa", ec="#d0d7de", lw=0.8))
    for k, text in enumerate(lines):
        y = band_top + 0.08 + step * (k + 0.5)
        ax.text(margin + 0.1, y, f"{k + 1}", family=mono, fontsize=fs, color="#8c959f", va="center")
        ax.text(margin + 0.4, y, text, family=mono, fontsize=fs, va="center")

    # legend and totals, beside the source
    lx, y = margin + code_w + between, band_top + 0.12
    ax.text(lx, y, "fate in the backward pass", fontsize=fs + 0.5, fontweight="bold", va="center")
    for c in seen:
        y += 0.3
        face, edge, label = STYLE[c]
        ax.add_patch(FancyBboxPatch((lx, y - 0.09), 0.3, 0.18, boxstyle="round,pad=0,rounding_size=0.03",
                                    fc=face, ec=edge, lw=1.0))
        ax.text(lx + 0.42, y, label, fontsize=fs, va="center")
    ax.text(lx, y + 0.3, totals, fontsize=fs, va="top", linespacing=1.4)

    # edges: forward data flow, through the dummy points of long edges
    into = defaultdict(list)
    for chain in chains:
        into[chain[-1]].append(chain)
    for dst, incoming in into.items():
        incoming.sort(key=lambda c: xs(c[-2]))
        spread = min(0.3, 0.8 * widths[dst] / len(incoming))
        for k, chain in enumerate(incoming):
            pts = [(xs(chain[0]), ys(chain[0]) + box_h / 2)] + [(xs(d), ys(d)) for d in chain[1:-1]]
            pts.append((xs(dst) + (k - (len(incoming) - 1) / 2) * spread, ys(dst) - box_h / 2 - 0.01))
            ax.add_patch(FancyArrowPatch(path=_smooth(pts), arrowstyle="-|>,head_length=4.5,head_width=2.4",
                                         color="#555555", lw=1.0, zorder=1, shrinkA=0, shrinkB=0))

    for n, info in nodes.items():
        face, edge, _ = STYLE[info["category"]]
        cx, cy, box_w = xs(n), ys(n), widths[n]
        ax.add_patch(FancyBboxPatch((cx - box_w / 2, cy - box_h / 2), box_w, box_h,
                                    boxstyle="round,pad=0,rounding_size=0.07", fc=face, ec=edge,
                                    lw=1.8 if info["category"] in ("saved", "output") else 1.0, zorder=2))
        ax.text(cx, cy - 0.1, info["title"], ha="center", va="center", zorder=3,
                fontproperties=FontProperties(**title_font, family=mono if n[0] != "eq" else None))
        ax.text(cx, cy + 0.12, info["note"], ha="center", va="center", fontsize=fs - 0.6, color="#222222", zorder=3)

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, metadata={"Software": None})
    return buf.getvalue()


def coupling_plan_png() -> bytes:
    """PNG bytes of the plan of ``coupling`` (an affine coupling with a tanh head)."""
    return draw_plan(coupling, _coupling_args(), title="The plan of an affine coupling block",
                     subtitle="From jaxinv.explain(coupling, p, x): every equation of the flat jaxpr "
                              "(#n: explain's row), coloured by what the backward pass does with its value. "
                              "Arrows: the forward pass's data flow, top to bottom; the backward pass "
                              "starts at the output and rebuilds upward.")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python docs/_tools/figures.py OUT.png")
    with open(sys.argv[1], "wb") as out:
        out.write(coupling_plan_png())
    print(f"wrote {sys.argv[1]}")
