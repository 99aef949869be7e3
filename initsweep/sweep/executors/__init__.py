"""Executors: where and how a sweep's tasks are trained (this machine, a Ray cluster).

An executor trains; it never touches the store. ``run_sweep`` hands it the tasks and a
:class:`~initsweep.sweep.ledger.Ledger`, which claims a task's runs before they are trained
and records each result the moment it comes back. An executor is a context manager: its
``__enter__`` starts what it needs (worker processes, a cluster connection) and its
``__exit__`` stops it, so that ``run_sweep`` can mark the runs in flight ``interrupted``
*before* a slow shutdown when the sweep is stopped.

Adding an executor is one module in this package with a class decorated
``@register_executor("name")``: every module here is imported when an executor is first
looked up, so ``run_sweep(executor="name")`` and ``initsweep run --executor name`` take it
with no other edit.

This package and ``pool.py`` import no torch: ``initsweep run`` starts its worker
processes (``pool.start_early``) before its own ``import torch``, so that both import it
at once.
"""

from __future__ import annotations

import importlib
import os
import pkgutil
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from ...errors import OptionError
from ...registry import did_you_mean

if TYPE_CHECKING:
    import torch

    from ...config import RunSpec
    from ...data import DataSource
    from ..ledger import Ledger
    from ..observer import Observer

CONNECT_TIMEOUT_S = 15.0  # --ray-timeout's default: room for a slow network, short of looking hung


@dataclass
class Task:
    """Runs trained together: one spec, or a group trained as one batched (vmapped) model."""

    task_id: int
    specs: list[RunSpec]
    source: DataSource
    attempts: int = 0
    done: set[str] = field(default_factory=set)  # run_ids finished, failed, or taken by another process

    @property
    def seedless_id(self) -> str:
        """Its first run's ``RunSpec.seedless_id``: tasks that share it differ only by seed, and a
        worker that trains them one after the other predicts their probe once (``probe.py``)."""
        return self.specs[0].seedless_id


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def default_threads(workers: int) -> int:
    """Threads per worker when the user names none: the usable cores shared out."""
    return max(1, usable_cores() // workers)


@dataclass(frozen=True)
class Execution:
    """How the runs are executed: resolved from the CLI flags and the machine (``plan_execution``)."""

    devices: list[torch.device]
    workers: int
    threads: int
    vmap: bool
    compile: bool = False
    max_retries: int = 2
    executor: str = "local"  # a name in EXECUTORS
    ray_address: str | None = None
    num_cpus: float = 1.0  # per cluster task
    num_gpus: float = 0.0  # per cluster task; fractions share a GPU
    ray_timeout: float = CONNECT_TIMEOUT_S  # seconds to wait for the cluster at ray_address
    # a pool.WorkerPool started before the plan (``pool.start_early``) that fits this execution:
    # the local executor trains with it instead of starting its own
    started: Any = field(default=None, compare=False, repr=False)

    @property
    def device(self) -> torch.device:
        return self.devices[0]


class Executor:
    """The interface: construct with the :class:`Execution`, enter, ``execute``, exit.

    ``cluster = True`` marks an executor that takes the cluster parameters (``ray_address``,
    ``num_cpus``, ``num_gpus``, ``ray_timeout``); the others refuse them.
    """

    name = ""
    cluster = False
    help = ""

    def __init__(self, execution: Execution):
        self.execution = execution

    def __enter__(self) -> "Executor":
        return self

    def __exit__(self, *exc_info) -> None:
        return None

    def execute(self, tasks: list[Task], ledger: "Ledger", observer: "Observer",
                may_start: Callable[[], bool]) -> None:
        """Train every task whose runs ``ledger.claim`` grants, handing each result to
        ``ledger.finish`` as it arrives; start no task once ``may_start()`` is false."""
        raise NotImplementedError


EXECUTORS: dict[str, type[Executor]] = {}


def register_executor(name: str, help: str = "") -> Callable[[type[Executor]], type[Executor]]:
    """Class decorator: make an :class:`Executor` subclass available under ``name``."""

    def register(cls: type[Executor]) -> type[Executor]:
        if name in EXECUTORS and EXECUTORS[name] is not cls:
            raise ValueError(f"executor {name!r} is registered already")
        cls.name, cls.help = name, help or cls.help
        EXECUTORS[name] = cls
        return cls

    return register


def _import_executors() -> None:
    """Import every module of this package (once: Python caches them), so that each
    registers its executor."""
    for module in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{module.name}")


def get_executor(name: str) -> type[Executor]:
    """The executor registered under ``name``, or an ``OptionError`` on ``executor``."""
    _import_executors()
    try:
        return EXECUTORS[name]
    except KeyError:
        names = list(EXECUTORS)
        listed = " or ".join([", ".join(names[:-1]), names[-1]] if len(names) > 1 else names)
        raise OptionError("executor", name, f"use {listed}" + did_you_mean(name, names)) from None
