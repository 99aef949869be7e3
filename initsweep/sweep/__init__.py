"""Running a sweep: ``run.py`` (``run_sweep``: plan, skip what is finished, hand runs to an
executor), ``ledger.py`` (the one writer of runs to the store: claims, results,
interruptions), ``observer.py`` (the events a sweep reports), ``planner.py`` (the data and
the runs a config plans, shards, time budgets, cost) and ``executors/`` (a registry of where
runs train: this machine — in this process or warm worker processes — or a Ray cluster;
they never touch the store)."""

from __future__ import annotations

from .run import Observer, SweepOutcome, plan_execution, run_sweep

__all__ = ["Observer", "SweepOutcome", "plan_execution", "run_sweep"]
