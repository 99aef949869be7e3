"""The probe's figure: activation std per layer on a log scale, every (init, activation) pair on one axes.

Like Glorot & Bengio 2010 (Fig. 6-7) and He et al. 2015 (Fig. 2-3), but from the probe's
numbers: measured std of each block's activation (solid; colour = init, marker =
activation) and the mean-field prediction ``sqrt(predicted_act_var)`` (dashed, same
colour); a second panel shows the per-example gradient norm ``sqrt(act_grad_norm2)`` per
layer and its prediction. Points that differ in
anything but init, activation and seed (arch, depth, width, padding, bias) get a figure
each. matplotlib (Agg) is imported when a figure is drawn, never at import time.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

from ..models import get_arch


def _group_key(entry: dict[str, Any]) -> tuple:
    s = entry["settings"]
    return (s["arch"], s["depth"], s["width"], s["padding"], s["norm"], s["head"], s["bias_label"])


def _slug(key: tuple) -> str:
    arch, depth, width, padding, norm, head, bias = key
    shown = {"depth": f"d{depth}", "width": f"w{width}", "padding": padding}
    parts = [arch, *(text for setting, text in shown.items() if setting in get_arch(arch).uses)]
    if norm != "none":
        parts.append(norm)
    if bias != "zeros":
        parts.append("bias-" + bias)
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", "_".join(parts)).strip("-")


def _positive(values: list[float | None]) -> list[float]:
    return [v if v is not None and math.isfinite(v) and v > 0 else math.nan for v in values]


def _sqrt(value: float | None) -> float | None:
    return math.sqrt(value) if value is not None and math.isfinite(value) and value >= 0 else None


def probe_figure(entries: list[dict[str, Any]], title: str):
    """One figure for probe entries of the same architecture (as ``initsweep probe --format json`` gives).

    Colour = initializer, marker = activation; solid = measured, dashed = predicted.
    """
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    inits = list(dict.fromkeys(e["settings"]["init_label"] for e in entries))
    acts = list(dict.fromkeys(e["settings"]["activation_label"] for e in entries))
    palette = matplotlib.colormaps["tab10" if len(inits) <= 10 else "tab20"].colors
    markers = "osD^vP*Xph"
    many_seeds = len({e["seed"] for e in entries}) > 1
    # the object API on an Agg canvas, as plots.py: no pyplot, so a notebook's backend is left alone
    fig = Figure(figsize=(13, 5.2), layout="constrained")
    FigureCanvasAgg(fig)
    ax_act, ax_grad = fig.subplots(1, 2)
    for e in entries:
        s = e["settings"]
        colour = palette[inits.index(s["init_label"]) % len(palette)]
        marker = markers[acts.index(s["activation_label"]) % len(markers)]
        label = f"{s['init_label']} + {s['activation_label']}" + (f" (seed {e['seed']})" if many_seeds else "")
        layers = e["layers"]
        idx = list(range(len(layers)))
        style = dict(color=colour, marker=marker, ms=4, lw=1.3)
        ax_act.plot(idx, _positive([l["act_std"] for l in layers]), "-", label=f"{label}: {e['verdict']}", **style)
        predicted = [_sqrt(l["predicted_act_var"]) for l in layers]
        if any(p is not None for p in predicted):
            ax_act.plot(idx, _positive(predicted), "--", color=colour, lw=1, alpha=0.7)
        ax_grad.plot(idx, _positive([_sqrt(l["act_grad_norm2"]) for l in layers]), "-", **style)
        predicted = [_sqrt(l["predicted_act_grad_norm2"]) for l in layers]
        if any(p is not None for p in predicted):
            ax_grad.plot(idx, _positive(predicted), "--", color=colour, lw=1, alpha=0.7)
    for ax, ylabel in ((ax_act, "std of the activation"), (ax_grad, "per-example ||d loss / d activation||")):
        ax.set_yscale("log")
        ax.set_xlabel("layer")
        ax.set_ylabel(ylabel)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(True, which="both", alpha=0.3)
    ax_act.set_title("activations (dashed: mean-field prediction)")
    ax_grad.set_title("gradients (dashed: prediction, anchored at the top)")
    fig.legend(*ax_act.get_legend_handles_labels(), loc="outside right center", fontsize="small")
    fig.suptitle(title)
    return fig


def save_probe_figures(entries: list[dict[str, Any]], out_dir: str | Path) -> list[Path]:
    """Write ``probe_<arch...>.png`` (one per architecture) into ``out_dir``; return the paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for e in entries:
        groups.setdefault(_group_key(e), []).append(e)
    paths = []
    for key, members in groups.items():
        fig = probe_figure(members, f"initsweep probe · {_slug(key).replace('_', ' ')} · {members[0]['dataset']}, "
                                    f"{members[0]['batch_size']} images")
        path = out / f"probe_{_slug(key)}.png"
        fig.savefig(path, dpi=110)
        paths.append(path)
    return paths
