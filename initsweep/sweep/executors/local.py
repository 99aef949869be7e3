"""The in-process executor: tasks one after another in the calling process."""

from __future__ import annotations

from typing import Iterator

import torch

from ...batched import run_group
from ...config import RunSpec
from ...errors import interrupt_reason
from ...results.store import Store
from ...train import RunResult
from . import Task, claim_runs


def execute_in_process(tasks: list[Task], *, store: Store, device: torch.device, observer, claim_kwargs: dict,
                       compile: bool = False, may_start=lambda: True) -> Iterator[tuple[RunSpec, RunResult | None]]:
    """Claim, train and record each task in turn, yielding ``(spec, result)`` as each is stored.

    ``result`` is ``None`` for a run another process finished or claimed meanwhile. Ctrl-C
    marks the runs in flight ``interrupted`` and propagates. No task starts once
    ``may_start()`` is false (a spent time budget).
    """
    from ...train import run_safely

    for task in tasks:
        if not may_start():
            return
        rows = yield from claim_runs(task.specs, store, claim_kwargs)
        specs = [s for s in task.specs if s.run_id in rows]
        if not specs:
            continue
        for spec in specs:
            observer.run_started(spec)
        try:
            if len(specs) == 1:
                spec = specs[0]
                results = [run_safely(spec, device, source=task.source, compile=compile,
                                      progress=lambda e, s, n: observer.run_progress(spec, e, s, n))]
            else:
                results = run_group(specs, device, source=task.source, progress=observer.run_progress)
            for spec, result in zip(specs, results):
                store.finish(rows.pop(spec.run_id), result)
                yield spec, result
        except KeyboardInterrupt as exc:
            for row_id in rows.values():
                store.mark_interrupted(row_id, interrupt_reason(exc))
            raise
