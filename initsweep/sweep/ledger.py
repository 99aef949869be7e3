"""The one place a sweep writes its runs to the store: claims, results, interruptions.

Executors train and never touch the store. Before training a task they ask the ledger to
claim its runs (a run that another process finished or holds meanwhile is passed over,
and counted as skipped); each result they hand to :meth:`Ledger.finish` the moment it
arrives; a run whose worker died and is retried gives back its attempt with
:meth:`Ledger.abandon`. When the sweep stops early (Ctrl-C, SIGTERM, an error),
``run_sweep`` calls :meth:`Ledger.interrupt_open`, which marks every run still in flight
``interrupted``. So whatever the executor, the store tells the same story, and so do the
sweep's loggers (``log_to``), which the ledger hands each run once the store has it.

Before training, :meth:`Ledger.reuse` takes the runs another sweep of the folder finished
(run ids exclude the sweep name) as this sweep's. With ``fail_fast``, :meth:`Ledger.finish`
raises :class:`StopAtFailure` once it has stored a failed run: it comes out of every
executor's loop as Ctrl-C does, so ``run_sweep`` stops the sweep the same way.

A result that carries weights (``train.save``) has them written here too, to
``<results>/checkpoints/<run_id>.pt``, by the process that owns the results folder: the
weights travel back with the result from wherever the run trained (a pool worker, a Ray
worker on another machine), so no worker needs the results folder.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

from ..config import RunSpec
from ..results.checkpoints import write_checkpoint
from ..results.store import Store
from ..train import RunResult

if TYPE_CHECKING:
    from .observer import Observer


@dataclass(frozen=True)
class Claim:
    """What every claimed row of one sweep invocation records besides its spec."""

    dataset_requested: str | None = None  # the dataset the config asked for
    data_fallback: str | None = None  # why another dataset was used, if one was
    fresh_since: str | None = None  # --fresh: results finished before this ISO time are rerun
    git_commit: str | None = None  # the checkout the sweep was started from (provenance.git_state)
    git_dirty: bool | None = None


class StopAtFailure(Exception):
    """A run failed and the sweep stops there (``fail_fast``); the message names the run."""

    def __init__(self, spec: RunSpec, result: RunResult):
        super().__init__(f"run {spec.run_id} failed: {result.error}")
        self.spec, self.result = spec, result


@dataclass
class Ledger:
    store: Store
    claim_as: Claim
    observer: "Observer"
    results: list[tuple[RunSpec, RunResult]] = field(default_factory=list)
    n_skipped: int = 0  # finished or claimed by another process meanwhile
    fail_fast: bool = False  # stop the sweep at the first failed run
    # called with each finished run after the store has it (sweep/loggers.py: log_to)
    loggers: list[Callable[[RunSpec, RunResult], None]] = field(default_factory=list)
    _open: dict[str, int] = field(default_factory=dict)  # run_id -> the row of its attempt in flight
    _sweeps: set[str] = field(default_factory=set)  # every sweep this ledger has claimed runs of

    def reuse(self, sweep: str, specs: list[RunSpec]) -> Counter:
        """Take as ``sweep``'s the runs of ``specs`` that another sweep finished; how many
        came from each sweep."""
        return Counter(self.store.reuse(sweep, [spec.run_id for spec in specs]).values())

    def claim(self, specs: list[RunSpec]) -> list[RunSpec]:
        """Claim each run for this process; return the ones claimed, in order."""
        claimed = []
        for spec in specs:
            self._sweeps.add(spec.sweep)  # before the claim: interrupt_open must know where to look
            row_id = self.store.claim(spec, dataset_requested=self.claim_as.dataset_requested,
                                      data_fallback=self.claim_as.data_fallback,
                                      fresh_since=self.claim_as.fresh_since, git_commit=self.claim_as.git_commit,
                                      git_dirty=self.claim_as.git_dirty)
            if row_id is None:
                self.n_skipped += 1
                self.observer.run_skipped(spec, "finished or running in another process")
            else:
                self._open[spec.run_id] = row_id
                claimed.append(spec)
        return claimed

    def finish(self, spec: RunSpec, result: RunResult) -> None:
        """Store a claimed run's result (its epochs, layers and predictions with it, atomically),
        after writing its weights, if it carries any, to its checkpoint file."""
        if result.weights is not None:
            result.checkpoint = write_checkpoint(self.store.dir, result.run_id, result.weights)
            result.weights = None  # written: the sweep keeps its results, not their weights
        self.store.finish(self._open.pop(spec.run_id), result)
        self.results.append((spec, result))
        for log in self.loggers:
            log(spec, result)
        self.observer.run_finished(spec, result)
        if self.fail_fast and result.status == "failed":
            raise StopAtFailure(spec, result)

    def abandon(self, spec: RunSpec, reason: str) -> None:
        """End a claimed run's attempt as ``interrupted`` (its row stays as history); a
        retry claims the run again, as a new attempt with a new row."""
        self.store.mark_interrupted(self._open.pop(spec.run_id), reason)

    def interrupt_open(self, reason: str) -> None:
        """Mark every run claimed and not finished ``interrupted``: the sweep is stopping.

        Then every run this process still holds ``running`` in the sweeps it claimed in: a
        Ctrl-C lands between any two bytecodes, so it may come after a claim's commit and
        before the row reached ``_open``, or abort a finish's transaction after its row left
        ``_open``; either would leave a ``running`` row behind a process that is gone."""
        while self._open:
            _, row_id = self._open.popitem()
            self.store.mark_interrupted(row_id, reason)
        self.store.mark_own_interrupted(self._sweeps, reason)

    def is_open(self, run_id: str) -> bool:
        return run_id in self._open
