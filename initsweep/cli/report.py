"""``initsweep report``, ``export`` and ``show``: compare, export and inspect stored runs.

Thin commands: reading lives in ``results/read.py``, statistics in ``report/stats.py``, files
in ``report/formats.py``, terminal views in ``render_report.py``, figures in ``report/plots.py`` (matplotlib is imported
only for ``--plot`` and ``--format html``).
"""

from __future__ import annotations

import sys
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any, Callable, Optional

import typer
from typer.core import TyperCommand

from .app import PIPE_COLUMNS, Format, FormatOpt, ResultsOpt, app, boundary, console, err_console, print_json
from ..errors import InitsweepError
from ..registry import did_you_mean


def _format_names(command: str) -> list[str]:
    """``--format``'s values: for ``report``, ``table`` (the terminal's view) and the registered
    report formats; for ``export``, the run formats. Read when the command runs or shows its
    help, not at import: the registries sit beside the writers, which import pandas, and
    ``initsweep -h`` does not."""
    from ..report.formats import list_report_formats, list_run_formats

    if command == "report":
        return ["table", *(f.name for f in list_report_formats())]
    return [f.name for f in list_run_formats()]


def _choice(command: str) -> Callable[[str], str]:
    """The parser of ``command``'s ``--format``: a name not registered is the ``ValueError``
    click shows as one usage line, worded as click words a choice, with the nearest name."""
    def parse(value: str) -> str:
        names = _format_names(command)
        if value not in names:
            raise ValueError(f"{value!r} is not one of {', '.join(map(repr, names))}{did_you_mean(value, names)}")
        return value

    return parse


class _FormatsCommand(TyperCommand):
    """A command whose ``--format`` help lists the registry's names as they are when the help
    is shown (a format registered after import is listed too)."""

    def format_help(self, ctx: typer.Context, formatter: Any) -> None:
        for param in self.params:
            if param.name == "fmt":
                param.metavar = "<" + "|".join(_format_names(self.name)) + ">"
        super().format_help(ctx, formatter)


SweepOpt = Annotated[Optional[list[str]], typer.Option("--sweep", help="Only these sweeps (repeatable).")]
WhereOpt = Annotated[Optional[str], typer.Option(
    "--where", help="Keep runs matching, e.g. 'depth >= 8 and activation == \"relu\"' (columns, comparisons, "
                    "and/or/not, in [...]).")]


def _load(results: Path, sweep: list[str] | None, where: str | None, machine: bool):
    """The runs to report on, or None after a friendly line when there are none."""
    from ..results.query import filter_runs
    from ..results.read import is_empty_folder, read_runs

    say = err_console if machine else console
    hint = f"initsweep run configs/smoke.yaml --results {results}"
    if is_empty_folder(results):
        say.print(f"no runs in {results} yet: {hint}", markup=False, highlight=False)
        return None
    runs = read_runs(results, sweep)
    if runs.empty:
        say.print(f"no runs in {results}{' for sweep ' + ', '.join(sweep) if sweep else ''} yet: {hint}",
                  markup=False, highlight=False)
        return None
    runs = filter_runs(runs, where)
    if runs.empty:
        say.print(f"no runs match --where {where!r} ({results})", markup=False, highlight=False)
        return None
    return runs


@contextmanager
def _writing(option: str, path: Path):
    """A file that cannot be written is the user's to fix: one line, exit 2, no traceback."""
    try:
        yield
    except OSError as exc:
        raise InitsweepError(f"{option} {path}: cannot write it ({exc.strerror or exc})") from None


def _figures(runs, metric: str, results: Path):
    from ..results.read import read_curves
    from ..report.plots import make_figures

    epochs, layers = read_curves(results, runs["row_id"].astype(int).tolist() if "row_id" in runs else [])
    return make_figures(runs, metric, epochs, layers)


@app.command(cls=_FormatsCommand)
@boundary
def report(
    results: ResultsOpt = Path("results"),
    sweep: SweepOpt = None,
    metric: Annotated[str, typer.Option("--metric", "-m", help="The runs column to compare.")] = "test_acc",
    by: Annotated[Optional[str], typer.Option(
        "--by", help="Group by these columns, comma-separated (default: every setting that varies except the "
                     "seed); init/activation mean their labels.")] = None,
    pivot: Annotated[Optional[str], typer.Option(
        "--pivot", help="ROWS:COLS, e.g. init:activation: one table per value of the other keys.")] = None,
    where: WhereOpt = None,
    sort: Annotated[Optional[str], typer.Option(
        "--sort", help="Sort by a column; -COL (or --sort=-COL) descending.")] = None,
    top: Annotated[Optional[int], typer.Option(
        "--top", min=1, help="Only the first N groups (the best first unless --sort).")] = None,
    baseline: Annotated[Optional[Path], typer.Option(
        "--baseline", help="Compare with an export (csv/json/parquet) or another results folder.")] = None,
    fmt: Annotated[Optional[str], typer.Option(
        "--format", "-f", parser=_choice("report"), show_default=False,
        help="Output format (default: from --output's suffix, else table).")] = None,
    output: Annotated[Optional[Path], typer.Option(
        "--output", "-o", help="Write to this file instead of stdout.")] = None,
    plot: Annotated[Optional[Path], typer.Option("--plot", help="Write PNG and SVG figures into this folder.")] = None,
    ci: Annotated[float, typer.Option(
        "--ci", help="The level of the seed mean's Student-t interval (ci_low, ci_high, the ±), 0 < CI < 1.")] = 0.95,
) -> None:
    """Compare runs: seed statistics per group, a pivot per depth, baselines, exports and plots.

    RESULTS may also be a file written by [bold]initsweep export[/].
    """
    from ..report.diagnostics import with_seed_verdicts
    from ..report.formats import get_report_format, report_format_of, report_text
    from ..report.stats import build_report
    from ..results.query import filter_runs
    from ..results.read import read_layers, read_runs

    fmt = fmt or (report_format_of(output) if output else None) or "table"
    runs = _load(results, sweep, where, machine=fmt != "table")
    if runs is None:
        return
    base = filter_runs(read_runs(baseline), where) if baseline is not None else None
    rep = replace(build_report(runs, metric, by.split(",") if by else None, pivot, sort, top, base, ci),
                  sweeps=sweep, where=where)
    rep = with_seed_verdicts(rep, read_layers(results, runs["row_id"].astype(int).tolist() if "row_id" in runs else []))
    figures = None
    if plot is not None:
        from ..report.plots import save_figures

        figures = _figures(runs, metric, results)
        with _writing("--plot", plot):
            paths = save_figures(figures, plot)
        err_console.print(f"plots: {len(paths)} files in {plot}", markup=False, highlight=False)
    if fmt == "table":
        from rich.console import Console

        from .render_report import render_report

        if output is None:
            render_report(console, rep)
            return
        with _writing("--output", output), output.open("w", encoding="utf-8") as handle:
            render_report(Console(file=handle, width=PIPE_COLUMNS, no_color=True), rep)
        return
    captions = {}
    if get_report_format(fmt).plots:
        from ..report.plots import png_bytes

        try:
            figures = figures if figures is not None else _figures(runs, metric, results)
        except InitsweepError as exc:
            err_console.print(f"note: the page has no plots ({exc})", markup=False, highlight=False)
            figures = {}
        captions = {(fig.get_suptitle() or name).replace("\n", " · "): png_bytes(fig)
                    for name, fig in figures.items()}
    text = report_text(rep, fmt, captions, str(results))
    if output is None:
        sys.stdout.write(text)
        return
    with _writing("--output", output):
        output.write_text(text, encoding="utf-8")


@app.command("export", cls=_FormatsCommand)
@boundary
def export_cmd(
    results: ResultsOpt = Path("results"),
    sweep: SweepOpt = None,
    where: WhereOpt = None,
    fmt: Annotated[Optional[str], typer.Option(
        "--format", "-f", parser=_choice("export"), show_default=False,
        help="Output format (default: from --output's suffix, else csv).")] = None,
    output: Annotated[Optional[str], typer.Option(
        "--output", "-o", metavar="FILE|URI",
        help="File to write (stdout for csv/json if omitted); for mlflow, the tracking URI (sqlite:///mlflow.db or "
             "a folder).")] = None,
    history: Annotated[bool, typer.Option("--history", help="Every attempt, not only each run's latest.")] = False,
) -> None:
    """Write the raw per-run table (every column) for pandas, spreadsheets or report --baseline, or
    each run to MLflow (--format mlflow: params, per-epoch metrics, tags; again adds only new runs)."""
    from ..report.formats import write_runs
    from ..results.read import format_of, load_results

    # text, not a Path: a tracking URI's sqlite:/// would lose two slashes
    fmt_name = fmt or (format_of(Path(output)) if output else "csv")
    if fmt_name is None:  # never guess: a spreadsheet app would open CSV bytes named .xlsx as garbage
        suffix = Path(output).suffix
        what = f"its suffix {suffix!r}" if suffix else "a name without a suffix"
        raise InitsweepError(f"--output {output}: export cannot tell the format from {what}; it writes "
                             ".csv, .json and .parquet (or .pq), or give --format csv|json|parquet")
    runs = load_results(results, sweep, where, history)
    with _writing("--output", output):
        text = write_runs(runs, fmt_name, output, source=results)
    if output is None:
        sys.stdout.write(text)
    else:
        err_console.print(text or f"{len(runs)} runs -> {output} ({fmt_name})", markup=False, highlight=False)


@app.command()
@boundary
def show(
    run_id: Annotated[str, typer.Argument(help="A run id, or a unique prefix of one.", show_default=False)],
    results: ResultsOpt = Path("results"),
    sweep: Annotated[Optional[str], typer.Option("--sweep", help="The sweep, when two store this run.")] = None,
    fmt: FormatOpt = Format.table,
) -> None:
    """One run in full: settings, status, error, per-epoch curve, timings, versions, layers."""
    from ..results.read import find_run

    detail = find_run(results, run_id.strip(), sweep)
    if fmt is Format.json:
        from .render_report import run_as_json

        print_json(run_as_json(detail))
        return
    from .render_report import render_run

    render_run(console, detail)
