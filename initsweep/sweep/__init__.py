"""Running a sweep: ``run.py`` (``run_sweep``: plan, skip what is finished, hand runs to an
executor), ``ledger.py`` (the one writer of runs to the store: claims, results,
interruptions), ``observer.py`` (the events a sweep reports), ``planner.py`` (the data and
the runs a config plans, shards, time budgets, cost) and ``executors/`` (a registry of where
runs train: this machine — in this process or warm worker processes — or a Ray cluster;
they never touch the store).

``run.py``'s names are imported on first use: a pool worker imports this package on its way
to its entry point (``executors/pool.py``) and needs none of the store, the ledger or pandas,
which cost it 0.3 s of start-up before its first run (``python -X importtime``).
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__all__ = ["Observer", "SweepOutcome", "plan_execution", "run_sweep"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(import_module(".run", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
