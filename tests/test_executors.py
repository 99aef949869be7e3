"""The worker pool: same rows as in-process runs, crashed workers replaced, clean shutdown."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import yaml

from initsweep.results.read import load_results
from initsweep.sweep.run import Observer, plan_execution, run_sweep
from tolerances import assert_same_rows



def write_config(path: Path, n_depths: int = 6, train_limit: int = 512) -> Path:
    path.write_text(yaml.safe_dump({
        "name": "pool", "data": {"dataset": "mnist-sample", "train_limit": train_limit, "test_limit": 256},
        "model": {"arch": "plain", "width": 8, "head": "flatten"},
        "train": {"epochs": 1, "batch_size": 64}, "grid": {"depth": list(range(1, n_depths + 1))},
        "diagnostics": {"enabled": False}}))  # these tests are about processes, not the probe
    return path


def _worker_pids(parent: int) -> list[int]:
    """Live spawned workers of ``parent`` (multiprocessing's resource tracker excluded)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == parent and b"spawn_main" in cmdline and b"resource_tracker" not in cmdline:
            pids.append(int(entry.name))
    return pids


def test_parallel_workers_give_the_same_rows_as_one_process(tmp_path):
    """Same spec, same threads per run -> the same numbers, whichever process trains it
    (to float tolerance: another process may pick other kernels; tests/tolerances.py)."""
    config = write_config(tmp_path / "c.yaml")
    pooled = run_sweep(config, results_dir=tmp_path / "pool", device="cpu", workers=2, threads=1)
    assert pooled.execution.workers == 2
    assert len({r.environment["worker"] for _, r in pooled.results}) == 2  # both workers trained runs
    run_sweep(config, results_dir=tmp_path / "seq", device="cpu", workers=1, threads=1)
    a, b = load_results(tmp_path / "pool"), load_results(tmp_path / "seq")
    assert len(a) == len(b) == 6
    assert_same_rows(a, b)
    assert (a.worker != str(os.getpid())).all() and (b.worker == str(os.getpid())).all()


class KillOneWorker(Observer):
    """Kill a worker with SIGKILL the first time a run reports progress."""

    def __init__(self):
        self.killed = None

    def run_progress(self, spec, epoch, step, steps):
        if self.killed is None:
            pids = _worker_pids(os.getpid())
            if pids:
                self.killed = pids[0]
                os.kill(self.killed, signal.SIGKILL)


def test_a_killed_worker_is_replaced_and_its_run_retried(tmp_path):
    config = write_config(tmp_path / "c.yaml", train_limit=2048)
    observer = KillOneWorker()
    outcome = run_sweep(config, results_dir=tmp_path / "res", device="cpu", workers=2, threads=1, observer=observer)
    assert observer.killed is not None
    history = load_results(tmp_path / "res", history=True)
    # the killed attempt stays as an interrupted row naming the worker's pid; the retry is a new row
    assert history.status.value_counts().to_dict() == {"ok": 6, "interrupted": 1}
    dead = history[history.status == "interrupted"].iloc[0]
    assert f"(pid {observer.killed}) died (signal 9); retried as a new attempt" in dead.error
    assert history[history.run_id == dead.run_id].status.tolist() == ["interrupted", "ok"]
    assert (load_results(tmp_path / "res").status == "ok").all() and outcome.counts == {"ok": 6}
    assert str(observer.killed) not in set(history.worker)  # the killed worker never reported a result


def test_a_run_whose_worker_keeps_dying_is_recorded_failed(tmp_path):
    config = write_config(tmp_path / "c.yaml", train_limit=2048)
    outcome = run_sweep(config, results_dir=tmp_path / "res", device="cpu", workers=2, threads=1,
                        observer=KillOneWorker(), max_retries=0)
    df = load_results(tmp_path / "res")
    failed = df[df.status == "failed"]
    assert len(failed) == 1 and "worker process died (signal 9) in 1 attempt(s)" in failed.error.iloc[0]
    assert outcome.counts == {"ok": 5, "failed": 1} and len(df) == 6


def _cli(config: Path, results: Path, mark: str) -> subprocess.Popen:
    env = {**os.environ, "NO_COLOR": "1", "INITSWEEP_TEST_MARK": mark}
    return subprocess.Popen([sys.executable, "-m", "initsweep", "run", str(config), "--results", str(results),
                             "--device", "cpu", "--workers", "2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)


def _marked(mark: str) -> list[int]:
    """Processes started with our marker in their environment (the CLI and its workers)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if f"INITSWEEP_TEST_MARK={mark}".encode() in (entry / "environ").read_bytes():
                    pids.append(int(entry.name))
            except OSError:
                pass
    return pids


def _wait(condition, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError("timed out")


def test_sigterm_stops_the_pool_marks_runs_interrupted_and_leaves_no_process(tmp_path):
    config, results, mark = write_config(tmp_path / "c.yaml", n_depths=8, train_limit=2048), tmp_path / "res", uuid.uuid4().hex
    proc = _cli(config, results, mark)
    _wait(lambda: (results / "initsweep.db").exists() and len(_worker_pids(proc.pid)) == 2 and
          len(load_results(results, history=True)) >= 3)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    df = load_results(results, history=True)
    assert "running" not in set(df.status) and (df.status == "interrupted").sum() >= 1
    _wait(lambda: not _marked(mark), timeout=15)


def test_workers_exit_when_the_parent_is_killed(tmp_path):
    config, results, mark = write_config(tmp_path / "c.yaml", n_depths=8, train_limit=2048), tmp_path / "res", uuid.uuid4().hex
    proc = _cli(config, results, mark)
    _wait(lambda: len(_worker_pids(proc.pid)) == 2 and (results / "initsweep.db").exists())
    proc.kill()
    proc.wait()
    _wait(lambda: not _marked(mark), timeout=15)


def test_default_execution_is_one_single_threaded_worker_per_core():
    execution = plan_execution("cpu")
    assert execution.workers == len(os.sched_getaffinity(0)) and execution.threads == 1 and not execution.vmap
    assert plan_execution("cpu", workers=1).threads == len(os.sched_getaffinity(0))
    assert plan_execution("cpu", vmap="on").vmap


class StartOrder(Observer):
    def __init__(self):
        self.depths: list[int] = []

    def run_started(self, spec) -> None:
        self.depths.append(spec.model.depth)


def test_runs_are_handed_out_longest_first(tmp_path):
    """The deepest (costliest) runs start first, so that workers run out of work together."""
    config = write_config(tmp_path / "c.yaml", n_depths=4, train_limit=64)
    order = StartOrder()
    run_sweep(config, results_dir=tmp_path / "r", device="cpu", workers=1, threads=1, observer=order)
    assert order.depths == [4, 3, 2, 1]  # the plan lists them 1, 2, 3, 4


def test_a_points_seeds_go_to_one_worker_in_a_row():
    """The pool's dispatch (``pool._next_for``): a worker takes the next seed of the point it
    trained last, another worker the next point, so that each predicts a point's probe once;
    never past the first few tasks, and the head when nothing else fits."""
    from collections import deque

    from initsweep.config import expand, validate
    from initsweep.sweep.executors import Task
    from initsweep.sweep.executors.pool import _AFFINITY_WINDOW, _next_for

    inits = ["he", "orthogonal", "lecun_normal"]
    specs = expand(validate({"name": "d", "data": {"dataset": "mnist-sample"}, "model": {"arch": "mlp"},
                             "train": {"seeds": [0, 1]}, "grid": {"init": inits}})).runs
    point = {s.seedless_id: s.model.init.name for s in specs}
    pending, inflight, last = deque(Task(i, [s], None) for i, s in enumerate(specs)), {}, {}

    def take(worker: int) -> tuple[str, int]:
        task = _next_for(worker, pending, inflight, last)
        last[worker], inflight[worker] = task.seedless_id, task
        return point[task.seedless_id], task.specs[0].seed

    assert take(0) == ("he", 0)
    assert take(1) == ("orthogonal", 0)  # not he's seed 1: worker 0 is training he
    del inflight[0]
    assert take(0) == ("he", 1)
    del inflight[1]
    assert take(1) == ("orthogonal", 1)
    del inflight[0]
    assert take(0) == ("lecun_normal", 0)
    del inflight[1]
    assert take(1) == ("lecun_normal", 1)  # nothing else left: the head, though worker 0 has lecun_normal
    assert not pending

    # a sibling further down than the window is not fetched: the longest-first order holds
    many = expand(validate({"name": "d", "data": {"dataset": "mnist-sample"}, "model": {"arch": "mlp"},
                            "train": {"seeds": [0, 1]},
                            "grid": {"init": ["he"], "lr": [10.0 ** -k for k in range(1, _AFFINITY_WINDOW + 3)]}})).runs
    pending = deque(Task(i, [s], None) for i, s in enumerate(many))
    first = pending[0]
    last = {0: many[-1].seedless_id}  # worker 0 trained the last point's seed 0 before
    assert _next_for(0, pending, {}, last) is first
