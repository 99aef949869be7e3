"""``initsweep merge`` (and ``check``): the commands a CI pipeline calls around ``run``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .cli_common import app, boundary, console, err_console
from .errors import EXIT_RUNS_FAILED


@app.command()
@boundary
def merge(
    sources: Annotated[list[Path], typer.Argument(help="Results folders or initsweep.db files (e.g. one per shard).",
                                                   show_default=False)],
    into: Annotated[Path, typer.Option("--into", help="Results folder to merge into (created if needed).")],
) -> None:
    """Combine results (e.g. CI shards) into one folder: no duplicates; conflicts reported.

    Idempotent: merging the same results again adds nothing. A run present on both sides
    with different results is a conflict: it is listed, the folder keeps what it had, and
    the command exits 1.
    """
    from .ci import merge as merge_results

    report = merge_results(sources, into)
    console.print(f"merged {report.sources} source(s) into {into}: {report.added} run(s) added, "
                  f"{report.identical} already there", highlight=False)
    for conflict in report.conflicts:
        err_console.print(f"conflict: {conflict}", highlight=False, markup=False)
    if report.conflicts:
        raise typer.Exit(EXIT_RUNS_FAILED)
