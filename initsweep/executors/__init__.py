"""Executors: how a list of claimed runs gets trained (in-process, worker pool, Ray).

Each executor trains runs with ``train.run_safely`` somewhere and hands every result back
to the process that owns the store, which records it the moment it arrives.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..config import RunSpec
from ..data import DataSource


@dataclass
class Task:
    """Runs trained together: one spec, or a group trained as one batched (vmapped) model."""

    task_id: int
    specs: list[RunSpec]
    source: DataSource
    attempts: int = 0
    row_ids: dict[str, int] = field(default_factory=dict)  # run_id -> claimed row
    done: set[str] = field(default_factory=set)  # run_ids whose result came back
