"""The in-process executor: runs one after another in the calling process."""

from __future__ import annotations

from typing import Iterator

import torch

from ..config import RunSpec
from ..data import DataSource
from ..store import Store
from ..train import RunResult, run_safely


def execute_sequential(specs: list[RunSpec], *, store: Store, device: torch.device, source: DataSource,
                       observer, claim_kwargs: dict) -> Iterator[tuple[RunSpec, RunResult | None]]:
    """Claim, train and record each run in turn, yielding ``(spec, result)`` as each is stored.

    ``result`` is ``None`` for a run another process finished or claimed meanwhile. Ctrl-C
    marks the run in flight ``interrupted`` and propagates.
    """
    for spec in specs:
        row_id = store.claim(spec, **claim_kwargs)
        if row_id is None:
            yield spec, None
            continue
        observer.run_started(spec)
        try:
            result = run_safely(spec, device, source=source,
                                progress=lambda epoch, step, steps: observer.run_progress(spec, epoch, step, steps))
            store.finish(row_id, result)
        except KeyboardInterrupt:
            store.mark_interrupted(row_id, "interrupted (Ctrl-C or SIGTERM)")
            raise
        yield spec, result
