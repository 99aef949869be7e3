"""A pool of warm worker processes: each imports torch and loads the data once, then trains
task after task. The parent owns the store: it claims a task's runs (through the sweep's
ledger) when it hands the task out and records each result the moment it comes back.

Why processes, not threads: two single-threaded processes train the tutorial CNN faster
together than one process with two threads (the kernels of these small convs do not
scale across cores), and a process that crashes takes only its own run with it.

Workers are started with ``spawn`` (forking a parent that already ran OpenMP kernels can
deadlock). They ignore SIGINT: Ctrl-C reaches the parent, which marks the runs in flight
``interrupted`` and stops the pool. A worker whose parent disappears (``kill -9``) exits
at once and quietly, even mid-run: nobody is left to store what it trains. A worker that
dies mid-task is replaced; each of the task's unfinished runs keeps the dead attempt's row
(``interrupted``, with the worker and its exit signal) and is retried as a new attempt, up
to ``max_retries`` times, then recorded ``failed`` — never lost, never silent.

Start-up in parallel: ``initsweep run`` starts the pool (``start_early``) before it imports
torch itself, so the workers import torch and warm up (the first ``torch.optim`` optimizer
imports ``torch._dynamo``: 0.8 s here) while the parent imports torch, reads the config,
plans and opens the store; the sweep then takes the workers it needs (``adopt``) and stops
the rest at once. This module imports no torch for that reason (``tests/test_startup.py``).
Only for the local executor on the CPU: a CUDA device, ``devices`` or Ray need torch to
know where the workers go, and start their workers after planning as before.
"""

from __future__ import annotations

import ctypes
import glob
import itertools
import multiprocessing as mp
import os
import signal
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from multiprocessing import resource_tracker
from multiprocessing.connection import Connection, wait
from typing import TYPE_CHECKING, Callable

from . import Execution, Task, default_threads, usable_cores

if TYPE_CHECKING:
    from ...config import RunSpec
    from ..ledger import Ledger

_PROGRESS_EVERY_S = 0.2
# The most workers started before the plan: each imports torch (0.5 GB resident), and a tiny
# sweep on a many-core machine needs none of them; the sweep starts the rest (``adopt``).
EARLY_WORKERS_MAX = 8
_PARENT_CHECK_S = 0.5
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def _exit_with_parent(parent_pid: int) -> None:
    """End this worker as soon as its parent is gone (``kill -9``, the OOM killer).

    Nobody is left to store what it trains, so it must not finish its run, keep a core
    busy, or print a ``BrokenPipeError`` traceback into the terminal. On Linux the kernel
    does it (``PR_SET_PDEATHSIG``: SIGKILL when the parent exits); on every system a
    thread watches ``os.getppid()``, which also catches a parent that died before
    ``prctl`` took effect.
    """
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):  # a libc without prctl: the watcher still works
            pass

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(_PARENT_CHECK_S)
        os._exit(0)

    threading.Thread(target=watch, name="initsweep-parent-watch", daemon=True).start()


def _send(events: Connection, message: tuple) -> None:
    """Send an event to the parent; a broken pipe means the parent is gone: exit quietly."""
    try:
        events.send(message)
    except (BrokenPipeError, ConnectionResetError):
        os._exit(0)


def _warm_up() -> None:
    """Pay before the first task what every first run would pay inside its set-up: the
    first ``torch.optim`` optimizer imports ``torch._dynamo`` (0.8 s here, ``python -X
    importtime``). Touches no random number generator and nothing a run reads."""
    import torch

    torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))])


def _worker_main(worker_id: int, device: str, threads: int, compile: bool, tasks: Connection,
                 events: Connection, parent_pid: int) -> None:
    """Worker loop: take a task, train it, send back every result; exit with the parent."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if hasattr(signal, "pthread_sigmask"):  # blocked since birth (WorkerPool._start); a pending one is dropped
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    _exit_with_parent(parent_pid)
    import torch

    torch.set_num_threads(threads)
    from ...batched import run_group
    from ...train import run_safely

    _warm_up()

    while True:
        try:
            task = tasks.recv()
        except EOFError:  # the parent closed this worker's pipe, or is gone
            task = None
        if task is None:
            # Every result already went over the pipe and the worker writes no file: skip the
            # interpreter's teardown of torch, which the parent would otherwise wait for.
            events.close()
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(0)
        task_id, specs, source = task
        last: dict[str, float] = {}

        def progress(spec: RunSpec, epoch: int, step: int, steps: int) -> None:
            now = time.monotonic()
            if now - last.get(spec.run_id, 0.0) >= _PROGRESS_EVERY_S or step == steps:
                last[spec.run_id] = now
                _send(events, ("progress", spec.run_id, epoch, step, steps))

        if len(specs) == 1:
            spec = specs[0]
            _send(events, ("started", spec.run_id))
            result = run_safely(spec, device, source=source, compile=compile,
                                progress=lambda e, s, n: progress(spec, e, s, n))
            _send(events, ("result", spec.run_id, result))
        else:
            for spec in specs:
                _send(events, ("started", spec.run_id))
            for spec, result in zip(specs, run_group(specs, device, source=source, progress=progress)):
                _send(events, ("result", spec.run_id, result))
        _send(events, ("idle", task_id))


# How far down the queue ``_next_for`` looks past its head: a few tasks, so that the longest-
# first order holds to within a few places.
_AFFINITY_WINDOW = 8


def _next_for(worker_id: int, pending: deque[Task], inflight: dict[int, Task], last: dict[int, str]) -> Task:
    """Take the task ``worker_id`` trains next from ``pending``: among the first few, one that
    differs only by seed from its last task, else one whose seed siblings no other worker is
    training now, else the head. The seeds of a point then go to one worker in a row, which
    predicts their probe once (``probe._shared_prediction``: 60-110 ms of the tutorial CNN's
    set-up). They are adjacent in the queue: a plan lists a point's seeds one after the other
    (``train.seeds`` is expanded innermost), and ``run_sweep``'s longest-first sort is stable."""
    window = list(itertools.islice(pending, _AFFINITY_WINDOW))
    elsewhere = {task.seedless_id for other, task in inflight.items() if other != worker_id}
    chosen = (next((t for t in window if t.seedless_id == last.get(worker_id)), None)
              or next((t for t in window if t.seedless_id not in elsewhere), None)
              or window[0])
    pending.remove(chosen)
    return chosen


@dataclass
class _Worker:
    proc: mp.Process
    tasks: Connection  # parent -> worker
    events: Connection  # worker -> parent


def _end(worker: _Worker, timeout: float = 0.0) -> None:
    """Wait up to ``timeout`` seconds for a worker to exit, kill it if it has not, drop its pipes."""
    worker.proc.join(timeout)
    if worker.proc.is_alive():
        worker.proc.kill()
        worker.proc.join()
    worker.tasks.close()
    worker.events.close()


class WorkerPool:
    """``workers`` processes, worker ``i`` on ``devices[i % len(devices)]`` with ``threads`` threads.

    Each worker has its own pipes: a worker killed in the middle of sending can only
    garble its own pipe, which is then dropped with it.
    """

    def __init__(self, workers: int, devices: list[str], threads: int, compile: bool = False):
        self.ctx = mp.get_context("spawn")
        self.devices, self.threads, self.compile = devices, threads, compile
        self.workers: dict[int, _Worker] = {}
        self.last_seedless: dict[int, str] = {}  # worker -> the seedless id of the task it took last
        for worker_id in range(workers):
            self._start(worker_id)

    def _start(self, worker_id: int) -> None:
        task_recv, task_send = self.ctx.Pipe(duplex=False)
        event_recv, event_send = self.ctx.Pipe(duplex=False)
        device = self.devices[worker_id % len(self.devices)]
        proc = self.ctx.Process(target=_worker_main, name=f"initsweep-worker-{worker_id}", daemon=True,
                                args=(worker_id, device, self.threads, self.compile, task_recv, event_send,
                                      os.getpid()))
        # born with Ctrl-C blocked (the mask survives fork and exec), so that one pressed while
        # the worker starts up, before its loop ignores it, prints no traceback from the worker;
        # in this process it stays pending a few milliseconds, never lost. multiprocessing's
        # resource tracker is started first: starting it unblocks SIGINT on its way out.
        resource_tracker.ensure_running()
        blocked = hasattr(signal, "pthread_sigmask")
        if blocked:
            mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            proc.start()
        finally:
            if blocked:
                signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        task_recv.close()  # the worker's ends: closing ours lets a dead worker's pipe reach EOF
        event_send.close()
        self.workers[worker_id] = _Worker(proc, task_send, event_recv)

    @property
    def pids(self) -> list[int]:
        return [w.proc.pid for w in self.workers.values()]

    def close(self, timeout: float = 5.0) -> None:
        """Stop every worker: each finishes what it was handed within ``timeout`` seconds or is
        killed. Closing a closed pool does nothing."""
        for worker in self.workers.values():
            try:
                worker.tasks.send(None)
            except (OSError, ValueError):
                pass
        deadline = time.monotonic() + timeout
        for worker in self.workers.values():
            _end(worker, max(0.0, deadline - time.monotonic()))
        self.workers.clear()

    def adopt(self, execution: Execution, tasks: int) -> "WorkerPool | None":
        """These workers, started early, for a sweep of ``tasks`` tasks run as ``execution``:
        as many as it trains with (no more than tasks; the missing ones started now) when they
        are what the local executor would start (the same devices, threads and compile
        setting, more than one worker); otherwise stopped at once and ``None`` (a tiny sweep
        trains in this process). They hold nothing yet, so a stopped one is killed, not
        waited for."""
        wanted = min(execution.workers, tasks)
        fits = (execution.executor == "local" and [str(d) for d in execution.devices] == self.devices
                and execution.threads == self.threads and execution.compile == self.compile and wanted > 1)
        if not fits:
            self.close(timeout=0.0)
            return None
        for worker_id in sorted(self.workers)[wanted:]:
            _end(self.workers.pop(worker_id))
        for worker_id in range(len(self.workers), wanted):
            self._start(worker_id)
        return self

    def execute(self, tasks: list[Task], *, ledger: "Ledger", observer, max_retries: int = 2,
                may_start: Callable[[], bool] = lambda: True) -> None:
        """Hand tasks to idle workers, claiming their runs then, and give each result to the
        ledger as it comes back. A stopped sweep (an exception out of here) leaves the runs in
        flight to ``run_sweep``, which marks them ``interrupted``, and the workers to
        ``close``."""
        pending: deque[Task] = deque(tasks)
        inflight: dict[int, Task] = {}
        by_run: dict[str, RunSpec] = {s.run_id: s for t in tasks for s in t.specs}
        while pending or inflight:
            if pending and not may_start():
                pending.clear()  # budget spent: let the runs in flight finish, start nothing new
            self._dispatch(pending, inflight, ledger)
            if not inflight:
                continue
            handles = {w.events: i for i, w in self.workers.items()}
            handles.update({w.proc.sentinel: i for i, w in self.workers.items()})
            for handle in wait(list(handles), timeout=1.0):
                worker_id = handles[handle]
                if handle is self.workers[worker_id].events:
                    self._read_events(worker_id, inflight, ledger, by_run, observer)
            self._replace_dead(inflight, pending, ledger, by_run, observer, max_retries)

    def _dispatch(self, pending: deque[Task], inflight: dict[int, Task], ledger: "Ledger") -> None:
        """Give each idle worker its next task (``_next_for``), claiming its runs now (not
        earlier; a retry claims its unfinished runs again: a new row per attempt)."""
        for worker_id, worker in self.workers.items():
            while worker_id not in inflight and pending:
                task = _next_for(worker_id, pending, inflight, self.last_seedless)
                self.last_seedless[worker_id] = task.seedless_id
                unclaimed = [s for s in task.specs if s.run_id not in task.done and not ledger.is_open(s.run_id)]
                claimed = {s.run_id for s in ledger.claim(unclaimed)}
                task.done.update(s.run_id for s in unclaimed if s.run_id not in claimed)
                todo = [s for s in task.specs if s.run_id not in task.done]
                if todo:
                    worker.tasks.send((task.task_id, todo, task.source))
                    inflight[worker_id] = task

    def _read_events(self, worker_id: int, inflight: dict[int, Task], ledger: "Ledger",
                     by_run: dict[str, RunSpec], observer) -> None:
        conn = self.workers[worker_id].events
        try:
            while conn.poll():
                event = conn.recv()
                kind = event[0]
                if kind == "progress":
                    _, run_id, epoch, step, steps = event
                    observer.run_progress(by_run[run_id], epoch, step, steps)
                elif kind == "started":
                    observer.run_started(by_run[event[1]])
                elif kind == "result":
                    _, run_id, result = event
                    ledger.finish(by_run[run_id], result)
                    inflight[worker_id].done.add(run_id)
                elif kind == "idle":
                    inflight.pop(worker_id, None)
        except (EOFError, OSError):
            return  # the worker died mid-message; _replace_dead deals with it

    def _replace_dead(self, inflight: dict[int, Task], pending: deque[Task], ledger: "Ledger",
                      by_run: dict[str, RunSpec], observer, max_retries: int) -> None:
        """Restart dead workers; retry their unfinished runs or record them as failed.

        Each death is reported (``observer.worker_died``) and leaves a trace in the store:
        a retried run's dead attempt stays as an ``interrupted`` row naming the worker and
        its exit, and the retry is a new row; the last attempt of a run out of retries is
        recorded ``failed``.
        """
        for worker_id, worker in list(self.workers.items()):
            if worker.proc.is_alive():
                continue
            self._read_events(worker_id, inflight, ledger, by_run, observer)  # what it sent before dying
            worker.proc.join()
            code, pid = worker.proc.exitcode, worker.proc.pid
            worker.tasks.close()
            worker.events.close()
            self._start(worker_id)
            task = inflight.pop(worker_id, None)
            if task is None:
                continue
            task.attempts += 1
            unfinished = [s for s in task.specs if s.run_id not in task.done]
            if not unfinished:
                continue
            cause = f"signal {-code}" if code < 0 else f"exit code {code}"
            retry = task.attempts <= max_retries
            for spec in unfinished:
                observer.worker_died(worker_id, pid, cause, spec, task.attempts, max_retries)
                if retry:  # this attempt's row stays as history; the retry claims a new one
                    ledger.abandon(spec, f"worker {worker_id} (pid {pid}) died ({cause}); retried as a new attempt")
            if retry:
                pending.appendleft(task)
                continue
            reason = f"worker process died ({cause}) in {task.attempts} attempt(s)"
            from ...train import RunResult, environment

            for spec in unfinished:
                ledger.finish(spec, RunResult(spec.run_id, "failed", error=reason, environment=environment()))
                task.done.add(spec.run_id)


def _accelerator_visible() -> bool:
    """Might ``device: auto`` find an accelerator? Answered without torch, erring towards yes:
    an NVIDIA or AMD (ROCm) device file on Linux, or a Mac (MPS)."""
    if sys.platform == "darwin":
        return True
    return bool(glob.glob("/dev/nvidia[0-9]*") or os.path.exists("/dev/kfd") or os.path.exists("/dev/dxg"))


def start_early(*, device: str, devices: list[str] | None, workers: int | None, threads: int | None,
                compile: bool, executor: str) -> WorkerPool | None:
    """Start the local executor's CPU workers now, before this process imports torch, when
    the options already say where they go: the local executor, ``device`` cpu (or auto on a
    machine without an accelerator), more than one worker (``workers``, or one per core;
    at most ``EARLY_WORKERS_MAX`` now).
    ``None`` otherwise, and in a process that imported torch already (a notebook, a test
    runner): there is no import left to overlap, and a tiny sweep would start them for
    nothing. The sweep takes them with :meth:`WorkerPool.adopt`; whoever started them closes
    them if the sweep stops before that."""
    if "torch" in sys.modules or executor != "local" or devices or device not in ("cpu", "auto"):
        return None
    if device == "auto" and _accelerator_visible():
        return None
    count = workers or usable_cores()
    if count < 2:
        return None
    return WorkerPool(min(count, EARLY_WORKERS_MAX), ["cpu"], threads or default_threads(count), compile)
