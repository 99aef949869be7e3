"""``initsweep plan``, ``run``, ``list-inits`` and ``list-activations``: thin Typer commands
over ``initsweep.sweep`` and the registries; the shared app, consoles and error boundary
live in ``app.py``."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape
from rich.table import Table

from .app import (
    ConfigArg, Format, FormatOpt, ResultsOpt, SetOpt, app, boundary, choices, console, err_console, print_json,
    write_output,
)
from ..errors import (
    EXIT_BUDGET, EXIT_INTERRUPTED, EXIT_RUNS_FAILED, EXIT_TERMINATED,
    sigterm_as_interrupt,
)


# The fixed choices of run's options, so that --help lists them and click refuses a typo
# (exit 2). The library's own lists (sweep.VMAP_MODES, config.PRECISIONS) are not imported
# here because they sit behind torch, which `initsweep -h` and `report` never load;
# tests/test_cli_errors.py::test_cli_choices_are_the_librarys holds the two sides equal.
# --executor is not among them: executors are a registry (sweep/executors), open to new
# entries, so the library checks the name (one line, exit 2, did-you-mean).
Vmap = choices("Vmap", "auto", "on", "off")
Precision = choices("Precision", "fp32", "bf16")


@app.command()
@boundary
def plan(
    config: ConfigArg,
    fmt: FormatOpt = Format.table,
    show_all: Annotated[bool, typer.Option("--all", help="List every run, not only the first 40.")] = False,
    offline: Annotated[bool, typer.Option("--offline", help="Plan as run --offline: no download, no substitute.")] = False,
    results: Annotated[Optional[Path], typer.Option(
        "--results", help="Also say, per run and in total, what is done, failed, interrupted or left in this "
                          "results folder, and the work left.")] = None,
    set_: SetOpt = None,
) -> None:
    """Show the runs a config expands to, its axes, exclusions, the work it will take, and
    the data they will use (found, downloaded, or the fallback: the same run ids as run)."""
    from ..overrides import load_config_with
    from ..sweep.planner import plan_summary, resolve_plan

    source, runs = resolve_plan(load_config_with(config, set_ or ()), offline=offline)
    summary = plan_summary(runs, source, results)
    if fmt is Format.json:
        print_json(summary)
        return
    from .render import render_plan

    render_plan(console, summary, limit=None if show_all else 40)


@app.command()
@boundary
def run(
    ctx: typer.Context,
    config: ConfigArg,
    results: ResultsOpt = Path("results"),
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N or mps (auto takes CUDA when present).")] = "auto",
    fresh: Annotated[bool, typer.Option("--fresh", help="Rerun finished runs too (old rows are kept as history).")] = False,
    fail_fast: Annotated[bool, typer.Option(
        "--fail-fast", help="Stop at the first failed run (runs in flight recorded interrupted); exit 1.")] = False,
    max_runs: Annotated[Optional[int], typer.Option("--max-runs", min=1, help="Run at most N runs now.")] = None,
    offline: Annotated[bool, typer.Option("--offline", help="Never download, never substitute the MNIST sample.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only the summary.")] = False,
    workers: Annotated[Optional[int], typer.Option(
        min=1, help="Worker processes \\[default: one per core on the CPU (in-process for tiny sweeps), one per GPU].")] = None,
    threads: Annotated[Optional[int], typer.Option(min=1, help="Threads per worker \\[default: cores / workers].")] = None,
    devices: Annotated[Optional[str], typer.Option(help="Comma-separated devices, one worker each, e.g. cuda:0,cuda:1.")] = None,
    vmap: Annotated[Vmap, typer.Option(help="Train runs that share an architecture as one batched model (auto: on CUDA only).")] = Vmap.auto,
    compile: Annotated[bool, typer.Option("--compile", help="torch.compile each model (warm-up timed separately).")] = False,
    precision: Annotated[Optional[Precision], typer.Option(help="Override train.precision (bf16: CUDA, or a CPU with AVX512-BF16 or AMX).")] = None,
    max_retries: Annotated[int, typer.Option(min=0, help="Retries of a run whose worker process died.")] = 2,
    executor: Annotated[str, typer.Option(
        metavar="NAME", help="Where to train: local (this machine), ray (a Ray cluster), or another registered executor.")] = "local",
    ray_address: Annotated[Optional[str], typer.Option(
        help="Ray cluster: auto or HOST:PORT \\[default: start a local Ray with this machine's cores].")] = None,
    ray_timeout: Annotated[Optional[float], typer.Option(
        min=1, help="Give up on --ray-address after this many seconds without an answer \\[default: 15].")] = None,
    num_cpus: Annotated[Optional[float], typer.Option(min=0, help="CPUs per Ray task \\[default: 1].")] = None,
    num_gpus: Annotated[Optional[float], typer.Option(min=0, help="GPUs per Ray task; fractions share a GPU.")] = None,
    shard: Annotated[Optional[str], typer.Option(help="Run only part K of N of the grid (K/N, by run id).")] = None,
    time_budget: Annotated[Optional[str], typer.Option(
        help="Start no run after this long (90s, 15m, 1h30m); exit 75 if runs are left.")] = None,
    junit: Annotated[Optional[Path], typer.Option(help="Write a JUnit XML file: one testcase per run.")] = None,
    summary_md: Annotated[Optional[Path], typer.Option(
        help="Write a Markdown summary \\[default: appended to $GITHUB_STEP_SUMMARY when set].")] = None,
    log_to: Annotated[Optional[list[str]], typer.Option(
        metavar="NAME", help="Also log each finished run (repeatable; adds to the config's log_to): tensorboard "
                             "writes RESULTS/tensorboard/SWEEP/RUN_ID/.")] = None,
    set_: SetOpt = None,
) -> None:
    """Train every run of CONFIG not finished yet, storing each the moment it ends (resumable).

    A run another sweep in RESULTS finished (the same run id: a renamed or copied config) is
    reused, not trained again, unless --fresh.

    Exit codes: 0 done, 1 a run failed, 2 bad input, 75 time budget spent with runs left
    (run again to resume), 130 interrupted (Ctrl-C), 143 terminated (SIGTERM).
    """
    started = time.perf_counter()  # before torch is imported: the wall time includes start-up
    from ..sweep.executors.pool import start_early

    sigterm_as_interrupt()  # SIGTERM stops a sweep like Ctrl-C (runs in flight marked), but exits 143
    # the CPU workers start now and import torch while this process does, then wait for tasks;
    # the sweep takes those it needs, and whatever stops the command stops any left over
    early = start_early(device=device, devices=devices.split(",") if devices else None, workers=workers,
                        threads=threads, compile=compile, executor=executor)
    if early is not None:
        ctx.call_on_close(lambda: early.close(timeout=0.0))
    from ..sweep.planner import parse_duration, parse_shard
    from ..report.stats import best_per_depth
    from ..report.timing import time_shares
    from .render import SweepDisplay, render_sweep_summary, render_time_shares
    from ..results.store import Store
    from ..sweep.run import run_sweep
    from ..overrides import load_config_with

    if set_:  # the config as overridden is the sweep's: its run ids, its stored specs
        config = load_config_with(config, set_)
    shard_kn = parse_shard(shard) if shard is not None else None
    budget = parse_duration(time_budget) if time_budget is not None else None
    display = SweepDisplay(console, err_console, quiet=quiet)
    try:
        outcome = run_sweep(config, results_dir=results, device=device, fresh=fresh, max_runs=max_runs,
                            offline=offline, observer=display, workers=workers, threads=threads,
                            devices=devices.split(",") if devices else None, vmap=vmap.value, compile=compile,
                            precision=precision.value if precision else None, max_retries=max_retries,
                            executor=executor,
                            ray_address=ray_address, num_cpus=num_cpus, num_gpus=num_gpus,
                            shard=shard_kn, time_budget=budget, ray_timeout=ray_timeout, fail_fast=fail_fast,
                            log_to=log_to, started_workers=early)
    finally:
        display.close()
    if shard_kn is not None and not outcome.n_planned:  # nothing to do is not an error: exit 0
        console.print(f"shard {shard_kn[0]}/{shard_kn[1]} holds none of the {outcome.n_in_grid} runs: nothing to do",
                      highlight=False)
    with Store(results) as store:
        df = store.runs_frame(outcome.sweep)
    df = df[df.run_id.isin(outcome.run_ids)]
    best = best_per_depth(df)
    render_sweep_summary(console, outcome, best, df["status"].value_counts().to_dict())
    trained = df[df.run_id.isin({result.run_id for _, result in outcome.results})]
    if len(trained) and outcome.execution is not None and outcome.execution.executor == "local":
        render_time_shares(console, time_shares(trained, time.perf_counter() - started, outcome.execution.workers))
    _ci_outputs(outcome, df, best, junit, summary_md)
    if outcome.interrupted:
        how = "terminated (SIGTERM)" if outcome.terminated else "interrupted"
        err_console.print(f"{how}: finished runs are stored; run the same command again to resume",
                          highlight=False)
        raise typer.Exit(EXIT_TERMINATED if outcome.terminated else EXIT_INTERRUPTED)
    if outcome.stopped_at:
        err_console.print(f"stopped at the first failed run (--fail-fast): {outcome.stopped_at}", highlight=False,
                          markup=False)
    if outcome.counts.get("failed"):
        raise typer.Exit(EXIT_RUNS_FAILED)
    if outcome.budget_exhausted:
        left = len(outcome.run_ids) - int(df.status.isin(["ok", "diverged"]).sum())
        err_console.print(f"time budget spent with {left} run(s) left: run the same command again to resume",
                          highlight=False)
        raise typer.Exit(EXIT_BUDGET)


def _ci_outputs(outcome, df, best, junit: Optional[Path], summary_md: Optional[Path]) -> None:
    """JUnit XML and the Markdown summary (to a file, and/or GitHub's step summary)."""
    from ..report.ci import junit_xml, run_cases, sweep_summary_markdown

    if junit is not None:
        write_output(junit, junit_xml(outcome.sweep, run_cases(df)))
    markdown = sweep_summary_markdown(outcome.sweep, df, best)
    if summary_md is not None:
        write_output(summary_md, markdown)
    step_summary = os.environ.get("GITHUB_STEP_SUMMARY")
    if step_summary and summary_md is None:
        with open(step_summary, "a", encoding="utf-8") as f:
            f.write(markdown)


@app.command("list-inits")
@boundary
def list_inits_cmd(fmt: FormatOpt = Format.table) -> None:
    """The registered initializers, their formulas and parameters."""
    from ..inits import list_inits

    entries = [{"name": e.name, "formula": e.formula, "description": e.description,
                "params": {p.name: {"default": p.default, "help": p.help,
                                    "choices": list(p.choices) if p.choices else None} for p in e.params}}
               for e in list_inits()]
    if fmt is Format.json:
        print_json(entries)
        return
    table = Table(title="Initializers (fan_in = in_channels x kernel area)", show_lines=False)
    for col in ("name", "formula", "parameters", "description"):
        table.add_column(col, overflow="fold")
    for e in list_inits():
        table.add_row(*_plain(e.name, e.formula, ", ".join(p.describe() for p in e.params), e.description))
    console.print(table)


@app.command("list-activations")
@boundary
def list_activations_cmd(fmt: FormatOpt = Format.table) -> None:
    """The registered activations, their gain for ``gain: auto`` and parameters."""
    from ..activations import list_activations

    rows = [{"name": a.name, "formula": a.formula, "family": a.family,
             "gain": round(a.gain({p.name: p.default for p in a.params}), 6),
             "gain_source": "calculate_gain" if a.gain_key else "1/sqrt(E[phi(z)^2])",
             "params": {p.name: p.default for p in a.params}, "description": a.description}
            for a in list_activations()]
    if fmt is Format.json:
        print_json(rows)
        return
    table = Table(title="Activations (gain: what gain: auto resolves to)")
    for col in ("name", "formula", "family", "gain", "from", "parameters"):
        table.add_column(col, overflow="fold")
    for r, a in zip(rows, list_activations()):
        table.add_row(*_plain(r["name"], r["formula"], r["family"], f"{r['gain']:.4f}", r["gain_source"],
                              ", ".join(p.describe() for p in a.params)))
    table.caption = ("selu's 0.75 (torch's) is not the gain 1 of a self-normalizing net: use lecun_normal. "
                     "gain: critical puts a layer at the edge of chaos instead (docs/config.md).")
    console.print(table)


def _plain(*cells: str) -> list[str]:
    """Registry texts as table cells, escaped: rich reads ``[a, b]`` as markup and would print
    ``w ~ U[a, b]`` as ``w ~ U`` (formulas, descriptions and parameter help hold brackets)."""
    return [escape(c) for c in cells]
