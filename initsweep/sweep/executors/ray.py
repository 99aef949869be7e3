"""The Ray executor: every task (one run, or a vmapped group on GPU) is a Ray task.

The driver — the ``initsweep run`` process — owns the store exactly as with the local
executor: it claims a task's runs (through the sweep's ledger) when it submits the task and
records each result the moment it comes back, so resume, summaries and exit codes behave
the same. Ray brings
the cluster: placement by resources (``num_cpus``, fractional ``num_gpus``), and retries
of a task whose worker process died (``max_retries``); a retried run is still stored once,
because only the driver writes. Data is loaded once per Ray worker process (the loaders
cache per process and Ray reuses its workers), not once per task.

At most as many tasks are in flight as the cluster has room for, so runs are claimed
when they are about to start, not all at once: a second driver on the same results
folder (or a rerun after a crash) sees the truth.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import threading
import time
from contextlib import contextmanager
from typing import TYPE_CHECKING, Callable, Iterator

from ...config import RunSpec
from ...errors import OptionError, ParamError
from ...train import RunResult, environment
from . import CONNECT_TIMEOUT_S, Executor, Task, register_executor, usable_cores

if TYPE_CHECKING:
    from ..ledger import Ledger


def _no_answer(address: str, timeout: float) -> OptionError:
    return OptionError("ray_address", address, f"no answer from Ray within {timeout:g} s", see="ray_timeout")


def _cannot_connect(address: str | None, why: object) -> OptionError:
    return OptionError("ray_address", address, f"cannot connect to Ray: {why}".splitlines()[0])


def _import_ray():
    try:
        import ray
    except ImportError:
        raise ParamError("{executor=ray} needs Ray: pip install 'initsweep[ray]'") from None
    return ray


def _train_task(specs: list[RunSpec], device: str, source, threads: int) -> list[RunResult]:
    """What runs on a Ray worker: a task's runs, trained as in a local worker."""
    import torch

    from ...batched import run_group

    torch.set_num_threads(threads)
    return run_group(specs, device, source=source)


@contextmanager
def _ray_output_dropped() -> Iterator[Callable[[], None]]:
    """Point file descriptor 2 at /dev/null while Ray connects.

    Ray's C++ core writes its connection retries ("Failed to connect to GCS ... within 5
    seconds", over and over) straight to descriptor 2, past Python's logging, into the
    progress bars. Yields ``abandon``: call it when Ray may still be talking (a connection
    attempt that timed out keeps running in its thread); the descriptor then stays on
    /dev/null and Python's ``sys.stderr`` moves to a copy of the real one, so this
    process's own messages still reach the terminal.
    """
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    os.close(devnull)
    abandoned = False

    def abandon() -> None:
        nonlocal abandoned
        abandoned = True
        sys.stderr = open(saved, "w", buffering=1, encoding=sys.stderr.encoding, errors="backslashreplace")

    try:
        yield abandon
    finally:
        if not abandoned:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)


def _check_listening(address: str, timeout: float) -> None:
    """Fail at once when nothing listens at HOST:PORT (Ray itself retries for minutes).

    Other forms (``auto``) are left to Ray; the bounded wait in :class:`RayCluster` still holds.
    """
    host, _, port = address.split("://")[-1].rpartition(":")
    if not host or not port.isdigit():
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except TimeoutError:
        raise _no_answer(address, timeout) from None
    except OSError as exc:
        raise _cannot_connect(address, exc.strerror or exc) from None


class RayCluster:
    """Connect to a cluster (``address``), or start a local one with this machine's cores.

    Connecting is given up after ``timeout`` seconds: pointed at nothing, or at something
    that is not Ray, ``ray.init`` would retry for minutes. Ray's own output is kept off the
    terminal, and Ray's SIGTERM handler (``sys.exit``) is not left in place of the CLI's,
    so SIGTERM still marks the runs in flight ``interrupted`` and exits 143.
    """

    def __init__(self, address: str | None, num_cpus: int, timeout: float = CONNECT_TIMEOUT_S):
        self.ray = _import_ray()
        self.timeout = timeout
        self.started_here = not self.ray.is_initialized()
        if self.started_here:
            # "local" starts a new local instance even when a cluster already runs on this machine
            # (without it, ray.init would join that cluster and refuse num_cpus)
            kwargs = {"address": address} if address else {"address": "local", "num_cpus": num_cpus,
                                                            "include_dashboard": False}
            kwargs.update(log_to_driver=False, configure_logging=False)
            deadline = time.monotonic() + timeout
            if address:
                _check_listening(address, timeout)
            sigterm = signal.getsignal(signal.SIGTERM)
            try:
                with _ray_output_dropped() as abandon:
                    if address:
                        self._connect(kwargs, deadline, abandon)
                    else:  # in this thread: Ray ties the processes it starts to the thread that starts them
                        self.ray.init(**kwargs)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                raise _cannot_connect(address, exc) from None
            finally:
                if sigterm is not None and threading.current_thread() is threading.main_thread():
                    signal.signal(signal.SIGTERM, sigterm)

    def _connect(self, kwargs: dict, deadline: float, abandon: Callable[[], None]) -> None:
        """``ray.init`` in a thread, waited for until ``deadline`` (``time.monotonic``); it cannot be cancelled."""
        failure: list[BaseException] = []

        def connect() -> None:
            try:
                self.ray.init(**kwargs)
            except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
                failure.append(exc)

        thread = threading.Thread(target=connect, name="initsweep-ray-connect", daemon=True)
        thread.start()
        thread.join(max(0.0, deadline - time.monotonic()))
        if thread.is_alive():
            abandon()
            raise _no_answer(kwargs["address"], self.timeout)
        if failure:
            raise failure[0]

    def capacity(self, num_cpus: float, num_gpus: float) -> int:
        """How many tasks of this size fit on the cluster at once (at least one)."""
        resources = self.ray.cluster_resources()
        fits = [resources.get("CPU", 1) / num_cpus] if num_cpus else []
        if num_gpus:
            fits.append(resources.get("GPU", 0) / num_gpus)
        return max(1, int(min(fits))) if fits else 1

    def close(self) -> None:
        if self.started_here:
            self.ray.shutdown()


@register_executor("ray", help="a Ray cluster")
class RayExecutor(Executor):
    """Connects on enter (or starts a local cluster with this machine's cores), submits tasks as
    room frees up, and on exit disconnects (Ray then stops the tasks a stopped sweep left)."""

    cluster = True

    def __enter__(self) -> "RayExecutor":
        self.cluster_ = RayCluster(self.execution.ray_address, usable_cores(), self.execution.ray_timeout)
        return self

    def __exit__(self, *exc_info) -> None:
        # Tasks still in flight (the sweep was stopped) are not cancelled one by one: Ray kills a
        # job's workers when its driver disconnects, and a force-cancel racing a task that was
        # just finishing crashed Ray's core in this process (a failed CHECK, "Tried to complete
        # task that was not pending", seen once in 20-odd SIGTERM tests), losing exit code 143.
        self.cluster_.close()

    def execute(self, tasks: list[Task], ledger: "Ledger", observer, may_start: Callable[[], bool]) -> None:
        ex, ray = self.execution, self.cluster_.ray
        inflight: dict = {}  # ObjectRef -> the specs it trains
        remote = ray.remote(_train_task).options(num_cpus=ex.num_cpus, num_gpus=ex.num_gpus,
                                                 max_retries=ex.max_retries, name="initsweep-train")
        threads = max(1, int(ex.num_cpus))
        room = self.cluster_.capacity(ex.num_cpus, ex.num_gpus)
        pending = list(tasks)
        while pending or inflight:
            if pending and not may_start():
                pending.clear()  # budget spent: let the tasks in flight finish, submit nothing new
            while pending and len(inflight) < room:
                task = pending.pop(0)
                specs = ledger.claim(task.specs)
                if specs:
                    for spec in specs:
                        observer.run_started(spec)
                    inflight[remote.remote(specs, str(ex.device), task.source, threads)] = specs
            if not inflight:
                continue
            done, _ = ray.wait(list(inflight), num_returns=1, timeout=1.0)
            for ref in done:
                specs = inflight.pop(ref)
                try:
                    results = ray.get(ref)
                except Exception as exc:  # noqa: BLE001 — the task's worker kept dying, or Ray failed it
                    error = (f"Ray task failed after {ex.max_retries} retries: "
                             f"{type(exc).__name__}: {exc}").splitlines()[0]
                    results = [RunResult(s.run_id, "failed", error=error, traceback=str(exc),
                                         environment=environment()) for s in specs]
                for spec, result in zip(specs, results):
                    ledger.finish(spec, result)
