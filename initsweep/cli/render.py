"""Rich renderings of the library's plain-data results (the CLI's views)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

if TYPE_CHECKING:
    import pandas as pd


def _si(n: float) -> str:
    for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return f"{n:.0f}"


def substitute_text(requested: str, used: str) -> str:
    """What a data fallback means for the runs, said the same way by ``plan`` and ``run``."""
    if requested == "mnist":
        return "training on the shipped 5,000-digit MNIST sample instead"
    return (f"training on MNIST digits (the shipped 5,000-digit sample) instead of {requested}: "
            f"another dataset, as data.fallback: {used} allows; every report marks these runs")


def render_plan(console: Console, summary: dict[str, Any], limit: int | None = 40) -> None:
    """Print what ``plan_summary`` returns: header, data, axes, counts, work, then the runs."""
    console.print(f"[bold]{summary['sweep']}[/] on {summary['dataset']}", highlight=False)
    if summary["data_fallback"]:
        console.print(f"  [bold yellow]data fallback[/]: {escape(summary['data_fallback'])}; "
                      f"{substitute_text(summary['dataset_requested'], summary['dataset'])}", highlight=False)
    else:
        console.print(f"  data: {escape(summary['data_location'])}", highlight=False)
    grids = summary["grids"]
    if len(grids) == 1 and "zip" not in grids[0]:
        _print_axes(console, summary["axes"], "  ")
    else:
        for grid in grids:
            console.print(f"  {grid['where']}: {grid['n_points']} points x seeds, {grid['n_runs']} new run(s)", highlight=False)
            _print_axes(console, grid["axes"], "    ")
            if "zip" in grid:
                entries = [" ".join(f"{k}={v}" for k, v in entry.items()) for entry in grid["zip"]]
                console.print(f"    {'zip':>12}: {escape(' | '.join(entries))}  ({len(entries)})", highlight=False)
    console.print(f"  {'seeds':>12}: {', '.join(map(str, summary['seeds']))}", highlight=False)
    union = f"{len(grids)} grids, " if len(grids) > 1 else ""
    console.print(
        f"{union}{summary['n_points']} points x seeds, {summary['n_excluded']} excluded, "
        f"{summary['n_duplicates']} merged -> [bold]{summary['n_runs']} runs[/]", highlight=False)
    work = summary["work"]
    console.print(
        f"work: {_si(work['train_samples'])} training samples, "
        f"~{_si(work['train_gflop'] * 1e9)}FLOP to train; largest model "
        f"{_si(work['largest_params'])} params, {_si(work['largest_macs_per_sample'])} MACs per image",
        highlight=False)
    for note in summary["notes"]:
        console.print(f"[yellow]note:[/] {note}", highlight=False)
    if "totals" in summary:
        _render_status(console, summary)
    runs = summary["runs"]
    if not runs:
        return
    shown = runs if limit is None else runs[:limit]
    table = Table(show_edge=False, pad_edge=False)
    hidden = ("macs_per_sample", "train_samples") + (() if summary.get("reused_from") else ("reused_from",))
    columns = [c for c in shown[0] if c not in hidden]
    for col in columns:
        table.add_column(col, justify="right" if isinstance(shown[0][col], (int, float)) else "left")
    for row in shown:
        table.add_row(*(_si(row[c]) if c == "params" else "-" if c == "reused_from" and row[c] is None
                        else str(row[c]) for c in columns))
    console.print(table)
    if len(shown) < len(runs):
        console.print(f"... and {len(runs) - len(shown)} more (--all lists every run)", highlight=False)


def _print_axes(console: Console, axes: dict[str, list[Any]], indent: str) -> None:
    for axis, values in axes.items():
        console.print(f"{indent}{axis:>12}: {escape(', '.join(map(str, values)))}  ({len(values)})", highlight=False)


def _render_status(console: Console, summary: dict[str, Any]) -> None:
    """``plan --results``: the runs' states in the folder and the work left."""
    totals, left = summary["totals"], summary["work_left"]
    reused = "".join(f", {n} of them from sweep {escape(sweep)}" for sweep, n in summary["reused_from"].items())
    states = ", ".join(f"{totals[state]} {state}" + (reused if state == "done" else "")
                       for state in totals if totals[state] or state in ("done", "failed", "left"))
    console.print(f"in {escape(summary['results'])}: {states}", highlight=False)
    console.print(f"work left: {left['n_runs']} run(s), {_si(left['train_samples'])} training samples, "
                  f"~{_si(left['train_gflop'] * 1e9)}FLOP to train", highlight=False)


def run_label(spec) -> str:
    """``he relu depth=8 seed=1``: a run's grid point, as people read it."""
    parts = [f"{k}={v}" if k not in ("init", "activation") else str(v) for k, v in spec.point]
    return " ".join(parts + [f"seed={spec.seed}"])


_STATUS_STYLE = {"ok": "green", "diverged": "yellow", "failed": "red", "interrupted": "magenta"}


def result_line(done: int, total: int, spec, result) -> str:
    acc = f"test_acc={result.test_acc:.4f}" if result.test_acc is not None else "test_acc=-"
    extra = f" at step {result.diverged_step}" if result.diverged_step else ""
    extra += f" {result.error}" if result.error else ""
    wall = f" ({result.wall_seconds:.1f}s)" if result.wall_seconds is not None else ""
    style = _STATUS_STYLE.get(result.status, "white")
    return (f"[{done}/{total}] [{style}]{result.status:<8}[/] {run_label(spec)}  {acc}{wall}"
            f"{escape(extra)}")


class SweepDisplay:
    """The sweep's progress: live bars on a terminal, one plain line per run otherwise.

    Implements the ``sweep.Observer`` events: a bar for the sweep (runs done, ETA) and one
    per run in flight (epoch and batches); ``quiet`` prints nothing per run.
    """

    # Bars are drawn only by the thread that reports the events (rich's auto-refresh is off),
    # at most this often. Rich's refresh thread raced the result lines: printing a line first
    # erases as many lines as the last drawing had, and a drawing by that thread in between
    # (just after a finished run's bar was removed) made that count wrong by one, so a result
    # line was overwritten, lost from screen and scrollback (reproduced in an 80x24 tmux pane).
    REDRAW_EVERY_S = 0.1

    def __init__(self, console: Console, err_console: Console, quiet: bool = False):
        self.console, self.err, self.quiet = console, err_console, quiet
        self.live = console.is_terminal and not quiet
        self.progress = None
        self.run_tasks: dict[str, Any] = {}
        self.done = self.total = 0
        self.drawn_at = 0.0

    def data_resolved(self, source) -> None:
        if source.fallback_reason:
            self.err.print(
                f"[bold yellow]WARNING[/]: {escape(source.fallback_reason)}\n"
                f"[bold yellow]WARNING[/]: {substitute_text(source.requested, source.dataset)} "
                f"(recorded in every run row; --offline or data.fallback: none makes this an error)",
                highlight=False)

    def sweep_started(self, sweep: str, n_planned: int, n_todo: int, n_done: int) -> None:
        self.total = n_todo
        self.console.print(f"{sweep}: {n_planned} runs planned, {n_done} already finished, {n_todo} to run",
                           highlight=False)
        if self.live and n_todo:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
            from rich.table import Column

            # One line per bar: a long run label is cut (its result line shows it whole) rather
            # than squeezing the bar, counts and ETA out of an 80-column terminal.
            label = Column(no_wrap=True, overflow="ellipsis", max_width=max(20, self.console.width - 36))
            self.progress = Progress(TextColumn("{task.description}", table_column=label), BarColumn(),
                                     MofNCompleteColumn(table_column=Column(no_wrap=True)),
                                     TimeRemainingColumn(table_column=Column(no_wrap=True)),
                                     console=self.console, transient=True, auto_refresh=False)
            self.sweep_task = self.progress.add_task("sweep", total=n_todo)
            self.progress.start()

    def _redraw(self, now: bool = False) -> None:
        """Draw the bars (and the ETA) as progress events arrive: several a second per run."""
        if self.progress and (now or time.monotonic() - self.drawn_at >= self.REDRAW_EVERY_S):
            self.progress.refresh()
            self.drawn_at = time.monotonic()

    def run_started(self, spec) -> None:
        if self.progress and spec.run_id not in self.run_tasks:
            self.run_tasks[spec.run_id] = self.progress.add_task(run_label(spec), total=None)

    def run_progress(self, spec, epoch: int, step: int, steps: int) -> None:
        task = self.run_tasks.get(spec.run_id)
        if self.progress and task is not None:
            self.progress.update(task, total=spec.train.epochs * steps, completed=(epoch - 1) * steps + step,
                                 description=f"{run_label(spec)} epoch {epoch}/{spec.train.epochs}")
            self._redraw()

    def run_finished(self, spec, result) -> None:
        self.done += 1
        if self.progress:
            self.progress.advance(self.sweep_task)
            task = self.run_tasks.pop(spec.run_id, None)
            if task is not None:
                self.progress.remove_task(task)
            # draw the bars without this run first: printing the line redraws the last drawing
            self._redraw(now=True)
        if not self.quiet:
            target = self.progress.console if self.progress else self.console
            target.print(result_line(self.done, self.total, spec, result), highlight=False)

    def run_skipped(self, spec, why: str) -> None:
        if self.progress:
            self.progress.advance(self.sweep_task)
            self._redraw()

    def worker_died(self, worker: int, pid: int, cause: str, spec, attempt: int, max_retries: int) -> None:
        """One line on stderr, even with ``quiet``: a crash (the OOM killer, a segfault) is news."""
        then = (f"retrying ({attempt} of {max_retries})" if attempt <= max_retries
                else f"no retries left (--max-retries {max_retries}): recorded failed")
        self.err.print(f"worker {worker} (pid {pid}) died ({cause}) during run {spec.run_id} "
                       f"({escape(run_label(spec))}); {then}", highlight=False)

    def close(self) -> None:
        if self.progress:
            self.progress.stop()
            self.progress = None


def render_sweep_summary(console: Console, outcome, best: "pd.DataFrame", totals: dict[str, int]) -> None:
    counts = outcome.counts
    ran = ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "nothing"
    console.print(f"this run: {ran}; skipped {outcome.n_skipped}", highlight=False)
    for sweep, n in sorted(outcome.reused.items()):
        console.print(f"{n} reused from sweep {escape(sweep)}", highlight=False)
    console.print("sweep so far: " + (", ".join(f"{n} {s}" for s, n in sorted(totals.items())) or "nothing"),
                  highlight=False)
    if not best.empty:
        table = Table(title=f"Best setting per depth (mean test accuracy over seeds) — {outcome.sweep}")
        for col in ("depth", "setting", "test acc", "seeds"):
            table.add_column(col, justify="left" if col == "setting" else "right")
        for _, row in best.iterrows():
            table.add_row(str(row["depth"]), str(row["setting"]), f"{row['mean']:.4f}", str(row["n"]))
        console.print(table)
    source = outcome.source
    if source.fallback_reason:
        console.print(f"[bold yellow]data fallback[/]: trained on {source.dataset}, not {source.requested} "
                      "(data.fallback; every report marks these runs)", highlight=False)
    console.print(f"results: {outcome.results_dir / 'initsweep.db'} (initsweep report --results {outcome.results_dir})",
                  highlight=False)


def render_time_shares(console: Console, shares) -> None:
    """The sweep's wall time and where it went (``report.timing.time_shares``)."""
    console.print(f"time: {shares.wall:.1f} s wall, {shares.workers} worker(s): training {100 * shares.training:.0f}%, "
                  f"evaluation {100 * shares.evaluation:.0f}%, everything else {100 * shares.other:.0f}% "
                  "(start-up, set-up, probes, store)", highlight=False)


def render_runs(console: Console, df: "pd.DataFrame", columns: list[str]) -> None:
    table = Table(show_edge=False, pad_edge=False)
    for col in columns:
        table.add_column(col, justify="right" if df[col].dtype.kind in "if" else "left")
    for _, row in df.iterrows():
        table.add_row(*(_cell(row[c]) for c in columns))
    console.print(table)


def _cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)
