"""Run a whole sweep: config -> data -> plan -> resume -> executor -> store.

``run_sweep`` is the library entry point behind ``initsweep run``; it prints nothing and
reports progress to an :class:`Observer` (the CLI's draws the progress bars).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from .config import RunSpec, SweepConfig, expand, load_config
from .data import DataSource, resolve_source
from .store import Store
from .train import RunResult, resolve_device


class Observer:
    """Sweep events; subclass and override what you need (every method is a no-op here)."""

    def data_resolved(self, source: DataSource) -> None: ...
    def sweep_started(self, sweep: str, n_planned: int, n_todo: int, n_done: int) -> None: ...
    def run_started(self, spec: RunSpec) -> None: ...
    def run_progress(self, spec: RunSpec, epoch: int, step: int, steps: int) -> None: ...
    def run_finished(self, spec: RunSpec, result: RunResult) -> None: ...
    def run_skipped(self, spec: RunSpec, why: str) -> None: ...


@dataclass
class SweepOutcome:
    sweep: str
    results_dir: Path
    source: DataSource
    n_planned: int  # runs in the plan
    n_done_before: int  # already finished when the sweep started (resume)
    results: list[tuple[RunSpec, RunResult]] = field(default_factory=list)
    n_skipped: int = 0  # finished or claimed by another process meanwhile
    interrupted: bool = False

    @property
    def counts(self) -> Counter:
        return Counter(r.status for _, r in self.results)


def run_sweep(config: str | Path | SweepConfig, *, results_dir: str | Path = "results", device: str = "auto",
              fresh: bool = False, max_runs: int | None = None, offline: bool = False,
              observer: Observer | None = None) -> SweepOutcome:
    """Train every run of a config that is not finished yet; return what happened.

    Ctrl-C (``KeyboardInterrupt``) is caught: the run in flight is recorded as
    ``interrupted`` and the outcome comes back with ``interrupted=True``.
    """
    from .executors.local import execute_sequential

    cfg = config if isinstance(config, SweepConfig) else load_config(config)
    torch_device = resolve_device(device)
    observer = observer or Observer()
    with Store(results_dir) as store:
        source = resolve_source(cfg.data, offline=offline)
        observer.data_resolved(source)
        plan = expand(cfg, dataset=source.dataset)
        fresh_since = datetime.now(timezone.utc).isoformat(timespec="milliseconds") if fresh else None
        done = store.finished_run_ids(cfg.name, fresh_since)
        todo = [spec for spec in plan.runs if spec.run_id not in done][:max_runs]
        outcome = SweepOutcome(cfg.name, Path(results_dir), source, len(plan.runs),
                               sum(spec.run_id in done for spec in plan.runs))
        observer.sweep_started(cfg.name, len(plan.runs), len(todo), outcome.n_done_before)
        claim_kwargs = {"dataset_requested": source.requested, "data_fallback": source.fallback_reason,
                        "fresh_since": fresh_since}
        try:
            for spec, result in execute_sequential(todo, store=store, device=torch_device, source=source,
                                                   observer=observer, claim_kwargs=claim_kwargs):
                if result is None:
                    outcome.n_skipped += 1
                    observer.run_skipped(spec, "finished or running in another process")
                else:
                    outcome.results.append((spec, result))
                    observer.run_finished(spec, result)
        except KeyboardInterrupt:
            outcome.interrupted = True
    return outcome
