"""``initsweep merge`` (and ``check``): the commands a CI pipeline calls around ``run``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Optional

import typer

from .app import ResultsOpt, app, boundary, console, err_console, write_output
from ..errors import EXIT_RUNS_FAILED, InitsweepError


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
    from ..results.merge import merge as merge_results

    report = merge_results(sources, into)
    console.print(f"merged {report.sources} source(s) into {into}: {report.added} run(s) added, "
                  f"{report.identical} already there", highlight=False)
    for conflict in report.conflicts:
        err_console.print(f"conflict: {conflict}", highlight=False, markup=False)
    if report.conflicts:
        raise typer.Exit(EXIT_RUNS_FAILED)


@app.command()
@boundary
def check(
    baseline: Annotated[Path, typer.Option("--baseline", help="An `initsweep export` file or a results folder.")],
    results: ResultsOpt = Path("results"),
    metric: Annotated[str, typer.Option(help="Metric compared per group (seed mean).")] = "test_acc",
    tolerance: Annotated[float, typer.Option(help="Allowed drop of the group mean, in the metric's units.")] = 0.01,
    fail_on: Annotated[str, typer.Option(help="Also fail on: diverged, failed, missing (comma-separated).")]
    = "diverged,failed,missing",
    junit: Annotated[Optional[Path], typer.Option(help="Write a JUnit XML file: one testcase per group.")] = None,
    summary_md: Annotated[Optional[Path], typer.Option(
        help="Write a Markdown diff \\[default: appended to $GITHUB_STEP_SUMMARY when set].")] = None,
) -> None:
    """Regression gate: compare the runs with a baseline, group by group (seed means).

    Exit 1 on a drop beyond --tolerance, a newly diverged or failed run, or a missing
    group (as --fail-on says); 0 when everything holds; 2 on bad input.
    """
    from ..report.check import check_against, check_cases
    from ..report.ci import junit_xml, summary_table
    from ..results.read import read_runs
    from .render import render_runs

    current, base = read_runs(results), read_runs(baseline)
    if base.empty:
        raise InitsweepError(f"--baseline {baseline}: no runs in it")
    result = check_against(current, base, metric=metric, tolerance=tolerance,
                           fail_on=[s.strip() for s in fail_on.split(",") if s.strip()])
    table = result.table
    render_runs(console, table, list(table.columns))
    failures = result.failures
    sweep = str(current["sweep"].iloc[0]) if not current.empty else "initsweep"
    if junit is not None:
        write_output(junit, junit_xml(f"{sweep} check", check_cases(result, sweep)))
    markdown = (f"## initsweep check: {metric} against {baseline}\n\n{len(failures)} of {len(table)} group(s) "
                f"failed (tolerance {tolerance}).\n\n" + summary_table(table, list(table.columns)))
    target = summary_md or (Path(os.environ["GITHUB_STEP_SUMMARY"]) if os.environ.get("GITHUB_STEP_SUMMARY") else None)
    if target is not None:
        mode = "w" if summary_md is not None else "a"
        with open(target, mode, encoding="utf-8") as f:
            f.write(markdown)
    if len(failures):
        err_console.print(f"check failed: {len(failures)} of {len(table)} group(s): "
                          + "; ".join(sorted(set(failures["verdict"]))), highlight=False, markup=False)
        raise typer.Exit(EXIT_RUNS_FAILED)
    console.print(f"check passed: {len(table)} group(s) within {tolerance} of the baseline", highlight=False)
