"""From a config to the work to do: the data and runs it plans, shards, time budgets, and
counts and cost estimates (``initsweep plan``).

* ``--shard K/N`` keeps the runs whose ``run_id`` (a hex hash) is ``K-1`` modulo ``N``:
  N jobs over the same config cover the grid exactly once, whatever the grid, and a run
  stays in its shard when other points are added or removed.
* ``--time-budget 15m`` starts no new run once the budget is spent, lets the runs in
  flight finish, and exits with :data:`~initsweep.errors.EXIT_BUDGET` (75); the next
  invocation resumes where it stopped.

With a results folder, ``plan`` also says where each run stands (:func:`run_status`): done
(here, or by another sweep, which ``run`` would reuse), failed, interrupted, running or left,
and the work left (the runs not done; a ``running`` claim whose process is gone reads
``interrupted``, as the next claim records it).

Costs are counted, not guessed: each distinct model shape is built on the meta device and walked
(layers, parameters, forward multiply-accumulates), and training is taken as 3x the
forward pass (forward + backward for activations and weights), 2 FLOPs per MAC.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from ..config import Plan, RunSpec, SweepConfig, expand
from ..data import DataSource, dataset_sizes, resolve_source, split_sizes
from ..errors import OptionError
from ..models import ModelShape, measure_shape
from ..results.read import is_empty_folder
from ..results.store import FINISHED, Store


def resolve_plan(cfg: SweepConfig, *, offline: bool = False) -> tuple[DataSource, Plan]:
    """The data a config's runs will use, and the runs, as ``run`` trains them.

    The source is resolved first (found, downloaded, or the fallback the config allows) and
    the grid expanded on the dataset actually used, so a run's id says what it trains on.
    ``run_sweep`` and ``initsweep plan`` both call this, so they list the same run ids.
    """
    source = resolve_source(cfg.data, offline=offline)
    return source, expand(cfg, dataset=source.dataset)


@lru_cache(maxsize=256)
def _shape(arch: str, depth: int, width: int, norm: str, head: str) -> ModelShape:
    return measure_shape(arch, depth=depth, width=width, norm=norm, head=head)


def model_shape(spec: RunSpec) -> ModelShape:
    m = spec.model
    return _shape(m.arch, m.depth, m.width, m.norm, m.head)


def run_split_sizes(spec: RunSpec) -> tuple[int, int, int]:
    """``(n_train, n_val, n_test)`` the run will use, from the dataset's known sizes."""
    d = spec.data
    return split_sizes(*dataset_sizes(d.dataset), val_fraction=d.val_fraction,
                       train_limit=d.train_limit, test_limit=d.test_limit)


def train_samples(spec: RunSpec) -> int:
    """Training examples the run will process (epochs x train size, capped by max_steps)."""
    n_train = run_split_sizes(spec)[0]
    samples = n_train * spec.train.epochs
    if spec.train.max_steps is not None:
        samples = min(samples, spec.train.max_steps * spec.train.batch_size)
    return samples


@dataclass(frozen=True)
class WorkEstimate:
    n_runs: int
    train_samples: int  # summed over runs
    train_flops: float  # summed over runs
    largest_params: int
    largest_macs: int


def estimate_work(runs: list[RunSpec]) -> WorkEstimate:
    samples = flops = 0.0
    largest_params = largest_macs = 0
    for spec in runs:
        shape = model_shape(spec)
        n = train_samples(spec)
        samples += n
        flops += 3 * 2 * shape.macs_per_sample * n
        largest_params = max(largest_params, shape.n_params)
        largest_macs = max(largest_macs, shape.macs_per_sample)
    return WorkEstimate(len(runs), int(samples), flops, largest_params, largest_macs)


# What plan --results says of a run, in the order its totals list them
RUN_STATES = ("done", "failed", "interrupted", "running", "left")


def run_status(plan: Plan, results_dir: str | Path) -> dict[str, tuple[str, str | None]]:
    """``run_id -> (state, reused from)`` of each planned run in a results folder, a state of
    :data:`RUN_STATES`. A run the sweep has not finished that another sweep finished is
    ``done``, from that sweep: ``run`` reuses it. A folder with nothing in it yet: all left."""
    if is_empty_folder(Path(results_dir)):
        return {spec.run_id: ("left", None) for spec in plan.runs}
    with Store(results_dir, create=False) as store:
        held, elsewhere = store.run_states(plan.config.name)
    states = {}
    for spec in plan.runs:
        status, source = held.get(spec.run_id, (None, None))
        if status == "running" or status in FINISHED:
            states[spec.run_id] = ("running" if status == "running" else "done", source)
        elif spec.run_id in elsewhere:
            states[spec.run_id] = ("done", elsewhere[spec.run_id])
        else:
            states[spec.run_id] = (status or "left", None)
    return states


def _work(work: WorkEstimate) -> dict[str, Any]:
    return {"train_samples": work.train_samples, "train_gflop": round(work.train_flops / 1e9, 3),
            "largest_params": work.largest_params, "largest_macs_per_sample": work.largest_macs}


def plan_summary(plan: Plan, source: DataSource, results_dir: str | Path | None = None) -> dict[str, Any]:
    """Everything ``initsweep plan`` shows, as plain data (also its ``--format json``); the
    data fields are named like the store's columns (``dataset`` is the data used). With
    ``results_dir``, each run's ``status`` there (and ``reused_from``), their ``totals`` and
    the ``work_left`` (the runs not done)."""
    work = estimate_work(plan.runs)
    states = run_status(plan, results_dir) if results_dir is not None else None
    runs = []
    for spec in plan.runs:
        shape = model_shape(spec)
        row = {"run_id": spec.run_id, **dict(spec.point), "seed": spec.seed,
               "params": shape.n_params, "macs_per_sample": shape.macs_per_sample,
               "train_samples": train_samples(spec)}
        if states is not None:
            row["status"], row["reused_from"] = states[spec.run_id]
        runs.append(row)
    status = {}
    if states is not None:
        left = [spec for spec in plan.runs if states[spec.run_id][0] != "done"]
        reused = Counter(source for state, source in states.values() if source)
        status = {"results": str(results_dir),
                  "totals": {state: sum(s == state for s, _ in states.values()) for state in RUN_STATES},
                  "reused_from": dict(sorted(reused.items())),
                  "work_left": {"n_runs": len(left), **_work(estimate_work(left))}}
    return {
        "sweep": plan.config.name,
        "dataset": source.dataset,
        "dataset_requested": source.requested,
        "data_location": source.location,
        "data_fallback": source.fallback_reason,
        "axes": plan.axes,
        "grids": plan.grids,
        "seeds": plan.config.train.seeds,
        "n_points": plan.n_points,
        "n_excluded": plan.n_excluded,
        "n_duplicates": plan.n_duplicates,
        "n_runs": len(plan.runs),
        "notes": plan.notes,
        "work": _work(work),
        **status,
        "runs": runs,
    }


def parse_shard(text: str) -> tuple[int, int]:
    """``"2/4"`` -> ``(2, 4)``; K is 1-based."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text or "")
    if not match:
        raise OptionError("shard", text, "expected K/N, e.g. 1/4")
    k, n = int(match[1]), int(match[2])
    if n < 1:
        raise OptionError("shard", text, "N must be at least 1")
    if not 1 <= k <= n:
        raise OptionError("shard", text, f"K must be between 1 and {n}")
    return k, n


def in_shard(run_id: str, k: int, n: int) -> bool:
    return int(run_id, 16) % n == k - 1


_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*(h|m|s)")


def parse_duration(text: str) -> float:
    """``"90s"``, ``"15m"``, ``"1h30m"``, ``"2.5h"`` or plain seconds -> seconds."""
    text = (text or "").strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", text):
        seconds = float(text)
    else:
        parts = _DURATION.findall(text)
        if not parts or "".join(f"{v}{u}" for v, u in parts) != text.replace(" ", ""):
            raise OptionError("time_budget", text, "expected a duration such as 90s, 15m or 1h30m")
        seconds = sum(float(v) * {"h": 3600, "m": 60, "s": 1}[u] for v, u in parts)
    if seconds <= 0:
        raise OptionError("time_budget", text, "must be more than zero")
    return seconds
