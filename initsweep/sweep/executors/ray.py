"""The Ray executor: every task (one run, or a vmapped group on GPU) is a Ray task.

The driver — the ``initsweep run`` process — owns the store exactly as with the local
executor: it claims a task's runs when it submits the task and records each result the
moment it comes back, so resume, summaries and exit codes behave the same. Ray brings
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
from typing import Callable, Iterator

from ...config import RunSpec
from ...errors import InitsweepError, interrupt_reason
from ...results.store import Store
from ...train import RunResult, environment
from . import Task, claim_runs


CONNECT_TIMEOUT_S = 15.0  # --ray-timeout's default: room for a slow network, short of looking hung


def _no_answer(address: str, timeout: float) -> InitsweepError:
    return InitsweepError(f"--ray-address {address}: no answer from Ray within {timeout:g} s (--ray-timeout)")


def _import_ray():
    try:
        import ray
    except ImportError:
        raise InitsweepError("--executor ray needs Ray: pip install 'initsweep[ray]'") from None
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
        raise InitsweepError(f"--ray-address {address}: cannot connect to Ray: {exc.strerror or exc}") from None


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
            kwargs = {"address": address} if address else {"num_cpus": num_cpus, "include_dashboard": False}
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
                raise InitsweepError(f"--ray-address {address}: cannot connect to Ray: {exc}".splitlines()[0]) from None
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


def execute_ray(tasks: list[Task], *, store: Store, observer, claim_kwargs: dict, device: str,
                address: str | None = None, num_cpus: float = 1, num_gpus: float = 0, max_retries: int = 2,
                cluster_cpus: int = 1, may_start=lambda: True,
                timeout: float = CONNECT_TIMEOUT_S) -> Iterator[tuple[RunSpec, RunResult | None]]:
    """Submit tasks to Ray as room frees up; yield ``(spec, result)`` as each result is stored."""
    cluster = RayCluster(address, cluster_cpus, timeout)
    ray = cluster.ray
    remote = ray.remote(_train_task).options(num_cpus=num_cpus, num_gpus=num_gpus, max_retries=max_retries,
                                             name="initsweep-train")
    threads = max(1, int(num_cpus))
    room = cluster.capacity(num_cpus, num_gpus)
    pending = list(tasks)
    inflight: dict = {}  # ObjectRef -> (task, row_ids)
    try:
        while pending or inflight:
            if pending and not may_start():
                pending.clear()  # budget spent: let the tasks in flight finish, submit nothing new
            while pending and len(inflight) < room:
                task = pending.pop(0)
                rows = yield from claim_runs(task.specs, store, claim_kwargs)
                specs = [s for s in task.specs if s.run_id in rows]
                if specs:
                    for spec in specs:
                        observer.run_started(spec)
                    inflight[remote.remote(specs, device, task.source, threads)] = (specs, rows)
            if not inflight:
                continue
            done, _ = ray.wait(list(inflight), num_returns=1, timeout=1.0)
            for ref in done:
                specs, rows = inflight.pop(ref)
                try:
                    results = ray.get(ref)
                except Exception as exc:  # noqa: BLE001 — the task's worker kept dying, or Ray failed it
                    error = f"Ray task failed after {max_retries} retries: {type(exc).__name__}: {exc}".splitlines()[0]
                    results = [RunResult(s.run_id, "failed", error=error, environment=environment()) for s in specs]
                for spec, result in zip(specs, results):
                    store.finish(rows.pop(spec.run_id), result)
                    yield spec, result
    except BaseException as exc:
        for ref, (specs, rows) in inflight.items():
            ray.cancel(ref, force=True)
            for row_id in rows.values():
                store.mark_interrupted(row_id, interrupt_reason(exc))
        raise
    finally:
        deadline = time.monotonic() + 10
        while inflight and time.monotonic() < deadline:  # let cancelled tasks go before shutdown
            _, still = ray.wait(list(inflight), num_returns=len(inflight), timeout=0.5)
            inflight = {ref: inflight[ref] for ref in still}
        cluster.close()
