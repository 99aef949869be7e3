"""Running a sweep: ``run.py`` (``run_sweep``: plan, skip what is finished, hand runs to an
executor, store each result), ``planner.py`` (the data and the runs a config plans, shards,
time budgets, cost) and ``executors/`` (where runs train: in this process, warm worker
processes, a Ray cluster)."""

from __future__ import annotations

from .run import Observer, SweepOutcome, plan_execution, run_sweep

__all__ = ["Observer", "SweepOutcome", "plan_execution", "run_sweep"]
