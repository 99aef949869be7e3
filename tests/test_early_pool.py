"""The worker pool ``initsweep run`` starts before it imports torch (issue 18), through the
real CLI in real processes: a sweep too small for workers trains in this process and stops
them before its first run; ``--workers 2`` trains in the workers it started early; Ctrl-C
during start-up leaves no process, no traceback and no half-written row.

Every wait polls the process table or the store with a generous timeout, never a fixed sleep.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from initsweep.sweep.executors import Execution
from initsweep.sweep.executors.pool import EARLY_WORKERS_MAX, WorkerPool
from test_executors import _marked, _wait, _worker_pids, write_config
from test_signals import _alive

CORES = len(os.sched_getaffinity(0))


def _start(config: Path, results: Path, mark: str, *args: str) -> subprocess.Popen:
    """``initsweep run`` in a session of its own (so that a test can signal its whole process
    group, as a terminal's Ctrl-C does), SIGINT at its default, marked for ``_marked``."""
    def child() -> None:
        signal.signal(signal.SIGINT, signal.SIG_DFL)  # a backgrounded test runner hands down an ignored one

    return subprocess.Popen([sys.executable, "-m", "initsweep", "run", str(config), "--results", str(results),
                             "--device", "cpu", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "NO_COLOR": "1", "INITSWEEP_TEST_MARK": mark},
                            start_new_session=True, preexec_fn=child)


def _rows(results: Path) -> list[tuple[str, str]]:
    """``(status, worker)`` of every row; [] before the store exists (read-only: never creates it)."""
    try:
        with sqlite3.connect(f"file:{results / 'initsweep.db'}?mode=ro", uri=True) as conn:
            return conn.execute("SELECT status, worker FROM runs ORDER BY row_id").fetchall()
    except sqlite3.OperationalError:
        return []


def _workers_2(tmp_path: Path, n_depths: int, train_limit: int) -> tuple[subprocess.Popen, Path, str, set[int]]:
    """``run --workers 2`` started and polled until its two workers are up: the process, its
    results folder, its mark and the workers' pids."""
    config, results, mark = write_config(tmp_path / "c.yaml", n_depths, train_limit), tmp_path / "res", uuid.uuid4().hex
    proc = _start(config, results, mark, "--workers", "2")
    _poll(lambda: proc.poll() is not None or len(_worker_pids(proc.pid)) == 2)
    return proc, results, mark, set(_worker_pids(proc.pid))


def _poll(condition, timeout: float = 120.0) -> None:
    """``_wait`` with a short step: start-up windows last about a second."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.02)


@pytest.mark.skipif(CORES < 2, reason="one core: no worker is started early")
def test_a_sweep_too_small_for_workers_stops_the_early_ones_before_its_first_run(tmp_path):
    config, results, mark = write_config(tmp_path / "c.yaml", n_depths=2, train_limit=1024), tmp_path / "res", uuid.uuid4().hex
    proc = _start(config, results, mark)  # the default: one worker per core, fitted to the sweep
    seen: set[int] = set()
    _poll(lambda: seen.update(_worker_pids(proc.pid)) or proc.poll() is not None or bool(_rows(results)))
    assert len(seen) == min(CORES, EARLY_WORKERS_MAX)  # started before the parent imported torch and planned
    if proc.poll() is None:  # a run claimed: the early workers are gone already, none left to idle
        assert _worker_pids(proc.pid) == []
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    rows = _rows(results)
    assert rows == [("ok", str(proc.pid))] * 2  # both trained in the parent
    assert not any(_alive(pid) for pid in seen)
    _wait(lambda: not _marked(mark), timeout=15)


@pytest.mark.skipif(CORES < 2, reason="needs 2 cores for 2 workers")
def test_workers_2_trains_in_the_workers_started_before_the_plan(tmp_path):
    proc, results, mark, early = _workers_2(tmp_path, n_depths=2, train_limit=256)
    # running before the store exists: the parent had not planned yet (it creates the store
    # before it starts an executor's own workers)
    assert len(early) == 2 and not (results / "initsweep.db").exists()
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    rows = _rows(results)
    assert [status for status, _ in rows] == ["ok", "ok"]
    assert {int(worker) for _, worker in rows} == early  # one run each, in those very processes
    _wait(lambda: not _marked(mark), timeout=15)


@pytest.mark.skipif(CORES < 2, reason="one core: no worker is started early")
def test_ctrl_c_during_start_up_leaves_no_process_no_traceback_and_no_half_written_row(tmp_path):
    proc, results, mark, early = _workers_2(tmp_path, n_depths=6, train_limit=2048)
    assert len(early) == 2
    os.killpg(proc.pid, signal.SIGINT)  # the whole group, as Ctrl-C in a terminal: parent and workers
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith("interrupted")
    _wait(lambda: not _marked(mark), timeout=15)
    assert all(status in ("ok", "interrupted") for status, _ in _rows(results))  # never left "running"


@pytest.mark.skipif(CORES < 2, reason="one core: no worker is started early")
def test_workers_started_early_exit_when_the_parent_is_killed_during_start_up(tmp_path):
    proc, results, mark, early = _workers_2(tmp_path, n_depths=6, train_limit=2048)
    assert len(early) == 2
    proc.kill()  # kill -9: no handler runs, nobody closes the pool
    proc.wait()
    _wait(lambda: not _marked(mark), timeout=60)  # each worker sees its parent gone, whatever it was doing


def test_adopt_keeps_what_the_sweep_trains_with_starts_the_missing_and_stops_the_rest():
    """``WorkerPool.adopt``: fewer tasks than workers stops the extra ones; more workers wanted
    than were started early (a machine with more cores than ``EARLY_WORKERS_MAX``) starts the
    missing ones; another setting, or one worker, stops them all."""
    import torch

    def execution(workers: int, threads: int = 1) -> Execution:
        return Execution([torch.device("cpu")], workers, threads, vmap=False)

    pool = WorkerPool(3, ["cpu"], 1)
    first = pool.pids
    assert pool.adopt(execution(3), tasks=2) is pool and pool.pids == first[:2]
    assert not any(_alive(pid) for pid in first[2:])
    assert pool.adopt(execution(4), tasks=9) is pool and len(pool.pids) == 4 and pool.pids[:2] == first[:2]
    everyone = pool.pids
    assert pool.adopt(execution(4, threads=2), tasks=9) is None and pool.workers == {}
    assert not any(_alive(pid) for pid in everyone)
    single = WorkerPool(2, ["cpu"], 1)
    pids = single.pids
    assert single.adopt(execution(2), tasks=1) is None and not any(_alive(pid) for pid in pids)
    single.close()  # closing a closed pool does nothing

