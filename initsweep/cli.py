"""The ``initsweep`` command line: thin Typer commands over the library.

Only this module (and the renderers it calls) prints. Every command runs inside
:func:`_boundary`, which turns a domain error into one line on stderr and its exit code
(0 ok, 1 runs failed / check regressed, 2 bad usage or input, 130 interrupted), so no user
mistake ever ends in a traceback.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Callable, Optional

import typer
from rich.console import Console
from rich.table import Table

from . import __version__
from .errors import EXIT_INTERRUPTED, EXIT_RUNS_FAILED, InitsweepError

app = typer.Typer(
    name="initsweep",
    help="Sweep weight initializers x activations x depth, store every run, explain the signal.",
    no_args_is_help=True,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
# Rich draws 80 columns when output is not a terminal (CI logs, pipes); tables need more.
_PIPE_WIDTH = None if sys.stdout.isatty() else int(os.environ.get("COLUMNS", 160))
console = Console(width=_PIPE_WIDTH)
err_console = Console(stderr=True, width=None if sys.stderr.isatty() else int(os.environ.get("COLUMNS", 160)))


class Format(str, Enum):
    table = "table"
    json = "json"


def _boundary(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Run a command; a domain error becomes one clean line per problem and an exit code."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except InitsweepError as exc:
            for line in exc.lines():
                err_console.print(f"[bold red]error:[/] {line}", markup=True, highlight=False, soft_wrap=True)
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            err_console.print("interrupted", highlight=False)
            raise typer.Exit(EXIT_INTERRUPTED) from None

    return wrapper


def _print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def _version(value: bool) -> None:
    if value:
        import torch

        console.print(f"initsweep {__version__} (torch {torch.__version__})", highlight=False)
        raise typer.Exit()


@app.callback()
def main_callback(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Show the version and exit.")] = False,
) -> None:
    """Sweep weight initializers x activations x depth on MNIST; store, compare and explain every run."""


ConfigArg = Annotated[Path, typer.Argument(help="Sweep config (YAML), e.g. configs/grid.yaml.", show_default=False)]
FormatOpt = Annotated[Format, typer.Option("--format", "-f", help="Output format.")]


@app.command()
@_boundary
def plan(
    config: ConfigArg,
    fmt: FormatOpt = Format.table,
    show_all: Annotated[bool, typer.Option("--all", help="List every run, not only the first 40.")] = False,
) -> None:
    """Show the runs a config expands to, its axes, exclusions and the work it will take."""
    from .config import expand, load_config
    from .planner import plan_summary

    summary = plan_summary(expand(load_config(config)))
    if fmt is Format.json:
        _print_json(summary)
        return
    from .render import render_plan

    render_plan(console, summary, limit=None if show_all else 40)


ResultsOpt = Annotated[Path, typer.Option("--results", "-r", help="Results folder (holds initsweep.db).")]


def _sigterm_as_interrupt() -> None:
    """SIGTERM (a CI cancel, ``kill``) stops a sweep like Ctrl-C: in-flight run marked, exit 130."""

    def handler(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)


@app.command()
@_boundary
def run(
    config: ConfigArg,
    results: ResultsOpt = Path("results"),
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N or mps (auto takes CUDA when present).")] = "auto",
    fresh: Annotated[bool, typer.Option("--fresh", help="Rerun finished runs too (old rows are kept as history).")] = False,
    max_runs: Annotated[Optional[int], typer.Option("--max-runs", min=1, help="Run at most N runs now.")] = None,
    offline: Annotated[bool, typer.Option("--offline", help="Never download, never substitute the MNIST sample.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only the summary.")] = False,
) -> None:
    """Train every run of CONFIG not finished yet, storing each the moment it ends (resumable)."""
    from .report import best_per_depth
    from .render import SweepDisplay, render_sweep_summary
    from .store import Store
    from .sweep import run_sweep

    _sigterm_as_interrupt()
    display = SweepDisplay(console, err_console, quiet=quiet)
    try:
        outcome = run_sweep(config, results_dir=results, device=device, fresh=fresh, max_runs=max_runs,
                            offline=offline, observer=display)
    finally:
        display.close()
    with Store(results) as store:
        df = store.runs_frame(outcome.sweep)
    render_sweep_summary(console, outcome, best_per_depth(df), df["status"].value_counts().to_dict())
    if outcome.interrupted:
        err_console.print("interrupted: finished runs are stored; run the same command again to resume",
                          highlight=False)
        raise typer.Exit(EXIT_INTERRUPTED)
    if outcome.counts.get("failed"):
        raise typer.Exit(EXIT_RUNS_FAILED)


@app.command()
@_boundary
def report(
    results: ResultsOpt = Path("results"),
    sweep: Annotated[Optional[list[str]], typer.Option("--sweep", help="Only these sweeps (repeatable).")] = None,
) -> None:
    """A table of the stored runs (one row per run, its latest attempt)."""
    from .render import render_runs
    from .store import Store

    with Store(results, create=False) as store:
        df = store.runs_frame(sweep)
    if df.empty:
        console.print(f"no runs in {results} yet: initsweep run configs/smoke.yaml --results {results}",
                      highlight=False)
        return
    columns = ["run_id", "sweep", *[c for c in ("init", "activation", "arch", "depth", "width") if c in df],
               "seed", "status", "test_acc", "best_val_acc", "wall_seconds"]
    render_runs(console, df, columns)


@app.command("list-inits")
@_boundary
def list_inits_cmd(fmt: FormatOpt = Format.table) -> None:
    """The registered initializers, their formulas and parameters."""
    from .inits import list_inits

    entries = [{"name": e.name, "formula": e.formula, "description": e.description,
                "params": {p.name: {"default": p.default, "help": p.help,
                                    "choices": list(p.choices) if p.choices else None} for p in e.params}}
               for e in list_inits()]
    if fmt is Format.json:
        _print_json(entries)
        return
    table = Table(title="Initializers (fan_in = in_channels x kernel area)", show_lines=False)
    for col in ("name", "formula", "parameters", "description"):
        table.add_column(col, overflow="fold")
    for e in list_inits():
        table.add_row(e.name, e.formula, ", ".join(p.describe() for p in e.params), e.description)
    console.print(table)


@app.command("list-activations")
@_boundary
def list_activations_cmd(fmt: FormatOpt = Format.table) -> None:
    """The registered activations, their gain for ``gain: auto`` and parameters."""
    from .activations import list_activations

    rows = [{"name": a.name, "formula": a.formula, "family": a.family,
             "gain": round(a.gain({p.name: p.default for p in a.params}), 6),
             "gain_source": "calculate_gain" if a.gain_key else "1/sqrt(E[phi(z)^2])",
             "params": {p.name: p.default for p in a.params}, "description": a.description}
            for a in list_activations()]
    if fmt is Format.json:
        _print_json(rows)
        return
    table = Table(title="Activations (gain: what gain: auto resolves to)")
    for col in ("name", "formula", "family", "gain", "from", "parameters"):
        table.add_column(col, overflow="fold")
    for r, a in zip(rows, list_activations()):
        table.add_row(r["name"], r["formula"], r["family"], f"{r['gain']:.4f}", r["gain_source"],
                      ", ".join(p.describe() for p in a.params))
    console.print(table)


def main() -> None:
    """Console-script entry point."""
    app()
