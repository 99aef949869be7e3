"""Where a sweep's wall time went, from its runs' stored timings: training, evaluation and
everything else (start-up, each run's set-up and probes, the store, the tail where a
worker waits for the last run).

``initsweep run`` prints it at the end of its summary, so a user sees how much of the wall
time trained models without a profiler; ``benchmarks/bench_sweep.py --study`` measures the
same split. The shares are per worker: W workers training side by side for the whole wall
time are 100% training.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd


@dataclass(frozen=True)
class TimeShares:
    wall: float  # seconds
    workers: int
    training: float  # fractions of workers x wall
    evaluation: float

    @property
    def other(self) -> float:
        return 1.0 - self.training - self.evaluation


def time_shares(runs: pd.DataFrame, wall: float, workers: int) -> TimeShares:
    """The shares of ``workers`` x ``wall`` seconds the stored ``runs`` spent training
    (``train_seconds``) and evaluating (``eval_seconds``). The runs of one vmapped group share
    one training and one evaluation time, stored on each of them: counted once."""
    timed = runs.dropna(subset=["train_seconds"])
    batched = timed["batched"].fillna(0).astype(bool)
    timed = pd.concat([timed[~batched], timed[batched].drop_duplicates(["worker", "train_seconds", "eval_seconds"])])
    capacity = max(1, workers) * wall
    return TimeShares(wall, max(1, workers), float(timed["train_seconds"].sum()) / capacity,
                      float(timed["eval_seconds"].fillna(0).sum()) / capacity)
