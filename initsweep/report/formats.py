"""Run tables out to files, and report tables as markdown, html, csv and json text.

Each output format is one registry entry: ``_REPORT_FORMATS`` for ``initsweep report``
(the writer, the file suffixes that imply it, its help), ``_RUN_FORMATS`` for ``initsweep
export``. The CLI takes its ``--format`` choices, its suffix inference and its dispatch from
them, so a new format is a writer and its ``_register_report_format`` entry.

What ``initsweep export`` writes (csv, json, parquet), ``results/read.py`` reads back to
the same values: csv floats are written as Python's shortest round-trip repr, json through
the strict stdlib encoder (pandas' ``to_json`` keeps 10 digits and would turn a zero delta
into noise).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pandas as pd

from ..errors import ParamError
from ..jsontext import json_text
from ..registry import unknown_name_error
from ..results.read import need_pyarrow, read_epochs
from .stats import BEST, TIED, count_runs, half_width


# ---------------------------------------------------------------------- the registries


@dataclass(frozen=True)
class FileFormat:
    """One ``--format`` value. ``write`` is ``(report, figures, source) -> str`` for a report
    format and ``(runs, output) -> str | None`` (the text for stdout, or None once written)
    for a run format. ``binary`` formats go to a file only; ``plots`` asks the CLI to draw
    the figures (matplotlib) for the writer; ``suffixes`` are the ``--output`` names that
    imply the format. A run format with ``uri`` writes into a store it opens itself (MLflow's
    tracking URI): ``output`` is required and handed over as text, and the writer returns the
    line that says what it wrote; ``curves`` also hands it the runs' per-epoch rows
    (``(runs, output, epochs)``; None when the runs come from an export file)."""

    name: str
    write: Callable[..., Any]
    help: str
    suffixes: tuple[str, ...] = ()
    binary: bool = False
    plots: bool = False
    uri: bool = False
    curves: bool = False


_REPORT_FORMATS: dict[str, FileFormat] = {}
_RUN_FORMATS: dict[str, FileFormat] = {}


def _register_report_format(entry: FileFormat) -> None:
    _REPORT_FORMATS[entry.name] = entry


def _register_run_format(entry: FileFormat) -> None:
    _RUN_FORMATS[entry.name] = entry


def get_report_format(name: str) -> FileFormat:
    try:
        return _REPORT_FORMATS[name]
    except KeyError:
        raise unknown_name_error("report format", name, _REPORT_FORMATS) from None


def list_report_formats() -> list[FileFormat]:
    return list(_REPORT_FORMATS.values())


def get_run_format(name: str) -> FileFormat:
    try:
        return _RUN_FORMATS[name]
    except KeyError:
        raise unknown_name_error("run format", name, _RUN_FORMATS) from None


def list_run_formats() -> list[FileFormat]:
    return list(_RUN_FORMATS.values())


def report_format_of(path: Path) -> str | None:
    """The report format ``--output``'s suffix implies (``report.md`` -> markdown), if any."""
    return next((f.name for f in _REPORT_FORMATS.values() if path.suffix.lower() in f.suffixes), None)


# ---------------------------------------------------------------------- writing


def to_json_text(df: pd.DataFrame) -> str:
    """Records, one object per row, floats exact (shortest round-trip repr), NaN as null."""
    return json_text(df.to_dict("records"), indent=1)


def write_runs(df: pd.DataFrame, fmt: str, output: Path | str | None, source: str | Path | None = None) -> str | None:
    """Write the raw runs table; returns the text when ``output`` is None (stdout), or a ``uri``
    format's line saying what it wrote. ``source`` (the results folder or export file the runs
    were read from) is where a ``curves`` format's per-epoch rows are read."""
    entry = get_run_format(fmt)
    if entry.uri and output is None:
        raise ParamError(f"{{format={fmt}}} needs {{output}} URI (a tracking store: sqlite:///mlflow.db or a folder)")
    if entry.binary and output is None:
        raise ParamError(f"{{format={fmt}}} needs {{output}} FILE ({fmt} is binary)")
    if entry.uri:
        output = str(output)
    elif output is not None:
        output = Path(output)
    if not entry.curves:
        return entry.write(df, output)
    row_ids = df["row_id"].astype(int).tolist() if "row_id" in df else []
    return entry.write(df, output, read_epochs(source, row_ids) if source is not None else None)


def _text_writer(to_text: Callable[[pd.DataFrame], str]) -> Callable[[pd.DataFrame, Path | None], str | None]:
    def write(df: pd.DataFrame, output: Path | None) -> str | None:
        text = to_text(df)
        if output is None:
            return text
        output.write_text(text, encoding="utf-8")
        return None

    return write


def _write_parquet(df: pd.DataFrame, output: Path) -> None:
    need_pyarrow("parquet", param="format")
    df.to_parquet(output, index=False)


_register_run_format(FileFormat("csv", _text_writer(lambda df: df.to_csv(index=False)),
                                 "comma-separated, one row per run"))
_register_run_format(FileFormat("json", _text_writer(to_json_text), "a list of run records"))
_register_run_format(FileFormat("parquet", _write_parquet, "columnar, needs pyarrow", binary=True))


def _write_mlflow(df: pd.DataFrame, uri: str, epochs: pd.DataFrame | None) -> str:
    from .mlflow_export import export_to_mlflow

    return export_to_mlflow(df, epochs, uri).summary()


_register_run_format(FileFormat("mlflow", _write_mlflow, "one MLflow run per run, into a tracking URI; runs "
                                "exported before are skipped; needs initsweep[mlflow]",
                                uri=True, curves=True))


def markdown_table(df: pd.DataFrame, right: set[str] = frozenset(), align: bool = True) -> str:
    """The one GitHub-flavoured markdown table writer: each cell ``str(value)`` with ``|``
    escaped and a line break as `` · `` (either would break the row); ``right`` columns and
    numeric ones right-aligned, the others left (``align=False``: plain ``---``, as the CI
    summary writes it)."""
    def cell(value: Any) -> str:
        return str(value).replace("|", "\\|").replace("\n", " · ")

    def rule(column: str) -> str:
        if not align:
            return "---"
        return "---:" if column in right or pd.api.types.is_numeric_dtype(df[column]) else ":---"

    lines = ["| " + " | ".join(cell(c) for c in df.columns) + " |",
             "|" + "|".join(rule(c) for c in df.columns) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


# ---------------------------------------------------------------------- cells people read

DIVERGED_ALL, DIVERGED_SOME, FALLBACK, SINGLE = "†", "‡", "§", "¹"


def ci_percent(table: pd.DataFrame) -> str:
    """``95%``: the level of the intervals in a summary (``summarize(ci=...)``)."""
    return f"{table.attrs.get('ci', 0.95) * 100:g}%"


def mark_notes(summary: pd.DataFrame) -> list[str]:
    """The footnotes a view of ``summary`` owes its reader: what ``★`` and ``≈`` claim, when a
    cell carries them (see ``stats.best_marks``), and why a group with one run has no interval."""
    marks = set(summary["mark"].dropna()) if "mark" in summary else set()
    notes = []
    if BEST in marks:
        notes.append(f"{BEST} best of its table: better than every other cell at 5% (paired t-test by seed)")
    if TIED in marks:
        notes.append(f"{TIED}: not distinguishable from the best at 5%, paired by seed")
    if (summary["n"] == 1).any():
        notes.append(f"{SINGLE} n = 1: no interval")
    return notes


def legend(summary: pd.DataFrame) -> str:
    """The line under a pivot: its marks, and what the ± is."""
    return " · ".join([f"{DIVERGED_ALL} every seed diverged", f"{DIVERGED_SOME} some seeds diverged",
                       *mark_notes(summary), f"mean ± half-width of its {ci_percent(summary)} CI over seeds"])


def fallback_note(summary: pd.DataFrame) -> str | None:
    """The footnote every view prints when some group trained on substitute data."""
    if "data_fallback" not in summary or summary["data_fallback"].isna().all():
        return None
    pairs = ", ".join(pd.unique(summary["data_fallback"].dropna()))
    return (f"{FALLBACK} trained on other data than the config asked for (data.fallback): {pairs}; "
            "not comparable with runs on the requested dataset")


# cividis at 9 even steps: readable with every common colour-vision deficiency, and in greyscale.
_CIVIDIS = ["#00224e", "#1a386f", "#434e6c", "#61656f", "#7d7c78", "#9b9476", "#bcae6c", "#dec958", "#fee838"]


def fmt_value(value: Any) -> str:
    if value is None or pd.isna(value):
        return "—"
    value = float(value)
    if value != 0 and (abs(value) >= 1e4 or abs(value) < 1e-3):
        return f"{value:.3g}"
    return f"{value:.4f}"


def number_format(values: Any, spreads: Any = ()) -> Callable[[Any], str]:
    """One format for a metric's column (its means, and the spreads printed beside them), so a
    mean and its ± read alike: 4 decimals, more when a non-zero spread would read 0 (up to 8;
    an exact 0 is printed as the honest ``0.0000``); scientific, 3 digits, for every value when
    a mean is 1e4 or more or below 1e-3 (a loss that explodes)."""
    def magnitudes(column: Any) -> list[float]:
        numbers = pd.to_numeric(pd.Series(list(column), dtype=object), errors="coerce").dropna().abs()
        return [float(v) for v in numbers if 0 < v < float("inf")]

    if any(v >= 1e4 or v < 1e-3 for v in magnitudes(values)):
        spec = ".2e"
    else:
        small = magnitudes(spreads)
        spec = f".{min(8, max(4, -math.floor(math.log10(min(small))))) if small else 4}f"
    return lambda value: "—" if value is None or pd.isna(value) else format(float(value), spec)


def stat_format(table: pd.DataFrame) -> Callable[[Any], str]:
    """The number format of a summary's means and their intervals (see :func:`number_format`)."""
    return number_format(table["mean"], table["ci_high"] - table["mean"])


def fmt_stat(mean: Any, spread: Any, n: Any, sep: str = " ± ", number: Callable[[Any], str] = fmt_value) -> str:
    """``mean ± spread`` (an interval's half-width), both through ``number``; a single run's mean
    alone, marked ``¹`` (one run has no interval, and its spread is unknown, not 0)."""
    if pd.isna(n) or n == 0 or pd.isna(mean):
        return "—"
    if n < 2:
        return number(mean) + SINGLE
    if pd.isna(spread):
        return number(mean)
    return f"{number(mean)}{sep}{number(spread)}"


def _mark(row: pd.Series) -> str:
    return row["mark"] if isinstance(row.get("mark"), str) else ""


def fmt_change(delta: Any, change: str) -> str:
    """``+0.0123 ▲`` (better), ``−0.0100 ▼`` (worse), ``0 =``; new/missing/changed as words."""
    if change == "same":
        return "0 ="
    if change not in ("better", "worse"):
        return change
    return f"{'+' if delta > 0 else '−'}{fmt_value(abs(delta))} {'▲' if change == 'better' else '▼'}"


def fmt_diverged(row: pd.Series) -> str:
    finished = row["runs"] - row["unfinished"]
    return "—" if pd.isna(finished) else f"{int(row['diverged'])}/{int(finished)}"


def usual_n(summary: pd.DataFrame) -> int | None:
    """The n most groups have (the larger on a tie); a pivot cell with another n says so."""
    counts = summary["n"].dropna().astype(int).value_counts()
    return None if counts.empty else int(max(counts.index, key=lambda n: (counts[n], n)))


def n_note(summary: pd.DataFrame) -> str:
    """What a pivot's legend says about n: ``n = 2 per cell``, and whether some cells differ."""
    usual = usual_n(summary)
    if usual is None:
        return "no cell has a value"
    differs = (summary["n"].dropna().astype(int) != usual).any()
    return f"n = {usual} per cell" + (", other n marked (n=k)" if differs else "")


def pivot_cell(row: pd.Series | None, verdict: bool = False, usual: int | None = None,
               number: Callable[[Any], str] = fmt_value) -> str:
    """``0.9123±0.0081†★``: the cell's mean ± its interval's half-width in ``number``'s format
    (:func:`stat_format`) and its marks (see :func:`legend`), then ``(n=1)`` where its n is not
    the ``usual`` one (a seed missing or failed); with ``verdict``, the group's diagnosis on a
    second line."""
    if row is None:
        return "·"
    if verdict and isinstance(row.get("verdict"), str):
        return pivot_cell(row, usual=usual, number=number) + "\n" + row["verdict"]
    text = fmt_stat(row["mean"], row["ci_high"] - row["mean"], row["n"], sep="±", number=number)
    finished = row["runs"] - row["unfinished"]
    if row["diverged"] and row["diverged"] == finished:
        text += DIVERGED_ALL
    elif row["diverged"]:
        text += DIVERGED_SOME
    if isinstance(row.get("data_fallback"), str):
        text += FALLBACK
    text += _mark(row)
    if usual is not None and not pd.isna(row["n"]) and int(row["n"]) != usual:
        text += f" (n={int(row['n'])})"
    return text


def factor_texts(table: pd.DataFrame) -> dict[str, list[str]]:
    """``act x/layer`` and ``grad x/layer``: each group's median factor over its seeds and
    its range, ``0.912 [0.880–0.931]`` (``—`` where the group has no stored diagnostics)."""
    from ..verdicts import Spread

    def text(median: Any, low: Any, high: Any) -> str:
        return "—" if pd.isna(median) else Spread(float(median), float(low), float(high)).text()

    return {label: [text(*v) for v in zip(table[col], table[f"{col}_min"], table[f"{col}_max"])]
            for label, col in (("act x/layer", "forward_factor"), ("grad x/layer", "backward_factor"))}


def display_table(table: pd.DataFrame, metric: str) -> pd.DataFrame:
    """The flat view as strings, with the columns people read (the CSV/JSON keep raw numbers)."""
    keys = table.attrs.get("keys", [])
    out = pd.DataFrame({k: ["—" if v is None or pd.isna(v) else str(v) for v in table[k]] for k in keys},
                       index=table.index)
    number = stat_format(table)
    out[f"{metric} (mean ± {ci_percent(table)} CI)"] = [
        fmt_stat(r["mean"], r["ci_high"] - r["mean"], r["n"], number=number) + _mark(r) for _, r in table.iterrows()]
    for col in ("ci_low", "ci_high", "std"):
        out[col] = table[col].map(number)
    out["n"] = [fmt_value(v) if pd.isna(v) else str(int(v)) for v in table["n"]]
    out["min"] = table["min"].map(number)
    out["max"] = table["max"].map(number)
    out["diverged"] = [fmt_diverged(r) for _, r in table.iterrows()]
    if (table["unfinished"].fillna(0) > 0).any():
        out["unfinished"] = table["unfinished"].map(lambda v: "—" if pd.isna(v) else str(int(v)))
    if table["verdict"].notna().any():
        out["verdict"] = table["verdict"].map(lambda v: "—" if v is None or pd.isna(v) else str(v))
    if "forward_factor" in table:  # report/diagnostics.py: median [min–max] over the group's seeds
        for label, texts in factor_texts(table).items():
            out[label] = texts
    if "data_fallback" in table:
        out["data fallback"] = table["data_fallback"].map(lambda v: f"{FALLBACK} {v}" if isinstance(v, str) else "—")
    if "change" in table:
        base_half = half_width(table["base_std"], table["base_n"], table.attrs.get("ci", 0.95))
        out["baseline"] = [fmt_stat(r["base_mean"], half, r["base_n"], number=number)
                           for (_, r), half in zip(table.iterrows(), base_half)]
        out["Δ"] = [fmt_change(r["delta"], r["change"]) for _, r in table.iterrows()]
    return out


class ColourScale:
    """Maps a metric value to a cividis background, brighter = better, on one scale for
    every table of a report (so depth 2 and depth 20 compare by colour too). A metric that
    spans more than two decades (a loss of 2 next to 1e4) is scaled by its logarithm."""

    def __init__(self, values: pd.Series, lower_better: bool):
        finite = pd.to_numeric(values, errors="coerce").dropna()
        finite = finite[finite.abs() < float("inf")]
        self.log = bool(len(finite)) and (finite > 0).all() and finite.max() > 100 * finite.min()
        scaled = finite.map(math.log10) if self.log else finite
        self.lo, self.hi = (scaled.min(), scaled.max()) if len(scaled) else (0.0, 1.0)
        self.lower_better = lower_better

    def __call__(self, value: Any) -> tuple[str, str] | None:
        """(background, foreground) hex colours, or None for a missing value."""
        if value is None or pd.isna(value) or (self.log and value <= 0):
            return None
        x = math.log10(value) if self.log else float(value)
        t = 0.5 if self.hi == self.lo else (x - self.lo) / (self.hi - self.lo)
        t = 1.0 - t if self.lower_better else t
        position = min(max(t, 0.0), 1.0) * (len(_CIVIDIS) - 1)
        i = min(int(position), len(_CIVIDIS) - 2)
        a, b = (tuple(int(c[k:k + 2], 16) for k in (1, 3, 5)) for c in _CIVIDIS[i:i + 2])
        rgb = [round(p + (q - p) * (position - i)) for p, q in zip(a, b)]
        luminance = (0.2126 * rgb[0] + 0.7152 * rgb[1] + 0.0722 * rgb[2]) / 255
        return "#" + "".join(f"{c:02x}" for c in rgb), ("#000000" if luminance > 0.45 else "#ffffff")


# ---------------------------------------------------------------------- report as text


def report_frame(report: Any) -> pd.DataFrame:
    """The machine-readable table of a report: the wide pivot when one was asked for (the means,
    then each cell's interval and mark), else the flat table; led by a ``metric`` column so a
    file says what it measured."""
    from .stats import pivot_frame

    also = ("ci_low", "ci_high", "mark")
    frame = pivot_frame(report.summary, *report.pivot, also=also) if report.pivot_asked else report.table
    frame = frame.copy()
    frame.insert(0, "metric", report.metric)
    return frame


def _pivot_markdown(report: Any) -> list[str]:
    from .stats import pivot_blocks

    rows, cols = report.pivot
    verdict = report.summary["verdict"].notna().any()
    usual = usual_n(report.summary)
    number = stat_format(report.summary)
    lines = [f"### {report.metric} by {' / '.join(rows)} × {' / '.join(cols)}", ""]
    for block in pivot_blocks(report.summary, rows, cols):
        if block.title:
            lines += [f"**{block.title}**", ""]
        grid = pd.DataFrame(
            [[label, *(_bold(pivot_cell(block.cells.get((label, col)), verdict, usual, number),
                             block.cells.get((label, col))) for col in block.col_labels)]
             for label in block.row_labels],
            columns=[" / ".join(rows), *block.col_labels])
        lines += [markdown_table(grid, right=set(block.col_labels)), ""]
    return lines + [f"_{legend(report.summary)}; {n_note(report.summary)}_", ""]


def _bold(text: str, row: pd.Series | None) -> str:
    return f"**{text}**" if row is not None and row.get("best") else text


def _selection_note(report: Any, code: Callable[[str], str]) -> str:
    """``Runs: --sweep grid · --where depth >= 8``: the options the runs were picked by, as
    typed, each through ``code`` (a code span), so a file read later says what it covers."""
    where = " ".join((report.where or "").split("\n")).strip()
    picked = [f"--sweep {name}" for name in report.sweeps or []] + ([f"--where {where}"] if where else [])
    if not picked:
        return "Runs: every run in the results (no --sweep, no --where)"
    same = " (the baseline filtered by the same --where)" if report.compared and where else ""
    return "Runs: " + " · ".join(map(code, picked)) + same


def _code_span(text: str) -> str:
    """``text`` as a markdown code span, whatever backticks it holds."""
    fence = "`" * (max(map(len, re.findall("`+", text)), default=0) + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def report_markdown(report: Any) -> str:
    """Markdown for a pull request: which runs it covers, the pivot (when the view has one),
    the full table, and the baseline's new and missing runs."""
    counted = count_runs(report.runs, report.summary.attrs.get("keys", []))
    lines = [f"## initsweep report: {report.metric}", "",
             f"{counted} in {len(report.summary)} groups; statistics over seeds.", "",
             _selection_note(report, _code_span), ""]
    if report.pivot:
        lines += _pivot_markdown(report)
    shown = display_table(report.table, report.metric)
    lines += [markdown_table(shown, right=set(shown.columns[len(report.table.attrs.get('keys', [])):])), ""]
    notes = mark_notes(report.table)
    if notes:
        lines += [f"_{' · '.join(notes)}_", ""]
    note = fallback_note(report.summary)
    if note:
        lines += [f"_{note}_", ""]
    for title, runs in (("New runs (not in the baseline)", report.new_runs),
                        ("Missing runs (only in the baseline)", report.missing_runs)):
        if runs is not None and len(runs):
            lines += [f"### {title}", "", markdown_table(runs.astype(object).where(runs.notna(), "—")), ""]
    return "\n".join(lines)


def report_text(report: Any, fmt: str, figures: dict[str, bytes] | None = None, source: str = "") -> str:
    """The report in a registered format (see :func:`list_report_formats`); ``figures`` (PNG bytes
    by caption) and ``source`` (the results it came from) for a page that shows them."""
    return get_report_format(fmt).write(report, figures or {}, source)


# ---------------------------------------------------------------------- report as one html file

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:2rem auto;max-width:1200px;
padding:0 1rem;color:#1b1b1b}
table{border-collapse:collapse;margin:.5rem 0 1.5rem;font-size:.9rem}
th,td{border:1px solid #d0d0d0;padding:.25rem .5rem;text-align:right;font-variant-numeric:tabular-nums}
th{background:#f3f3f3}.key{text-align:left}
td.best{font-weight:700;outline:3px solid #d55e00;outline-offset:-3px}
.note{color:#555;font-size:.85rem}figure{margin:1rem 0}img{max-width:100%;height:auto}
"""


def _html_table(df: pd.DataFrame, left: int, styles: dict[tuple[int, int], str] | None = None,
                classes: dict[tuple[int, int], str] | None = None) -> str:
    """A table of already formatted strings; the first ``left`` columns are labels."""
    from html import escape

    styles, classes = styles or {}, classes or {}
    head = "".join(f'<th{" class=key" if j < left else ""}>{escape(str(c))}</th>' for j, c in enumerate(df.columns))
    body = []
    for i, row in enumerate(df.itertuples(index=False)):
        cells = []
        for j, value in enumerate(row):
            cls = " ".join(filter(None, ["key" if j < left else "", classes.get((i, j), "")]))
            attrs = (f' class="{cls}"' if cls else "") + (f' style="{styles[(i, j)]}"' if (i, j) in styles else "")
            cells.append(f"<td{attrs}>{escape(str(value)).replace(chr(10), '<br>')}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _pivot_html(report: Any) -> list[str]:
    from html import escape

    from .stats import lower_is_better, pivot_blocks

    rows, cols = report.pivot
    verdict = report.summary["verdict"].notna().any()
    usual = usual_n(report.summary)
    number = stat_format(report.summary)
    scale = ColourScale(report.summary["mean"], lower_is_better(report.metric))
    parts = [f"<h2>{escape(report.metric)} by {escape(' / '.join(rows))} × {escape(' / '.join(cols))}</h2>",
             f'<p class="note">{escape(legend(report.summary))}; {escape(n_note(report.summary))}; brighter = better, '
             "one colour scale for every table.</p>"]
    for block in pivot_blocks(report.summary, rows, cols):
        grid, styles, classes = [], {}, {}
        for i, label in enumerate(block.row_labels):
            grid.append([label])
            for j, col in enumerate(block.col_labels, start=1):
                row = block.cells.get((label, col))
                grid[-1].append(pivot_cell(row, verdict, usual, number))
                colours = scale(row["mean"]) if row is not None else None
                if colours:
                    styles[(i, j)] = f"background:{colours[0]};color:{colours[1]}"
                if row is not None and row["best"]:
                    classes[(i, j)] = "best"
        if block.title:
            parts.append(f"<h3>{escape(block.title)}</h3>")
        parts.append(_html_table(pd.DataFrame(grid, columns=[" / ".join(rows), *block.col_labels]), 1,
                                 styles, classes))
    return parts


def report_html(report: Any, figures: dict[str, bytes], source: str) -> str:
    """One self-contained page (inline CSS, plots as base64 PNG, every text escaped) to attach
    to a pull request: the pivot, the full table, the baseline's changes, the plots."""
    import base64
    from html import escape

    from .. import __version__

    keys = len(report.table.attrs.get("keys", []))
    counted = count_runs(report.runs, report.summary.attrs.get("keys", []))
    parts = [f"<h1>initsweep report: {escape(report.metric)}</h1>",
             f'<p class="note">{escape(source)} · {escape(counted)} in {len(report.summary)} groups · '
             f"initsweep {escape(__version__)} · statistics over seeds</p>",
             f"<p>{_selection_note(report, lambda text: f'<code>{escape(text)}</code>')}</p>"]
    if report.pivot:
        parts += _pivot_html(report)
    parts += ["<h2>All groups</h2>", _html_table(display_table(report.table, report.metric), keys)]
    notes = mark_notes(report.table)
    if notes:
        parts.append(f'<p class="note">{escape(" · ".join(notes))}</p>')
    note = fallback_note(report.summary)
    if note:
        parts.append(f'<p class="note"><strong>{escape(note)}</strong></p>')
    for title, runs in (("New runs (not in the baseline)", report.new_runs),
                        ("Missing runs (only in the baseline)", report.missing_runs)):
        if runs is not None and len(runs):
            parts += [f"<h2>{escape(title)}</h2>", _html_table(runs.astype(object).where(runs.notna(), "—"), 0)]
    if figures:
        parts.append("<h2>Plots</h2>")
    for caption, png in figures.items():
        data = base64.b64encode(png).decode("ascii")
        parts.append(f'<figure><img src="data:image/png;base64,{data}" alt="{escape(caption)}">'
                     f"<figcaption>{escape(caption)}</figcaption></figure>")
    return ("<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>initsweep report: {escape(report.metric)}</title><style>{_CSS}</style></head>\n<body>\n"
            + "\n".join(parts) + "\n</body></html>\n")


_register_report_format(FileFormat("markdown", lambda report, figures, source: report_markdown(report),
                                  "tables for a pull request", suffixes=(".md", ".markdown")))
_register_report_format(FileFormat("csv", lambda report, figures, source: report_frame(report).to_csv(index=False),
                                  "the table, raw numbers", suffixes=(".csv",)))
_register_report_format(FileFormat("json", lambda report, figures, source: to_json_text(report_frame(report)),
                                  "the table as records, raw numbers", suffixes=(".json",)))
_register_report_format(FileFormat("html", report_html, "one self-contained page with the plots",
                                  suffixes=(".html", ".htm"), plots=True))
