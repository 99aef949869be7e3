"""Run a whole sweep: config -> data -> plan -> resume -> executor -> store.

``run_sweep`` is the library entry point behind ``initsweep run``; it prints nothing and
reports progress to an :class:`Observer` (the CLI's draws the progress bars). The store is
written in one place, the sweep's :class:`~initsweep.sweep.ledger.Ledger`: the executor
claims and finishes runs through it, and this module marks the runs still in flight
``interrupted`` when the sweep stops early.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path

import torch

from ..batched import group_specs
from ..config import PRECISIONS, RunSpec, SweepConfig, load_config
from ..data import DataSource
from ..errors import OptionError, ParamError, interrupt_reason, terminated
from ..provenance import git_state
from .executors import CONNECT_TIMEOUT_S, Execution, Task, default_threads, get_executor, usable_cores
from .executors.pool import WorkerPool
from .ledger import Claim, Ledger, StopAtFailure
from .loggers import open_loggers
from .observer import Observer
from .planner import estimate_work, in_shard, resolve_plan
from ..results.store import Store
from ..train import RunResult, check_precision, resolve_device


@dataclass
class SweepOutcome:
    sweep: str
    results_dir: Path
    source: DataSource
    n_planned: int  # runs in the plan
    n_done_before: int  # already finished when the sweep started (resume)
    results: list[tuple[RunSpec, RunResult]] = field(default_factory=list)
    n_skipped: int = 0  # finished or claimed by another process meanwhile
    interrupted: bool = False  # Ctrl-C or SIGTERM stopped it
    terminated: bool = False  # ... and it was SIGTERM (the CLI exits 143 rather than 130)
    execution: "Execution | None" = None
    run_ids: set[str] = field(default_factory=set)  # the runs this invocation plans (its shard)
    budget_exhausted: bool = False  # the time budget stopped runs from starting
    n_in_grid: int = 0  # runs in the whole plan, before the shard was taken
    reused: dict[str, int] = field(default_factory=dict)  # sweep -> runs of it taken as this sweep's now
    stopped_at: str | None = None  # fail_fast: the failed run the sweep stopped at, and why it failed

    @property
    def counts(self) -> Counter:
        return Counter(r.status for _, r in self.results)


# Starting the worker pool costs about 5 s here (each worker imports torch and loads the
# data); below this much training work (a few seconds in one process) it is not worth it.
POOL_MIN_FLOPS = 300e9

# The values of plan_execution's vmap (the CLI's --vmap offers them)
VMAP_MODES = ("auto", "on", "off")


def plan_execution(device: str = "auto", devices: list[str] | None = None, workers: int | None = None,
                   threads: int | None = None, vmap: str = "auto", compile: bool = False,
                   max_retries: int = 2, executor: str = "local", ray_address: str | None = None,
                   num_cpus: float | None = None, num_gpus: float | None = None,
                   ray_timeout: float | None = None) -> Execution:
    """Defaults: one worker per core on the CPU (single-threaded: measured faster than one
    two-threaded process), one per GPU on CUDA; vmapped groups only on CUDA. With Ray the
    device is where the tasks run (CUDA when they ask for GPUs), not checked here."""
    if vmap not in VMAP_MODES:
        raise OptionError("vmap", vmap, "use auto, on or off")
    if get_executor(executor).cluster:
        num_gpus = num_gpus or 0.0
        kind = "cuda" if num_gpus else ("cpu" if device == "auto" else device)
        use_vmap = vmap == "on" or (vmap == "auto" and kind.startswith("cuda"))
        return Execution([torch.device(kind)], 1, max(1, int(num_cpus or 1)), use_vmap, compile, max_retries,
                         executor, ray_address, num_cpus or 1.0, num_gpus, ray_timeout or CONNECT_TIMEOUT_S)
    if ray_address or num_cpus or num_gpus or ray_timeout:
        raise ParamError("{ray_address}/{ray_timeout}/{num_cpus}/{num_gpus} need {executor=ray}")
    if devices:
        resolved = [resolve_device(d, "devices") for d in devices]
        if len({d.type for d in resolved}) != 1:
            raise OptionError("devices", devices, "a mix of device types (use one type, e.g. cuda:0,cuda:1)")
    else:
        resolved = [resolve_device(device)]
    cores = usable_cores()
    if workers is None:
        workers = len(resolved) if resolved[0].type == "cuda" else cores
    if threads is None:
        threads = default_threads(workers)
    use_vmap = vmap == "on" or (vmap == "auto" and resolved[0].type == "cuda")
    return Execution(resolved, workers, threads, use_vmap, compile, max_retries, executor)


def run_sweep(config: str | Path | SweepConfig, *, results_dir: str | Path = "results", device: str = "auto",
              devices: list[str] | None = None, workers: int | None = None, threads: int | None = None,
              vmap: str = "auto", compile: bool = False, precision: str | None = None, max_retries: int = 2,
              fresh: bool = False, max_runs: int | None = None, offline: bool = False,
              executor: str = "local", ray_address: str | None = None, num_cpus: float | None = None,
              num_gpus: float | None = None, shard: tuple[int, int] | None = None,
              time_budget: float | None = None, observer: Observer | None = None,
              ray_timeout: float | None = None, fail_fast: bool = False,
              log_to: list[str] | None = None, started_workers: WorkerPool | None = None) -> SweepOutcome:
    """Train every run of a config that is not finished yet; return what happened.

    Ctrl-C (``KeyboardInterrupt``) is caught: the runs in flight are recorded as
    ``interrupted`` and the outcome comes back with ``interrupted=True`` (and
    ``terminated=True`` when it was SIGTERM, see ``errors.sigterm_as_interrupt``). ``shard=(K, N)``
    keeps the K-th of N disjoint parts of the grid; with ``time_budget`` (seconds) no run
    starts after that long, and ``budget_exhausted`` tells whether runs were left.

    A run this sweep has not finished that another sweep of the folder finished (the same
    run id, whatever the sweep's name) is reused, not trained (unless ``fresh``):
    ``reused`` counts them per sweep, and readers list them under this sweep. With
    ``fail_fast`` the sweep stops at the first failed run as Ctrl-C stops it (the runs in
    flight ``interrupted``, no new run started); ``stopped_at`` says which.
    ``log_to`` adds loggers (``config.LOGGERS``) to the config's ``log_to``: each finished run
    is also written there (``sweep/loggers.py``); they never change a run or its id.
    ``started_workers``: worker processes the caller started before it imported torch
    (``executors.pool.start_early``); once the sweep is planned it trains with them when they
    fit, and stops them otherwise. Should this raise before that, the caller closes them.
    """
    started = time.monotonic()
    cfg = config if isinstance(config, SweepConfig) else load_config(config)
    execution = plan_execution(device, devices, workers, threads, vmap, compile, max_retries, executor,
                               ray_address, num_cpus, num_gpus, ray_timeout)
    if precision is not None:
        if precision not in PRECISIONS:  # model_copy does not validate
            raise OptionError("precision", precision, "use fp32 or bf16")
        cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"precision": precision})})
    check_precision(cfg.train.precision, execution.device)
    observer = observer or Observer()
    loggers = open_loggers([*cfg.log_to, *(log_to or ())], results_dir, cfg.name)
    # the data first: a missing dataset is refused before a results folder is created for it
    source, plan = resolve_plan(cfg, offline=offline)
    observer.data_resolved(source)
    with Store(results_dir) as store:
        planned = [s for s in plan.runs if shard is None or in_shard(s.run_id, *shard)]
        fresh_since = datetime.now(timezone.utc).isoformat(timespec="milliseconds") if fresh else None
        done = store.finished_run_ids(cfg.name, fresh_since)
        # read here, once, in the process the user started: a worker's folder is not theirs
        git = git_state()
        ledger = Ledger(store, Claim(source.requested, source.fallback_reason, fresh_since, git.commit, git.dirty),
                        observer, fail_fast=fail_fast, loggers=loggers)
        reused = {} if fresh else ledger.reuse(cfg.name, [s for s in planned if s.run_id not in done])
        if reused:
            done = store.finished_run_ids(cfg.name)
        todo = [spec for spec in planned if spec.run_id not in done][:max_runs]
        groups = group_specs(todo) if execution.vmap else [[spec] for spec in todo]
        # longest first (a stable sort: plan order among equals), so that the workers run out
        # of work together instead of one training a deep net while the others idle
        groups.sort(key=lambda specs: -estimate_work(specs).train_flops)
        tasks = [Task(i, specs, source) for i, specs in enumerate(groups)]
        if workers is None and execution.executor == "local" and execution.device.type == "cpu":
            execution = _fit_workers(execution, tasks, todo, threads)
        if started_workers is not None:
            execution = replace(execution, started=started_workers.adopt(execution, len(tasks)))
        outcome = SweepOutcome(cfg.name, Path(results_dir), source, len(planned),
                               sum(spec.run_id in done for spec in planned), execution=execution,
                               run_ids={s.run_id for s in planned}, n_in_grid=len(plan.runs),
                               reused=dict(reused))
        observer.sweep_started(cfg.name, len(planned), len(todo), outcome.n_done_before)

        def may_start() -> bool:
            if time_budget is None or time.monotonic() - started < time_budget:
                return True
            outcome.budget_exhausted = True
            return False

        try:
            with get_executor(execution.executor)(execution) as executor:
                try:
                    executor.execute(tasks, ledger, observer, may_start)
                except BaseException as exc:  # marked before the executor's shutdown, which may take seconds
                    ledger.interrupt_open(f"interrupted (run {exc.spec.run_id} failed first: fail_fast)"
                                          if isinstance(exc, StopAtFailure) else interrupt_reason(exc))
                    raise
        except KeyboardInterrupt as exc:
            outcome.interrupted = True
            outcome.terminated = terminated(exc)
        except StopAtFailure as exc:
            outcome.stopped_at = str(exc)
        finally:
            outcome.results, outcome.n_skipped = ledger.results, ledger.n_skipped
    return outcome


def _fit_workers(execution: Execution, tasks: list[Task], todo: list[RunSpec], threads: int | None) -> Execution:
    """The default worker count, fitted to the sweep: no more workers than tasks, and none
    at all (train in this process, every core's threads) when the work is too small to pay
    for starting them."""
    workers = min(execution.workers, len(tasks))
    if estimate_work(todo).train_flops < POOL_MIN_FLOPS:
        workers = 1
    workers = max(1, workers)
    if workers == execution.workers:
        return execution
    return replace(execution, workers=workers, threads=threads or default_threads(workers))
