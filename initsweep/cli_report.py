"""``initsweep report``: compare stored runs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from .cli_common import ResultsOpt, app, boundary, console


@app.command()
@boundary
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
