"""Signals and processes, through the real CLI in real processes: SIGINT/SIGTERM exit codes,
workers of a ``kill -9``-ed parent, a killed worker's trace, and a closed stdout.

Every test waits on the store (or the process table), never on a fixed sleep, and every
wait has a generous timeout so that a regression fails instead of hanging.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import re
import shlex
import signal
import sqlite3
import subprocess
import sys
import xml.etree.ElementTree as ET
from datetime import datetime, timezone
from pathlib import Path

import pytest
import yaml

from initsweep.config import expand, load_config
from initsweep.data import resolve_source
from initsweep.results.read import load_results
from test_executors import _wait, _worker_pids


def _config(path: Path, depths: list[int], train_limit: int = 2048, epochs: int = 1) -> Path:
    path.write_text(yaml.safe_dump({
        "name": "sig", "data": {"dataset": "mnist-sample", "train_limit": train_limit, "test_limit": 256},
        "model": {"arch": "plain", "width": 8, "head": "flatten"},
        "train": {"epochs": epochs, "batch_size": 64}, "grid": {"depth": depths},
        "diagnostics": {"enabled": False}}))
    return path


def _start(tmp_path: Path, config: Path, *args: str) -> subprocess.Popen:
    """``initsweep run`` in its own process, stdout and stderr to files (they outlive it).

    SIGINT is reset to its default in the child: a test runner started in the background
    hands its children an ignored SIGINT, and Python keeps an ignored SIGINT ignored.
    """
    return subprocess.Popen(
        [sys.executable, "-m", "initsweep", "run", str(config), "--results", str(tmp_path / "res"),
         "--device", "cpu", *args],
        stdout=(tmp_path / "out").open("w"), stderr=(tmp_path / "err").open("w"),
        env={**os.environ, "NO_COLOR": "1"}, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _statuses(results: Path) -> list[tuple[str, str, str | None, str | None]]:
    """``(run_id, status, error, worker)`` of every row, oldest first; [] before the store exists."""
    try:  # read-only: never create the file before the sweep does
        with sqlite3.connect(f"file:{results / 'initsweep.db'}?mode=ro", uri=True) as conn:
            return conn.execute("SELECT run_id, status, error, worker FROM runs ORDER BY row_id").fetchall()
    except sqlite3.OperationalError:
        return []


def _count(rows, status: str) -> int:
    return sum(r[1] == status for r in rows)


@pytest.mark.parametrize("signum, code, reason, said", [
    (signal.SIGINT, 130, "interrupted (Ctrl-C)", "interrupted: finished runs are stored"),
    (signal.SIGTERM, 143, "interrupted (SIGTERM)", "terminated (SIGTERM): finished runs are stored"),
])
def test_ctrl_c_exits_130_and_sigterm_143_both_marking_the_run_in_flight(tmp_path, signum, code, reason, said):
    config = _config(tmp_path / "c.yaml", depths=[1, 2, 3, 4])
    proc = _start(tmp_path, config, "--workers", "1")
    _wait(lambda: proc.poll() is not None or (_count(rows := _statuses(tmp_path / "res"), "ok") >= 1
                                               and _count(rows, "running") == 1))
    finished = _count(_statuses(tmp_path / "res"), "ok")
    proc.send_signal(signum)
    assert proc.wait(timeout=120) == code, (tmp_path / "err").read_text()
    rows = _statuses(tmp_path / "res")
    assert _count(rows, "running") == 0 and _count(rows, "ok") >= finished  # everything finished is kept
    # the run in flight, marked; none when the signal fell between one run's finish and the
    # next claim (a few milliseconds: the test cannot send it atomically with its check)
    interrupted = [r[2] for r in rows if r[1] == "interrupted"]
    assert interrupted in ([reason], [])
    assert len(rows) == _count(rows, "ok") + len(interrupted) < 5
    assert (tmp_path / "err").read_text().splitlines()[-1].startswith(said)


def test_a_stopped_sweep_leaves_no_running_row_of_its_own(tmp_path):
    """A Ctrl-C lands between any two bytecodes: after a claim's commit and before the ledger
    learnt its row, or in a finish whose transaction it aborts. ``interrupt_open`` still marks
    every row this process holds ``running`` in its sweeps, and no other process's claim."""
    from initsweep.results.store import Store
    from initsweep.sweep.ledger import Claim, Ledger
    from initsweep.sweep.observer import Observer

    known, unknown, foreign = expand(load_config(_config(tmp_path / "c.yaml", depths=[1, 2, 3]))).runs
    with Store(tmp_path / "res") as store:
        ledger = Ledger(store, Claim(), Observer())
        assert ledger.claim([known]) == [known]
        store.claim(unknown)  # committed; the signal came before the ledger heard of it
        other = store.claim(foreign)
    with sqlite3.connect(tmp_path / "res" / "initsweep.db") as conn:  # a live claim of another machine
        conn.execute("UPDATE runs SET owner = 'elsewhere:1:1', claimed_at = ? WHERE row_id = ?",
                     (datetime.now(timezone.utc).isoformat(), other))
    conn.close()
    with Store(tmp_path / "res") as store:
        ledger.store = store
        ledger.interrupt_open("interrupted (Ctrl-C)")
    assert [(r[1], r[2]) for r in _statuses(tmp_path / "res")] == [
        ("interrupted", "interrupted (Ctrl-C)"), ("interrupted", "interrupted (Ctrl-C)"), ("running", None)]


def _alive(pid: int) -> bool:
    """Still running (a zombie waiting for a reaper has exited)."""
    try:
        return (Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]) != "Z"
    except OSError:
        return False


def test_workers_exit_at_once_and_quietly_when_the_parent_is_killed(tmp_path):
    config = _config(tmp_path / "c.yaml", depths=[1, 2, 3, 4, 5, 6, 7, 8])
    proc = _start(tmp_path, config, "--workers", "2")
    # both workers warm and training: a run finished, two more handed out
    _wait(lambda: proc.poll() is not None or (len(_worker_pids(proc.pid)) == 2 and
                                              _count(rows := _statuses(tmp_path / "res"), "ok") >= 1
                                              and _count(rows, "running") == 2))
    workers = _worker_pids(proc.pid)
    assert len(workers) == 2 and proc.poll() is None
    proc.kill()
    proc.wait()
    _wait(lambda: not any(_alive(pid) for pid in workers), timeout=60)
    # their stderr is the parent's: no BrokenPipeError traceback, nothing at all
    assert (tmp_path / "err").read_text() == ""


def test_a_worker_whose_parent_closed_its_pipe_exits_quietly(tmp_path, capfd):
    """The portable path (no prctl, parent still there): a broken pipe on send means nobody
    will store the result, so the worker exits at once, code 0, without a traceback."""
    from initsweep.sweep.executors.pool import _worker_main

    cfg = load_config(_config(tmp_path / "c.yaml", depths=[1]))
    source = resolve_source(cfg.data)
    spec = expand(cfg, dataset=source.dataset).runs[0]
    ctx = mp.get_context("spawn")
    task_recv, task_send = ctx.Pipe(duplex=False)
    event_recv, event_send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_worker_main, args=(0, "cpu", 1, False, task_recv, event_send, os.getpid()),
                       daemon=True)
    proc.start()
    task_recv.close()
    event_send.close()
    event_recv.close()  # as if the parent were gone: the worker's first event cannot be sent
    task_send.send((0, [spec], source))
    proc.join(timeout=120)
    if proc.exitcode is None:
        proc.kill()
    assert proc.exitcode == 0
    assert "Traceback" not in capfd.readouterr().err


def test_a_killed_worker_is_reported_kept_as_history_and_retried(tmp_path):
    # depth 8 trains several times longer than depth 1: when one run is done, the other is
    # mid-run on the other worker (whichever finishes first: that depends on the load)
    config, results = _config(tmp_path / "c.yaml", depths=[1, 8], epochs=4), tmp_path / "res"
    specs = {s.run_id: s for s in expand(load_config(config)).runs}
    proc = _start(tmp_path, config, "--workers", "2")
    rows: list[tuple] = []

    def one_done_one_running() -> bool:
        rows[:] = _statuses(results)  # kept: a second look might find both done
        return proc.poll() is not None or sorted(r[1] for r in rows) == ["ok", "running"]

    _wait(one_done_one_running)
    done_by = next(r[3] for r in rows if r[1] == "ok")
    killed_run = next(r[0] for r in rows if r[1] == "running")
    victim = next(pid for pid in _worker_pids(proc.pid) if str(pid) != done_by)  # the one training killed_run
    os.kill(victim, signal.SIGKILL)
    assert proc.wait(timeout=180) == 0, (tmp_path / "err").read_text()
    said = re.fullmatch(rf"worker (\d) \(pid {victim}\) died \(signal 9\) during run {killed_run} "
                        rf"\(depth={specs[killed_run].model.depth} seed=0\); retrying \(1 of 2\)",
                        (tmp_path / "err").read_text().strip())
    assert said, (tmp_path / "err").read_text()
    history = load_results(results, history=True)
    killed = history[history.run_id == killed_run]
    assert killed.status.tolist() == ["interrupted", "ok"]  # the dead attempt, then the retry as a new row
    assert killed.error.iloc[0] == f"worker {said[1]} (pid {victim}) died (signal 9); retried as a new attempt"
    assert killed.worker.iloc[1] != str(victim)
    assert len(history) == 3 and load_results(results).status.tolist() == ["ok", "ok"]


def test_a_closed_stdout_neither_stops_the_sweep_nor_skips_its_ci_files(tmp_path):
    """``| head -1``: the reader leaves after one line; the sweep goes on, stores every run,
    writes --junit and --summary-md, and exits with its own code (0), not 1."""
    config = _config(tmp_path / "c.yaml", depths=[1, 2, 3], train_limit=256)
    ids = {s.run_id for s in expand(load_config(config)).runs}
    junit, summary = tmp_path / "ci" / "junit.xml", tmp_path / "ci" / "summary.md"
    run = [sys.executable, "-m", "initsweep", "run", config, "--results", tmp_path / "res", "--device", "cpu",
           "--junit", junit, "--summary-md", summary]
    command = shlex.join(map(str, run)) + " | head -1"
    shell = subprocess.run(["bash", "-o", "pipefail", "-c", command], capture_output=True, text=True, timeout=300,
                           env={**os.environ, "NO_COLOR": "1"})
    assert shell.returncode == 0, shell.stderr  # with pipefail: run's own exit code
    assert shell.stdout == "sig: 3 runs planned, 0 already finished, 3 to run\n"
    assert shell.stderr == ""  # no BrokenPipeError, no "Exception ignored"
    df = load_results(tmp_path / "res", history=True)
    assert set(df.run_id) == ids and (df.status == "ok").all() and len(df) == 3
    suite = ET.parse(junit).getroot().find("testsuite")
    assert suite.get("tests") == "3" and suite.get("failures") == "0"
    assert {case.get("name").rsplit("[", 1)[1].rstrip("]") for case in suite.iter("testcase")} == ids
    text = summary.read_text()
    assert text.startswith("## initsweep: sig\n\n3 ok\n")
    assert all(f"\n| {depth} | (single setting) | " in text for depth in (1, 2, 3))  # the whole best-per-depth table
