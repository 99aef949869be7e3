"""Figures of a sweep: heatmaps per depth, metric versus depth, learning curves, and the
per-layer activation std once diagnostics are stored.

matplotlib is an optional extra (``pip install 'initsweep[plot]'``) and is imported only
when a figure is drawn. Figures are built with the object API on an Agg canvas, never
through ``pyplot``, so drawing them neither needs a display nor changes the backend of a
notebook that imports this module. Colours: Okabe–Ito for categories and cividis for
heatmaps, both readable with the common colour-vision deficiencies and in greyscale;
markers repeat the colour's information for print.
"""

from __future__ import annotations

import io
import math
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import pandas as pd

from ..errors import InitsweepError
from .stats import CORE_AXES, lower_is_better, setting_text, summarize, varying_settings

if TYPE_CHECKING:
    from matplotlib.figure import Figure

OKABE_ITO = ["#E69F00", "#56B4E9", "#009E73", "#0072B2", "#D55E00", "#CC79A7", "#F0E442", "#000000"]
MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*"]
_LABELS = {"test_acc": "test accuracy (fraction correct)", "best_val_acc": "best validation accuracy (fraction)",
           "final_val_acc": "final validation accuracy (fraction)",
           "final_train_acc": "final train accuracy (fraction)",
           "test_loss": "test loss (cross-entropy, nats)", "final_val_loss": "final validation loss (nats)",
           "final_train_loss": "final train loss (nats)", "wall_seconds": "wall time (s)",
           "train_seconds": "training time (s)", "samples_per_sec": "throughput (samples/s)"}


def metric_label(metric: str) -> str:
    """An axis label with units for a metric column."""
    return _LABELS.get(metric, metric.replace("_", " "))


def _matplotlib() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise InitsweepError("plots need matplotlib (initsweep's 'plot' extra): pip install matplotlib") from None
    return matplotlib


# The HTML report embeds figures at EMBED_DPI in a page column 1168 px wide (formats.py's CSS).
# No figure is wider than MAX_WIDTH_IN, so none is scaled down there and text keeps its size:
# 1 pt = 110/72 px, the smallest text (8 pt) 12 px. Before this cap, a 16-inch heatmap was
# shrunk to 66% and its 8 pt cell values read at 8 px.
EMBED_DPI = 110
MAX_WIDTH_IN = 10.5


def _new_figure(nrows: int, ncols: int, width: float, height: float, **kwargs) -> tuple["Figure", list]:
    """A figure on an Agg canvas (headless) and its axes as a flat list; ``width`` per panel,
    narrowed to fit :data:`MAX_WIDTH_IN` in all."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(min(max(width * ncols, 6.0), MAX_WIDTH_IN), height * nrows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False, **kwargs)
    return fig, [ax for row in axes for ax in row]


def _panel_per_activation(n: int) -> tuple["Figure", list]:
    """One panel per activation, four to a row, sharing the y axis."""
    ncols = min(n, 4)
    return _new_figure(-(-n // ncols), ncols, 3.6, 3.0, sharey=True)


def _slices(runs: pd.DataFrame) -> Iterator[tuple[str, pd.DataFrame]]:
    """One set of figures per value of the axes other than init/activation/depth (e.g. lr),
    so no plot silently averages over a setting; named by the settings as the user wrote
    them (a sweep that left one unset, say ``test_limit``, names it not at all)."""
    extra = varying_settings(runs, exclude=CORE_AXES)
    if not extra:
        yield "", runs
        return
    for values, part in runs.groupby(extra, sort=True, dropna=False):
        yield setting_text(extra, values if isinstance(values, tuple) else (values,), sep=", "), part


def _ordered(values: pd.Series) -> list:
    return list(pd.unique(values))


def init_styles(inits: list[str]) -> dict[str, dict[str, str]]:
    """A colour and a marker per init, fixed by the sweep's init order so that an init looks
    the same in every figure of a report."""
    return {init: {"color": OKABE_ITO[k % len(OKABE_ITO)], "marker": MARKERS[k % len(MARKERS)]}
            for k, init in enumerate(inits)}


def _title(text: str, note: str) -> str:
    return f"{text}\n{note}" if note else text


def _short(value: float) -> str:
    """Three decimals for ordinary numbers, three significant digits for huge or tiny ones."""
    return f"{value:.3f}" if 1e-3 <= abs(value) < 1e4 else f"{value:.2g}"


def _integer_ticks(ax) -> None:
    """Whole-number x ticks (epochs, layers), also for a single value: by default the locator
    wants two integers in view and ticks a lone epoch 1 at 0.945, 0.96, ..., 1.05."""
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))


def _wrap(label: str, width: int = 18) -> str:
    """``leaky_relu(negative_slope=0.2)`` on two lines, so long labels do not overlap."""
    if len(label) <= width or "(" not in label:
        return label
    name, params = label.split("(", 1)
    return name + "\n(" + params.replace(", ", ",\n ")


def heatmap(runs: pd.DataFrame, metric: str, note: str = "") -> "Figure":
    """Mean ``metric`` per init x activation, one panel per depth, one colour scale for all."""
    from matplotlib.colors import LogNorm, Normalize

    stats = summarize(runs, metric, list(CORE_AXES))
    inits, acts, depths = _ordered(stats["init"]), _ordered(stats["activation"]), sorted(stats["depth"].unique())
    finite = stats["mean"].dropna()
    log = len(finite) and (finite > 0).all() and finite.max() > 100 * finite.min()
    lo, hi = (finite.min(), finite.max()) if len(finite) else (0.0, 1.0)
    norm = (LogNorm if log else Normalize)(vmin=lo, vmax=hi)
    cmap = "cividis_r" if lower_is_better(metric) else "cividis"
    # As many depth panels to a row as fit MAX_WIDTH_IN with cells at least 0.55 in wide (room
    # for "0.912‡" at 9 pt); the init labels (shared by a row) and the colour bar need ~2.5 in.
    margin = 2.5
    ncols = max(1, min(len(depths), int((MAX_WIDTH_IN - margin) // (0.55 * len(acts) + 0.3))))
    nrows = -(-len(depths) // ncols)
    panel = min(0.8 * len(acts) + 0.3 + margin / ncols, MAX_WIDTH_IN / ncols)
    fig, axes = _new_figure(nrows, ncols, panel, 1.3 + 0.4 * len(inits), sharey=True)
    image = None
    for k, (ax, depth) in enumerate(zip(axes, depths)):
        grid = stats[stats["depth"] == depth].set_index(["init", "activation"])
        values = [[grid["mean"].get((i, a), float("nan")) for a in acts] for i in inits]
        image = ax.imshow(values, cmap=cmap, norm=norm, aspect="auto")
        for y, init in enumerate(inits):
            for x, act in enumerate(acts):
                if (init, act) not in grid.index:
                    continue
                row = grid.loc[(init, act)]
                finished = row["runs"] - row["unfinished"]
                mark = "†" if row["diverged"] and row["diverged"] == finished else ("‡" if row["diverged"] else "")
                text = "—" if pd.isna(row["mean"]) else _short(row["mean"])
                shade = norm(row["mean"]) if not pd.isna(row["mean"]) else 0.5
                shade = 1 - shade if lower_is_better(metric) else shade
                ax.text(x, y, text + mark, ha="center", va="center", fontsize=9,
                        color="black" if shade > 0.55 else "white")
        ax.set_xticks(range(len(acts)), [_wrap(a) for a in acts], rotation=30, ha="right", fontsize=9)
        ax.set_yticks(range(len(inits)), [_wrap(i) for i in inits], fontsize=9)
        ax.set_xlabel("activation")
        if k % ncols == 0:
            ax.set_ylabel("init")
        ax.set_title(f"depth {depth}")
    for ax in axes[len(depths):]:
        ax.set_visible(False)
    if image is not None:
        fig.colorbar(image, ax=axes[:len(depths)], label=f"{metric}, mean over seeds", shrink=0.9)
    fig.suptitle(_title(f"{metric_label(metric)} by init × activation, per depth — mean over seeds\n"
                        "† every seed diverged · ‡ some seeds diverged", note), fontsize=10)
    return fig


def metric_vs_depth(runs: pd.DataFrame, metric: str, note: str = "",
                    styles: dict[str, dict[str, str]] | None = None) -> "Figure":
    """Mean ``metric`` against depth, a line per init, a panel per activation; bars = std over seeds."""
    stats = summarize(runs, metric, list(CORE_AXES))
    inits, acts = _ordered(stats["init"]), _ordered(stats["activation"])
    styles = styles or init_styles(inits)
    fig, axes = _panel_per_activation(len(acts))
    for ax, act in zip(axes, acts):
        for init in inits:
            line = stats[(stats["activation"] == act) & (stats["init"] == init)].sort_values("depth")
            if line.empty:
                continue
            ax.errorbar(line["depth"], line["mean"], yerr=line["std"].fillna(0), label=init, capsize=3,
                        markersize=5, **styles[init])
            diverged = line[line["diverged"] > 0]
            if len(diverged):
                ax.scatter(diverged["depth"], diverged["mean"], marker="x", s=60, color="black", zorder=3,
                           label="seeds diverged (×)")
        ax.set_title(f"activation: {_wrap(act)}", fontsize=9)
        ax.set_xticks(sorted(stats["depth"].unique()))
        ax.set_xlabel("depth (conv layers)")
        ax.grid(alpha=0.3)
    for ax in axes[len(acts):]:
        ax.set_visible(False)
    axes[0].set_ylabel(metric_label(metric))
    _legend(fig, axes)
    fig.suptitle(_title(f"{metric_label(metric)} vs depth — mean ± std over seeds", note), fontsize=10)
    return fig


def learning_curves(runs: pd.DataFrame, epochs: pd.DataFrame, note: str = "",
                    styles: dict[str, dict[str, str]] | None = None) -> "Figure | None":
    """Validation accuracy per epoch (train accuracy without a validation split): a panel per
    activation x depth, a line per init (mean over seeds, band = std)."""
    curve = "val_acc" if epochs["val_acc"].notna().any() else "train_acc"
    data = epochs.merge(runs[["row_id", *CORE_AXES]], on="row_id")
    if data.empty or data[curve].isna().all():
        return None
    inits, acts = _ordered(runs["init_label"]), _ordered(runs["activation_label"])
    styles = styles or init_styles(inits)
    depths = sorted(data["depth"].unique())
    fig, axes = _new_figure(len(acts), len(depths), 3.0, 2.4, sharex=True, sharey=True)
    for r, act in enumerate(acts):
        for c, depth in enumerate(depths):
            ax = axes[r * len(depths) + c]
            panel = data[(data["activation_label"] == act) & (data["depth"] == depth)]
            for init in inits:
                stats = panel[panel["init_label"] == init].groupby("epoch")[curve].agg(["mean", "std"])
                if stats.empty:
                    continue
                ax.plot(stats.index, stats["mean"], markersize=4, label=init, **styles[init])
                ax.fill_between(stats.index, stats["mean"] - stats["std"].fillna(0),
                                stats["mean"] + stats["std"].fillna(0), color=styles[init]["color"], alpha=0.15)
            ax.set_title(f"{_wrap(act)}, depth {depth}", fontsize=9)
            _integer_ticks(ax)
            ax.grid(alpha=0.3)
            if r == len(acts) - 1:
                ax.set_xlabel("epoch")
            if c == 0:
                ax.set_ylabel(f"{'validation' if curve == 'val_acc' else 'train'} accuracy (fraction)", fontsize=8)
    _legend(fig, axes)
    fig.suptitle(_title("learning curves — mean ± std over seeds", note), fontsize=10)
    return fig


def activation_std(runs: pd.DataFrame, layers: pd.DataFrame | None, note: str = "",
                   styles: dict[str, dict[str, str]] | None = None) -> "Figure | None":
    """Activation std per layer at init (solid) and after training (dashed) at the deepest
    depth with diagnostics, log scale: vanishing signals fall, exploding ones climb."""
    if layers is None or layers.empty or "act_std" not in layers or layers["act_std"].notna().sum() == 0:
        return None
    data = layers.merge(runs[["row_id", *CORE_AXES]], on="row_id").dropna(subset=["act_std"])
    data = data[data["act_std"] > 0]
    if data.empty:
        return None
    depth = data["depth"].max()
    data = data[data["depth"] == depth]
    inits, acts = _ordered(runs["init_label"]), _ordered(data["activation_label"])
    styles = styles or init_styles(inits)
    fig, axes = _panel_per_activation(len(acts))
    for ax, act in zip(axes, acts):
        for init in inits:
            for phase, style in (("init", "-"), ("final", "--")):
                part = data[(data["activation_label"] == act) & (data["init_label"] == init) & (data["phase"] == phase)]
                if part.empty:
                    continue
                # geometric mean over seeds: the right average on a log axis
                profile = part.groupby("layer")["act_std"].agg(lambda s: float(s.map(math.log10).mean()))
                ax.plot(profile.index, 10 ** profile, linestyle=style, markersize=4, **styles[init])
        ax.set_yscale("log")
        ax.set_title(f"activation: {_wrap(act)}", fontsize=9)
        _integer_ticks(ax)
        ax.set_xlabel("layer (0 = first)")
        ax.grid(alpha=0.3, which="both")
    for ax in axes[len(acts):]:
        ax.set_visible(False)
    axes[0].set_ylabel("activation std (log scale)")
    from matplotlib.lines import Line2D

    shown = [init for init in inits if init in set(data["init_label"])]
    handles = [Line2D([], [], label=init, **styles[init]) for init in shown]
    handles += [Line2D([], [], color="black", linestyle=style, label=label)
                for style, label in (("-", "at init"), ("--", "after training"))]
    fig.legend(handles=handles, loc="outside lower center", fontsize=8, ncol=min(len(handles), 5), frameon=False)
    fig.suptitle(_title(f"activation std per layer at depth {depth} — solid: at init, dashed: after training",
                        note), fontsize=10)
    return fig


def _legend(fig: "Figure", axes: list) -> None:
    """One legend for the figure, below the panels, from every panel's lines (deduplicated)."""
    entries: dict[str, object] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            entries.setdefault(label, handle)
    if entries:
        fig.legend(list(entries.values()), list(entries), loc="outside lower center", title="init", fontsize=8,
                   ncol=min(len(entries), 4), frameon=False)


def make_figures(runs: pd.DataFrame, metric: str = "test_acc", epochs: pd.DataFrame | None = None,
                 layers: pd.DataFrame | None = None) -> dict[str, "Figure"]:
    """Every figure the runs support, by file stem (``heatmap_test_acc``, ...)."""
    _matplotlib()
    styles = init_styles(_ordered(runs["init_label"]))
    figures: dict[str, Figure] = {}
    for note, part in _slices(runs):
        suffix = "_" + re.sub(r"[^A-Za-z0-9.=-]+", "_", note) if note else ""
        figures[f"heatmap_{metric}{suffix}"] = heatmap(part, metric, note)
        figures[f"{metric}_vs_depth{suffix}"] = metric_vs_depth(part, metric, note, styles)
        if epochs is not None and not epochs.empty:
            curves = learning_curves(part, epochs, note, styles)
            if curves is not None:
                figures[f"learning_curves{suffix}"] = curves
        stds = activation_std(part, layers, note, styles)
        if stds is not None:
            figures[f"activation_std{suffix}"] = stds
    for fig in figures.values():
        # Lay out once: constrained layout would otherwise rerun on every save (PNG, SVG, HTML);
        # profiled, it was 40% of the time spent saving. Positions are figure fractions, so
        # the layout holds at every dpi.
        fig.draw_without_rendering()
        fig.set_layout_engine("none")
    return figures


def save_figures(figures: dict[str, "Figure"], out_dir: Path) -> list[Path]:
    """Write each figure as PNG (150 dpi) and SVG; returns the paths written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for stem, fig in figures.items():
        for ext, kwargs in (("png", {"dpi": 150}), ("svg", {})):
            path = out_dir / f"{stem}.{ext}"
            fig.savefig(path, **kwargs)
            paths.append(path)
    return paths


def png_bytes(fig: "Figure") -> bytes:
    """A figure as PNG bytes (for embedding in the HTML report)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=EMBED_DPI)
    return buffer.getvalue()
