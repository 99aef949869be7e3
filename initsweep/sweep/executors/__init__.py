"""Executors: how a list of claimed runs gets trained (in-process, worker pool, Ray).

Each executor trains runs with ``train.run_safely`` somewhere and hands every result back
to the process that owns the store, which records it the moment it arrives.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Generator

from ...config import RunSpec
from ...data import DataSource

if TYPE_CHECKING:
    from ...results.store import Store


@dataclass
class Task:
    """Runs trained together: one spec, or a group trained as one batched (vmapped) model."""

    task_id: int
    specs: list[RunSpec]
    source: DataSource
    attempts: int = 0
    row_ids: dict[str, int] = field(default_factory=dict)  # run_id -> claimed row
    done: set[str] = field(default_factory=set)  # run_ids whose result came back


def claim_runs(specs: list[RunSpec], store: "Store",
               claim_kwargs: dict) -> Generator[tuple[RunSpec, None], None, dict[str, int]]:
    """Claim each run in the store before it is trained; every executor does this.

    Yields ``(spec, None)`` for a run that another process finished or holds (the
    executors pass it on as skipped) and returns ``run_id -> row id`` of the runs claimed:
    ``rows = yield from claim_runs(...)``.
    """
    rows = {}
    for spec in specs:
        row_id = store.claim(spec, **claim_kwargs)
        if row_id is None:
            yield spec, None
        else:
            rows[spec.run_id] = row_id
    return rows
