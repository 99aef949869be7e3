"""The local executor: this machine, in this process (one worker) or a pool of warm worker
processes (``pool.py``)."""

from __future__ import annotations

from typing import Callable

import torch

from ...batched import run_group
from . import Execution, Executor, Task, register_executor
from .pool import WorkerPool


@register_executor("local", help="this machine")
class LocalExecutor(Executor):
    """One worker: train in this process with ``execution.threads`` threads; more: a
    :class:`WorkerPool` of no more workers than tasks, the one started early when the sweep
    adopted it (``execution.started``), else its own (stopped on exit; at once, not waiting
    for the runs in flight, when the sweep was stopped)."""

    def __init__(self, execution: Execution):
        super().__init__(execution)
        self.pool: WorkerPool | None = None
        self._threads_before = 0

    def __enter__(self) -> "LocalExecutor":
        self._threads_before = torch.get_num_threads()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        torch.set_num_threads(self._threads_before)
        if self.pool is not None:  # a stopped sweep does not wait for the runs its workers train
            self.pool.close(timeout=0.0 if exc_type else 5.0)

    def execute(self, tasks: list[Task], ledger, observer, may_start: Callable[[], bool]) -> None:
        ex = self.execution
        if ex.workers > 1:
            self.pool = ex.started or WorkerPool(min(ex.workers, len(tasks)), [str(d) for d in ex.devices],
                                                 ex.threads, ex.compile)
            self.pool.execute(tasks, ledger=ledger, observer=observer, max_retries=ex.max_retries,
                              may_start=may_start)
            return
        torch.set_num_threads(ex.threads)
        execute_in_process(tasks, ledger=ledger, device=self.execution.device, observer=observer,
                           compile=self.execution.compile, may_start=may_start)


def execute_in_process(tasks: list[Task], *, ledger, device: torch.device, observer, compile: bool = False,
                       may_start: Callable[[], bool] = lambda: True) -> None:
    """Claim, train and record each task in turn, in this process; no task starts once
    ``may_start()`` is false (a spent time budget)."""
    from ...train import run_safely

    for task in tasks:
        if not may_start():
            return
        specs = ledger.claim(task.specs)
        for spec in specs:
            observer.run_started(spec)
        if len(specs) == 1:
            spec = specs[0]
            results = [run_safely(spec, device, source=task.source, compile=compile,
                                  progress=lambda e, s, n: observer.run_progress(spec, e, s, n))]
        elif specs:
            results = run_group(specs, device, source=task.source, progress=observer.run_progress)
        else:
            results = []
        for spec, result in zip(specs, results):
            ledger.finish(spec, result)
