"""``initsweep merge`` (and ``check``): the commands a CI pipeline calls around ``run``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from .app import Format, FormatOpt, ResultsOpt, app, boundary, console, err_console, print_json, write_output
from ..errors import EXIT_RUNS_FAILED, InitsweepError

if TYPE_CHECKING:
    from ..report.check import CheckResult


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
                  f"{report.identical} already there"
                  + (f", {report.reused} reuse record(s) added" if report.reused else ""), highlight=False)
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
    sigma: Annotated[float, typer.Option(
        "--sigma", metavar="K", help="Also allow a drop of up to K standard errors of the difference of the means.")]
    = 2.0,
    strict_env: Annotated[bool, typer.Option(
        "--strict-env", help="Fail (exit 1) when the environments differ (torch, initsweep, device, precision, "
        "dataset), not only warn.")] = False,
    fail_on: Annotated[str, typer.Option(help="Also fail on: diverged, failed, missing (comma-separated).")]
    = "diverged,failed,missing",
    junit: Annotated[Optional[Path], typer.Option(help="Write a JUnit XML file: one testcase per group.")] = None,
    summary_md: Annotated[Optional[Path], typer.Option(
        help="Write a Markdown diff \\[default: appended to $GITHUB_STEP_SUMMARY when set].")] = None,
    fmt: FormatOpt = Format.table,
) -> None:
    """Regression gate: compare the runs with a baseline, group by group (seed means).

    A group regresses when its mean drops by more than max(--tolerance, K x the standard
    error of the difference of the seed means). Exit 1 on a regression, a newly diverged or
    failed run, or a missing group (as --fail-on says), or an environment difference under
    --strict-env; 0 when everything holds; 2 on bad input.
    """
    from ..report.check import check_against, check_cases
    from ..report.ci import junit_xml
    from ..results.read import read_runs
    from .render import render_runs

    current, base = read_runs(results), read_runs(baseline)
    if base.empty:
        raise InitsweepError(f"--baseline {baseline}: no runs in it")
    result = check_against(current, base, metric=metric, tolerance=tolerance, sigma=sigma,
                           fail_on=[s.strip() for s in fail_on.split(",") if s.strip()], strict_env=strict_env)
    table = result.table
    for difference in result.env_differences:
        err_console.print(f"warning: {difference}", highlight=False, markup=False, soft_wrap=True)
    if fmt is Format.json:
        print_json(check_as_json(result, baseline))
    else:
        console.print(f"{metric}: {result.rule}", highlight=False)
        render_runs(console, table, list(table.columns))
        for note in result.notes:
            console.print(note, highlight=False, markup=False)
    failures = result.failures
    sweep = str(current["sweep"].iloc[0]) if not current.empty else "initsweep"
    if junit is not None:
        write_output(junit, junit_xml(f"{sweep} check", check_cases(result, sweep)))
    target = summary_md or (Path(os.environ["GITHUB_STEP_SUMMARY"]) if os.environ.get("GITHUB_STEP_SUMMARY") else None)
    if target is not None:
        mode = "w" if summary_md is not None else "a"
        with open(target, mode, encoding="utf-8") as f:
            f.write(check_markdown(result, baseline))
    if not result.passed:
        reasons = [f"{len(failures)} of {len(table)} group(s): " + "; ".join(sorted(set(failures["verdict"])))
                   ] if len(failures) else []
        if result.env_failed:
            reasons.append("environment differs (--strict-env): "
                           + ", ".join(d.field for d in result.env_differences))
        err_console.print("check failed: " + "; ".join(reasons), highlight=False, markup=False, soft_wrap=True)
        raise typer.Exit(EXIT_RUNS_FAILED)
    if fmt is Format.table:
        console.print(f"check passed: {len(table)} group(s) within max({tolerance:g}, {sigma:g} × se) of the "
                      "baseline", highlight=False)


def check_markdown(result: CheckResult, baseline: Path) -> str:
    """The check as a Markdown section (the CI job's step summary)."""
    from ..report.ci import summary_table

    table = result.table
    text = (f"## initsweep check: {result.metric} against {baseline}\n\n{len(result.failures)} of {len(table)} "
            f"group(s) failed ({result.rule}).\n\n")
    said = [f"- warning: {d}" + (" (--strict-env: a failure)" if result.strict_env else "")
            for d in result.env_differences] + [f"- {note}" for note in result.notes]
    if said:
        text += "\n".join(said) + "\n\n"
    return text + summary_table(table, list(table.columns))


def check_as_json(result: CheckResult, baseline: Path) -> dict:
    """``initsweep check --format json``: the rule's numbers, one record per group, the
    environment differences and the notes."""
    return {"metric": result.metric, "baseline": str(baseline), "tolerance": result.tolerance, "sigma": result.sigma,
            "strict_env": result.strict_env, "passed": result.passed, "failures": len(result.failures),
            "groups": result.table.to_dict("records"),
            "env_differences": [vars(d) for d in result.env_differences], "notes": result.notes}
