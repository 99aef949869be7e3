"""``initsweep compare``: two sets of runs, paired by seed, with intervals and tests.

Thin: the statistics are ``report/compare.py``'s; this reads the runs and their stored
predictions, names the two expressions as the user typed them, and renders.
"""

from __future__ import annotations

import math
from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from .app import Format, FormatOpt, ResultsOpt, app, boundary, console, print_json
from ..errors import InitsweepError, OptionError


@app.command()
@boundary
def compare(
    expr_a: Annotated[str, typer.Argument(metavar="EXPR_A", show_default=False,
                                          help="Runs of set A, in the --where language, e.g. 'init == \"he\"'.")],
    expr_b: Annotated[str, typer.Argument(metavar="EXPR_B", show_default=False,
                                          help="Runs of set B, e.g. 'init == \"xavier_uniform\"'.")],
    results: ResultsOpt = Path("results"),
    metric: Annotated[str, typer.Option("--metric", "-m", help="The runs column to compare.")] = "test_acc",
    fmt: FormatOpt = Format.table,
) -> None:
    """Is A better than B beyond seed noise? Paired by seed per group: mean difference, its 95%
    interval, paired t, Wilcoxon and (from the stored predictions) McNemar p-values.

    Runs pair when only the settings that tell A from B differ and the seed matches; every
    other varying setting (depth, say) makes its own group, Holm-corrected when there are several.
    """
    from ..report.compare import compare_runs
    from ..results.read import read_predictions, read_runs

    try:
        comparison = compare_runs(read_runs(results), expr_a, expr_b, metric,
                                  lambda row_ids: read_predictions(results, row_ids))
    except OptionError as exc:
        raise _named(exc) from None
    if fmt is Format.json:
        print_json(asdict(comparison))
        return
    _render(comparison)


def _named(exc: OptionError) -> InitsweepError:
    """An error about an expression, naming it as typed: ``EXPR_A 'x': ...`` (not ``--a``)."""
    if exc.param not in ("a", "b"):
        return exc
    name = f"EXPR_{exc.param.upper()}"
    return InitsweepError(f"{name} {exc.value!r}: {exc.problem}" if exc.repeat_value else f"{name}: {exc.problem}")


def _p(value: float) -> str:
    return "—" if value is None or math.isnan(value) else f"{value:.3g}"


def _signed(value: float) -> str:
    return "—" if math.isnan(value) else f"{value:+.4f}"


def _render(c) -> None:
    """The groups as one table; above it what was compared, below it how."""
    from ..report.formats import fmt_value

    n_a, n_b = sum(g["n_a"] for g in c.groups), sum(g["n_b"] for g in c.groups)
    differ = "; ".join(f"{name}: {', '.join(v['a'])} vs {', '.join(v['b'])}" for name, v in c.differ.items())
    console.print(Text(f"A: {c.a} ({n_a} runs)\nB: {c.b} ({n_b} runs)\n"
                       f"they differ in {differ or 'no setting'}"), highlight=False)
    holm = " (Holm)" if c.holm else ""
    level = f"{c.level:.0%}"
    table = Table(title=f"{c.metric}: A - B per group, paired by seed", title_justify="left")
    for col in ("group", "pairs", "mean A", "mean B", "A - B", f"{level} CI", f"p t-test{holm}",
                f"p wilcoxon{holm}", f"p mcnemar{holm}", "note"):
        table.add_column(col, justify="left" if col in ("group", "note") else "right", overflow="fold")
    suffix = "_holm" if c.holm else ""
    for g in c.groups:
        pairs = str(g["n_pairs"]) if g["test"] == "paired" else f"0 ({g['n_a']}+{g['n_b']})"
        interval = "—" if math.isnan(g["ci_low"]) else f"[{_signed(g['ci_low'])}, {_signed(g['ci_high'])}]"
        table.add_row(Text(g["label"]), pairs, fmt_value(g["mean_a"]), fmt_value(g["mean_b"]),
                      _signed(g["mean_diff"]), interval, *(_p(g[col + suffix]) for col in
                                                            ("p_value", "wilcoxon_p", "mcnemar_p")),
                      Text(g["why"]))
    console.print(table)
    notes = [f"pairs: runs of A and B with the same seed and the same {', '.join(c.group_by) or 'settings'}"
             + (" (other than what differs)" if c.group_by else ""),
             f"{level} CI: Student-t interval of the mean paired difference; p: paired t-test, Wilcoxon signed-rank, "
             "exact McNemar over the test images pooled over the seed pairs"]
    if any(g["test"] == "welch" for g in c.groups):
        notes.append("groups with no seed pairs fall back to Welch's test of the two sets (pairs shows 0 (n_A+n_B))")
    if c.holm:
        notes.append(f"Holm correction over the {len(c.groups)} groups: the p columns are adjusted "
                     "(raw values in --format json)")
    for note in notes:
        console.print(Text(note, style="dim"), highlight=False)
