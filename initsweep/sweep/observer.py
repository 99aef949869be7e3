"""What a running sweep tells its caller: :class:`Observer`, the events of ``run_sweep``.

On its own so that the executors and the ledger, which send the events, and ``run.py``,
which takes the observer, all import it without importing each other.
"""

from __future__ import annotations

from ..config import RunSpec
from ..data import DataSource
from ..train import RunResult


class Observer:
    """Sweep events; subclass and override what you need (every method is a no-op here)."""

    def data_resolved(self, source: DataSource) -> None: ...
    def sweep_started(self, sweep: str, n_planned: int, n_todo: int, n_done: int) -> None: ...
    def run_started(self, spec: RunSpec) -> None: ...
    def run_progress(self, spec: RunSpec, epoch: int, step: int, steps: int) -> None: ...
    def run_finished(self, spec: RunSpec, result: RunResult) -> None: ...
    def run_skipped(self, spec: RunSpec, why: str) -> None: ...
    def worker_died(self, worker: int, pid: int, cause: str, spec: RunSpec, attempt: int, max_retries: int) -> None:
        """A worker process died (``cause``: "signal 9", "exit code 1") with ``spec`` unfinished;
        it is retried if ``attempt <= max_retries``, else recorded ``failed``."""
