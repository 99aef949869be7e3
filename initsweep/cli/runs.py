"""``initsweep tag`` and ``rm``: a user's edits to the stored runs (names on them, deletions).

Thin commands: the selection is ``results.read.select_runs`` (run ids as ``show`` takes them,
or ``--where``), the writes are ``Store.tag_runs`` and ``Store.delete_runs``, each one
transaction. Every check (an unknown id, an empty selection, everything without ``--all``)
runs before the store is opened for writing, so a refused command changes nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape
from rich.table import Table

from .app import ResultsOpt, app, boundary, console, err_console
from .report import WhereOpt
from ..errors import InitsweepError

RunIdsArg = Annotated[Optional[list[str]], typer.Argument(
    help="Run ids, or unique prefixes of them (as show takes them).", show_default=False)]
OneSweepOpt = Annotated[Optional[str], typer.Option("--sweep", help="Only runs of this sweep.")]
_SHOWN = 10  # rows of the table rm shows before it asks; the rest are counted


def _select(results: Path, run_ids: list[str] | None, where: str | None, sweep: str | None, command: str,
            every: bool | None = None):
    """The runs a command names: by ids or by ``--where`` (not both); with neither, every run
    where the command has ``--all`` (``every`` not None) and it is given, else an error."""
    from ..results.read import select_runs

    if run_ids and where is not None:
        raise InitsweepError(f"{command}: give run ids or --where, not both")
    if not run_ids and where is None and not every:
        ways = "RUN_ID..., --where EXPR" + (" or --all" if every is not None else "")
        raise InitsweepError(f"{command}: say which runs: {ways}")
    return select_runs(results, run_ids or [], where, sweep)


def _runs_table(runs) -> Table:
    """The first runs of a selection, as ``rm`` shows them before it asks."""
    from ..report.formats import fmt_value

    table = Table(show_edge=False, pad_edge=False)
    columns = ["run_id", "sweep", "init_label", "activation_label", "depth", "seed", "status", "test_acc", "tags"]
    for column in columns:
        table.add_column(column.removesuffix("_label"))
    for run in runs.head(_SHOWN).to_dict("records"):
        table.add_row(*(escape(fmt_value(v) if v is None or isinstance(v, float) else str(v))
                        for v in (run.get(c) for c in columns)))
    return table


def _runs(n: int) -> str:
    return f"{n} run" + ("" if n == 1 else "s")


@app.command()
@boundary
def tag(
    run_ids: RunIdsArg = None,
    add: Annotated[Optional[list[str]], typer.Option("--add", help="Add this tag (repeatable).")] = None,
    remove: Annotated[Optional[list[str]], typer.Option("--remove", help="Remove this tag (repeatable).")] = None,
    note: Annotated[Optional[str], typer.Option("--note", help="A note on the tags --add adds.")] = None,
    where: WhereOpt = None,
    sweep: OneSweepOpt = None,
    results: ResultsOpt = Path("results"),
) -> None:
    """Tag runs (their current attempt): [bold]initsweep tag 3f2a --add baseline --note "paper Fig. 2"[/].

    Tags are shown by [bold]show[/], exported in the [bold]tags[/] column and selected with
    --where 'tags contains "baseline"'.
    """
    from ..results.store import Store, check_tag

    if not add and not remove:
        raise InitsweepError("tag: give --add TAG or --remove TAG")
    if note is not None and not add:
        raise InitsweepError("tag: --note is the note of the tags --add adds; give --add TAG")
    for name in add or []:
        check_tag(name)
    picked = _select(results, run_ids, where, sweep, "tag")
    if picked.runs.empty:
        raise InitsweepError(f"tag: no runs match --where {where!r} in {results}; nothing tagged")
    row_ids = [int(r) for r in picked.runs["row_id"]]
    with Store(results) as store:
        changed = store.tag_runs(row_ids, add or [], remove or [], note)
    for key, count in changed.items():
        name, unchanged = key[1:], len(row_ids) - count
        if key.startswith("+"):
            said, rest = f"tag {name!r} added to {_runs(count)}", f"{unchanged} had it"
        else:
            said, rest = f"tag {name!r} removed from {_runs(count)}", f"{unchanged} did not have it"
        console.print(said + (f" ({rest})" if unchanged else ""), markup=False, highlight=False)


@app.command()
@boundary
def rm(
    run_ids: RunIdsArg = None,
    where: WhereOpt = None,
    sweep: OneSweepOpt = None,
    every: Annotated[bool, typer.Option("--all", help="Allow deleting every run in the store.")] = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask (for scripts).")] = False,
    results: ResultsOpt = Path("results"),
) -> None:
    """Delete runs: every attempt, with its epochs, layers, tags and all else stored with it.

    Shows what it would delete and asks first (--yes: does not). A selection of no run, or
    of every run in the store without --all, is refused. Answering no deletes nothing and
    exits 1.
    """
    from ..results.store import Store, refuse_live_claims

    picked = _select(results, run_ids, where, sweep, "rm", every)
    refuse_live_claims(picked.attempts.to_dict("records"))  # before asking; delete_runs checks again
    count = len(picked.runs)
    if count == 0:
        raise InitsweepError(f"rm: no runs match --where {where!r} in {results}; nothing deleted")
    if count == picked.total and not every:
        raise InitsweepError(f"rm: this selects every run in {results} ({count}); add --all to delete them all")
    attempts = len(picked.attempts)
    console.print(f"would delete {_runs(count)} ({attempts} attempt{'s' * (attempts != 1)}) from {results}:",
                  markup=False, highlight=False)
    console.print(_runs_table(picked.runs))
    if count > _SHOWN:
        console.print(f"... and {count - _SHOWN} more", highlight=False)
    if not yes and not _confirm(f"delete {'it' if count == 1 else f'these {count}'}?"):
        err_console.print("nothing deleted", highlight=False)
        raise typer.Exit(1)
    with Store(results) as store:
        deleted = store.delete_runs([int(r) for r in picked.attempts["row_id"]])
    rows = ", ".join(f"{table} {n}" for table, n in deleted.items() if n or table == "runs")  # tables it touched
    console.print(f"deleted {_runs(count)} (rows: {rows})", markup=False, highlight=False)


def _confirm(question: str) -> bool:
    """The user's yes; no answer at all (stdin closed, Ctrl-C at the prompt) is a no."""
    try:
        return typer.confirm(question, default=False)
    except typer.Abort:
        return False
