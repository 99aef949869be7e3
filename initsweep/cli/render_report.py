"""Rich terminal renderings of ``initsweep report`` and ``initsweep show``.

The frames come from ``report/stats.py`` and the cell texts from ``report/formats.py`` (the markdown and
HTML reports use the same ones), so a number reads the same in every format. Colour only
repeats what the text says: the best cell carries ★ and divergence †/‡, so a NO_COLOR
terminal or a CI log loses nothing.
"""

from __future__ import annotations

import json
import math
from typing import Any

import pandas as pd
from rich.console import Console
from rich.markup import escape
from rich.style import Style
from rich.table import Table
from rich.text import Text

from ..report.formats import (ColourScale, display_table, fallback_note, fmt_value, legend, mark_notes, n_note,
                               pivot_cell, stat_format, usual_n)
from ..report.stats import Report, count_runs, lower_is_better, pivot_blocks

_BARS = "▁▂▃▄▅▆▇█"
_CHANGE_STYLE = {"better": "bold #0072B2", "worse": "bold #D55E00", "new": "italic", "missing": "italic"}
_STATUS_STYLE = {"ok": "green", "diverged": "yellow", "failed": "red", "interrupted": "magenta", "running": "cyan"}


def sparkline(values: list[float], log: bool = False) -> str:
    """``▁▃▅█``: one bar per value, scaled between its min and max (a gap for NaN)."""
    points = [math.log10(v) if log and v is not None and v > 0 else v for v in values]
    finite = [p for p in points if p is not None and not pd.isna(p) and math.isfinite(p)]
    if not finite:
        return ""
    lo, hi = min(finite), max(finite)
    out = []
    for p in points:
        if p is None or pd.isna(p) or not math.isfinite(p):
            out.append(" ")
        else:
            out.append(_BARS[3] if hi == lo else _BARS[round((p - lo) / (hi - lo) * (len(_BARS) - 1))])
    return "".join(out)


def render_report(console: Console, report: Report) -> None:
    """The pivot per depth for a grid, else (or with --by/--sort/--baseline) the flat table."""
    if report.pivot:
        render_pivot(console, report)
    else:
        render_table(console, report)
    note = fallback_note(report.summary)
    if note:
        console.print(note, style="bold yellow", highlight=False)
    for title, runs in (("new runs (not in the baseline)", report.new_runs),
                        ("missing runs (only in the baseline)", report.missing_runs)):
        if runs is not None and len(runs):
            table = Table(title=title, show_edge=False, pad_edge=False)
            for col in runs.columns:
                table.add_column(str(col))
            for row in runs.itertuples(index=False):
                table.add_row(*(escape(fmt_value(v) if isinstance(v, float) else str(v)) for v in row))
            console.print(table)
    if report.compared:
        changes = report.table["change"].value_counts()
        console.print("vs baseline: " + (", ".join(f"{n} {c}" for c, n in changes.items()) or "nothing to compare"),
                      highlight=False)


def render_table(console: Console, report: Report) -> None:
    shown = display_table(report.table, report.metric)
    keys = len(report.table.attrs.get("keys", []))
    counted = count_runs(report.runs, report.summary.attrs.get("keys", []))
    table = Table(title=f"{report.metric} per group — {counted}, statistics over seeds",
                  caption="diverged: diverged / finished runs; failed or interrupted runs are left out")
    for j, col in enumerate(shown.columns):
        table.add_column(Text(col), justify="left" if j < keys or col == "verdict" else "right", overflow="fold")
    changes = report.table["change"] if "change" in report.table else None
    for i, row in enumerate(shown.itertuples(index=False)):
        cells = [Text(str(v)) for v in row]
        if changes is not None:
            cells[-1].stylize(_CHANGE_STYLE.get(changes.iloc[i], ""))
        table.add_row(*cells)
    console.print(table)
    for note in mark_notes(report.table):
        console.print(note, highlight=False, style="dim")


def render_pivot(console: Console, report: Report) -> None:
    """One table per depth (or per value of the other keys), cells coloured on one scale."""
    rows, cols = report.pivot
    verdict = report.summary["verdict"].notna().any()
    usual = usual_n(report.summary)
    number = stat_format(report.summary)
    scale = ColourScale(report.summary["mean"], lower_is_better(report.metric))
    for block in pivot_blocks(report.summary, rows, cols):
        title = f"{report.metric}" + (f" — {block.title}" if block.title else "")
        table = Table(title=title, title_justify="left")
        table.add_column(Text(" / ".join(rows)), justify="left")
        for col in block.col_labels:
            table.add_column(Text(col), justify="right", overflow="fold")
        for label in block.row_labels:
            cells = []
            for col in block.col_labels:
                row = block.cells.get((label, col))
                colours = scale(row["mean"]) if row is not None else None
                style = Style(bgcolor=colours[0], color=colours[1]) if colours else Style()
                if row is not None and row["best"]:
                    style += Style(bold=True, underline=True)
                cells.append(Text(pivot_cell(row, verdict, usual, number), style=style))
            table.add_row(Text(label), *cells)
        console.print(table)
    console.print(f"{legend(report.summary)}; {n_note(report.summary)}; brighter = better", highlight=False,
                  style="dim")
    console.print("every group with n, min, max and diverged counts: initsweep report --by "
                  + ",".join(report.summary.attrs.get("keys", [])), highlight=False, style="dim")


# ---------------------------------------------------------------------- show


def _flatten(spec: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """``{"model": {"depth": 8}}`` -> ``{"model.depth": "8"}``; a choice reads ``name(k=v)``."""
    out = {}
    for key, value in spec.items():
        if key in ("v", "sweep"):
            continue
        if isinstance(value, dict) and set(value) == {"name", "params"}:
            params = ", ".join(f"{k}={v}" for k, v in sorted(value["params"].items()))
            out[prefix + key] = f"{value['name']}({params})" if params else str(value["name"])
        elif isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = str(value)
    return out


def run_as_json(detail: dict[str, Any]) -> dict[str, Any]:
    """``initsweep show --format json``: the row, its settings, curves, layers and attempts."""
    from ..jsontext import json_value

    def records(df: pd.DataFrame) -> list[dict[str, Any]]:
        return [{k: json_value(v) for k, v in r.items()} for r in df.to_dict("records")]

    run = {k: json_value(v) for k, v in detail["run"].items() if k != "spec_json"}
    return {"run": run, "settings": json.loads(detail["run"]["spec_json"]), "epochs": records(detail["epochs"]),
            "layers": records(detail["layers"]), "attempts": records(detail["attempts"]),
            "tags": records(detail["tags"].drop(columns="row_id")), **_predictions_json(detail)}


def _pairs(title: str, items: list[tuple[str, Any]]) -> Table:
    table = Table(title=title, show_header=False, title_justify="left", box=None, pad_edge=False)
    table.add_column(style="dim")
    table.add_column(overflow="fold")
    for key, value in items:
        text = fmt_value(value) if isinstance(value, float) else ("—" if value is None else str(value))
        table.add_row(key, escape(text))
    return table


def render_run(console: Console, detail: dict[str, Any]) -> None:
    """Everything stored about one run: settings, outcome, curve, timings, versions, layers."""
    run = detail["run"]
    status = run["status"]
    reused = run.get("reused_from")
    console.print(f"[bold]run {run['run_id']}[/] · sweep {escape(str(run['sweep']))} · "
                  f"[{_STATUS_STYLE.get(status, 'white')}]{status}[/]"
                  + (f" · reused from sweep {escape(reused)}" if isinstance(reused, str) else ""), highlight=False)
    if not detail["tags"].empty:
        console.print(_pairs("tags", [(t.tag, t.note) for t in detail["tags"].itertuples()]))
    console.print(_pairs("settings", list(_flatten(json.loads(run["spec_json"])).items())))
    data = [(c, run.get(c)) for c in ("dataset", "dataset_requested", "data_fallback", "data_location",
                                      "n_train", "n_val", "n_test")]
    console.print(_pairs("data", data))
    outcome = [(c, run.get(c)) for c in ("test_acc", "test_loss", "best_val_acc", "final_val_acc", "final_val_loss",
                                         "final_train_acc", "final_train_loss", "steps", "diverged_step", "verdict")]
    console.print(_pairs("outcome", outcome))
    if isinstance(run.get("error"), str) and run["error"]:
        console.print(f"[bold red]error:[/] {escape(run['error'])}", highlight=False)
    _render_logs(console, run)
    timing = [(c, run.get(c)) for c in ("setup_seconds", "train_seconds", "eval_seconds", "wall_seconds",
                                        "samples_per_sec", "device")]
    console.print(_pairs("timings", timing))
    versions = [(c, run.get(c)) for c in ("initsweep_version", "torch_version", "python_version", "host",
                                          "claimed_at", "finished_at")]
    console.print(_pairs("where and when", versions))
    console.print(_pairs("code and machine", provenance_items(run)))
    _render_epochs(console, detail["epochs"])
    _render_layers(console, detail["layers"])
    _render_predictions(console, detail)
    attempts = detail["attempts"]
    if len(attempts) > 1:
        console.print(f"{len(attempts)} attempts: " + ", ".join(
            f"{r.status} ({r.finished_at or r.claimed_at})" for r in attempts.itertuples()), highlight=False)


def provenance_items(run: Any) -> list[tuple[str, Any]]:
    """What produced a run, as ``show`` lists it: the checkout (the dirty flag as yes/no), the
    machine and the library versions; the saved weights, when there are any."""
    def whole(column: str) -> int | None:  # an INTEGER column, read back as a float beside NULLs
        value = run.get(column)
        return None if value is None or pd.isna(value) else int(value)

    dirty = whole("git_dirty")
    items = [("git_commit", run.get("git_commit")), ("git_dirty", None if dirty is None else "yes" if dirty else "no"),
             ("cpu_model", run.get("cpu_model")), ("threads", whole("threads"))]
    items += [(c, run.get(c)) for c in ("gpu_name", "cuda_version", "cudnn_version", "torchvision_version",
                                        "numpy_version")]
    if isinstance(run.get("checkpoint"), str) and run["checkpoint"]:
        epoch = whole("checkpoint_epoch")
        items.append(("checkpoint", run["checkpoint"] + ("" if epoch is None else f" (epoch {epoch})")))
    return items


def _render_logs(console: Console, run: Any) -> None:
    """A run's warnings (one per line) and, for a failed run, its full traceback."""
    for column, title, style in (("warnings", "warnings", "yellow"), ("traceback", "traceback", "dim")):
        text = run.get(column)
        if isinstance(text, str) and text.strip():
            console.print(f"[bold {style}]{title}:[/]", highlight=False)
            console.print(Text(text.rstrip("\n"), style=style), soft_wrap=True)


def _render_epochs(console: Console, epochs: pd.DataFrame) -> None:
    if epochs.empty:
        console.print("no epochs recorded", style="dim")
        return
    cols = [c for c in ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "seconds") if c in epochs]
    table = Table(title="per epoch", title_justify="left")
    for col in cols:
        table.add_column(col, justify="right")
    for row in epochs[cols].itertuples(index=False):
        table.add_row(*(str(int(v)) if c == "epoch" else fmt_value(v) for c, v in zip(cols, row)))
    console.print(table)
    for col in ("train_loss", "val_acc"):
        if col in epochs and epochs[col].notna().any():
            console.print(f"  {col:<10} {sparkline(epochs[col].tolist())}  "
                          f"{fmt_value(epochs[col].iloc[0])} → {fmt_value(epochs[col].iloc[-1])}", highlight=False)


def _render_layers(console: Console, layers: pd.DataFrame) -> None:
    if layers.empty:
        return
    layers = layers.sort_values(["phase", "layer"], key=lambda c: c.map({"init": 0, "final": 1}) if c.name == "phase"
                                else c, kind="stable")
    cols = [c for c in ("phase", "layer", "kind", "act_std", "act_grad_std", "dead_frac", "saturated_frac")
            if c in layers and (c in ("phase", "layer") or layers[c].notna().any())]
    table = Table(title="per layer", title_justify="left")
    for col in cols:
        table.add_column(col, justify="left" if col in ("phase", "kind") else "right")
    for row in layers[cols].itertuples(index=False):
        table.add_row(*(Text(fmt_value(v) if isinstance(v, float) else str(v)) for v in row))
    console.print(table)
    for phase, part in layers.groupby("phase", sort=False):
        if "act_std" in part and part["act_std"].notna().any():
            console.print(f"  act_std ({phase}, log scale) {sparkline(part['act_std'].tolist(), log=True)}",
                          highlight=False)


def _no_predictions(run: Any) -> str:
    from ..results.store import FINISHED, PREDICTIONS_SINCE

    why = (f"stored before store schema {PREDICTIONS_SINCE}" if run["status"] in FINISHED
           else "the run did not finish")
    return f"no per-example predictions ({why})"


def _predictions_json(detail: dict[str, Any]) -> dict[str, Any]:
    """``show -f json``'s ``predictions`` (per-class accuracy, confusion matrix) or, when the
    run has none, ``predictions: null`` and the reason."""
    from ..report.compare import prediction_summary

    if detail["predictions"] is None:
        return {"predictions": None, "predictions_note": _no_predictions(detail["run"])}
    return {"predictions": prediction_summary(*detail["predictions"])}


def _render_predictions(console: Console, detail: dict[str, Any]) -> None:
    """The confusion matrix of the test split (rows: true class), each row's n and accuracy."""
    from ..report.compare import prediction_summary

    if detail["predictions"] is None:
        console.print(_no_predictions(detail["run"]), style="dim", highlight=False)
        return
    summary = prediction_summary(*detail["predictions"])
    matrix = summary["confusion"]
    console.print(f"test predictions: {summary['correct']}/{summary['n']} right (rows: true class, "
                  "columns: predicted)", highlight=False)
    table = Table()
    table.add_column("true", justify="right")
    for k in range(len(matrix)):
        table.add_column(str(k), justify="right")
    table.add_column("n", justify="right")
    table.add_column("accuracy", justify="right")
    for k, (row, entry) in enumerate(zip(matrix, summary["per_class"])):
        cells = [Text(str(v), style="bold" if j == k else "dim" if v == 0 else "") for j, v in enumerate(row)]
        table.add_row(str(k), *cells, str(entry["n"]), fmt_value(entry["accuracy"]))
    console.print(table)
