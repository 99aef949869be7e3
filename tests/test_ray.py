"""The Ray executor against a real Ray cluster started here on 127.0.0.1."""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from initsweep.errors import StoreError
from initsweep.results.read import load_results
from initsweep.sweep.run import run_sweep
from tolerances import assert_same_rows

RAY = Path(sys.executable).with_name("ray")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def cluster():
    """``ray start --head`` on 127.0.0.1 with 2 CPUs and token auth; every Ray process stopped afterwards.

    Ray (2.52+) authenticates clients with a token when a cluster asks for it: the test
    makes one and hands it to the cluster and to this process (the driver) alike.
    """
    port = _free_port()
    auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    saved = {k: os.environ.get(k) for k in auth}
    os.environ.update(auth)
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    subprocess.run([str(RAY), "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}", "--num-cpus=2",
                    "--include-dashboard=false", "--disable-usage-stats"], check=True, capture_output=True, env=env)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        subprocess.run([str(RAY), "stop", "--force"], capture_output=True, env=env)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def write_config(path: Path, depths: int = 4, train_limit: int = 512) -> Path:
    path.write_text(yaml.safe_dump({
        "name": "ray", "data": {"dataset": "mnist-sample", "train_limit": train_limit, "test_limit": 256},
        "model": {"arch": "plain", "width": 8, "head": "flatten"},
        "train": {"epochs": 1, "batch_size": 64}, "grid": {"depth": list(range(1, depths + 1))},
        "diagnostics": {"enabled": False}}))
    return path


def test_ray_rows_equal_the_local_executor(tmp_path, cluster):
    config = write_config(tmp_path / "c.yaml")
    remote = run_sweep(config, results_dir=tmp_path / "ray", executor="ray", ray_address=cluster, num_cpus=1)
    assert remote.counts == {"ok": 4} and remote.execution.executor == "ray"
    run_sweep(config, results_dir=tmp_path / "local", device="cpu", workers=1, threads=1)
    a, b = load_results(tmp_path / "ray"), load_results(tmp_path / "local")
    assert_same_rows(a, b)  # another process, so to float tolerance (tests/tolerances.py)
    assert (a.worker != str(os.getpid())).all()  # trained in Ray's worker processes
    # resume works the same: nothing left to run
    again = run_sweep(config, results_dir=tmp_path / "ray", executor="ray", ray_address=cluster)
    assert again.results == [] and again.n_done_before == 4


def test_ray_runs_are_logged_to_tensorboard_by_the_driver(tmp_path, cluster):
    """The process that owns the store writes each run's event folder: one per run, once."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    config = write_config(tmp_path / "c.yaml", depths=2)
    outcome = run_sweep(config, results_dir=tmp_path / "res", executor="ray", ray_address=cluster, num_cpus=1,
                        log_to=["tensorboard"])
    assert outcome.counts == {"ok": 2}
    runs = load_results(tmp_path / "res")
    assert (runs.worker != str(os.getpid())).all()  # trained in Ray's workers
    folders = {d.name: list(d.iterdir()) for d in (tmp_path / "res" / "tensorboard" / "ray").iterdir()}
    assert set(folders) == set(runs.run_id) and all(len(files) == 1 for files in folders.values())
    for run in runs.itertuples():
        acc = EventAccumulator(str(tmp_path / "res" / "tensorboard" / "ray" / run.run_id))
        acc.Reload()
        assert [e.value for e in acc.Scalars("test/acc")] == [pytest.approx(run.test_acc, rel=1e-6)]


def _ray_task_pids() -> list[int]:
    """Ray workers busy with our task (Ray titles them ``ray::initsweep-train``)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if b"initsweep-train" in (entry / "cmdline").read_bytes():
                    pids.append(int(entry.name))
            except OSError:
                pass
    return pids


def test_a_killed_ray_worker_is_retried_and_the_run_stored_once(tmp_path, cluster):
    config = write_config(tmp_path / "c.yaml", depths=4, train_limit=3000)
    killed: list[int] = []

    def killer():
        deadline = time.monotonic() + 120
        while not killed and time.monotonic() < deadline:
            pids = _ray_task_pids()
            if pids:
                time.sleep(0.5)  # mid-run, not at start-up
                os.kill(pids[0], signal.SIGKILL)
                killed.append(pids[0])
            time.sleep(0.05)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    outcome = run_sweep(config, results_dir=tmp_path / "res", executor="ray", ray_address=cluster, max_retries=2)
    thread.join(timeout=1)
    assert killed, "no Ray worker was seen running a task"
    history = load_results(tmp_path / "res", history=True)
    assert len(history) == 4 and (history.status == "ok").all()  # retried, stored once
    assert outcome.counts == {"ok": 4}
    assert str(killed[0]) not in set(history.worker)


def _stored(results: Path) -> list[str]:
    """The status of every row, oldest first ([] when nothing was ever claimed)."""
    try:
        return load_results(results, history=True).status.tolist()
    except StoreError:  # no database yet, or one whose tables are still being created
        return []


def test_sigterm_under_ray_marks_runs_interrupted_and_exits_143(tmp_path, cluster):
    """Ray installs its own SIGTERM handler (``sys.exit(15)``) when it connects, and re-raises
    a handler's exception inside ``ray.wait`` as a bare KeyboardInterrupt; SIGTERM must still
    mean the same with Ray as without."""
    config, results = write_config(tmp_path / "c.yaml", depths=6, train_limit=3000), tmp_path / "res"
    proc = subprocess.Popen([sys.executable, "-m", "initsweep", "run", str(config), "--results", str(results),
                             "--executor", "ray", "--ray-address", cluster], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "NO_COLOR": "1"})
    deadline = time.monotonic() + 180
    # one run stored, one in flight, and at least two of the six not even claimed: the sweep
    # cannot finish before the signal lands (a busy machine's slow poll once saw the last run
    # in flight, which finished before SIGTERM did: nothing was left to mark)
    while not ("ok" in (rows := _stored(results)) and "running" in rows and len(rows) <= 4) \
            and time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert len(_stored(results)) < 6, "the sweep was not stopped before its end"
    assert err.splitlines()[-1].startswith("terminated (SIGTERM): finished runs are stored")
    assert "SIGTERM received" not in err  # Ray's own handler did not run (it logs this, then exits 15)
    df = load_results(results, history=True)
    assert "running" not in set(df.status) and "ok" in set(df.status)
    assert set(df[df.status == "interrupted"].error) == {"interrupted (SIGTERM)"}
    # the tasks in flight are not left training: Ray stops a job's workers when its driver goes
    deadline = time.monotonic() + 60
    while _ray_task_pids() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert _ray_task_pids() == []


def _run_against(tmp_path: Path, address: str) -> subprocess.CompletedProcess:
    config = write_config(tmp_path / "c.yaml", depths=1)
    return subprocess.run([sys.executable, "-m", "initsweep", "run", str(config), "--results", str(tmp_path / "res"),
                           "--executor", "ray", "--ray-address", address, "--ray-timeout", "3"],
                          capture_output=True, text=True, timeout=180, env={**os.environ, "NO_COLOR": "1"})


def test_ray_address_with_nothing_listening_exits_2_at_once(tmp_path):
    address = f"127.0.0.1:{_free_port()}"  # bound and released: nothing listens there
    proc = _run_against(tmp_path, address)
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [f"error: --ray-address {address}: cannot connect to Ray: Connection refused"]
    assert _stored(tmp_path / "res") == []  # nothing claimed


def test_ray_address_that_never_answers_gives_up_after_ray_timeout(tmp_path):
    """A port that accepts connections but never speaks Ray: Ray would retry for minutes,
    printing its GCS warnings; the CLI gives up after --ray-timeout with one line."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        address = f"127.0.0.1:{silent.getsockname()[1]}"
        proc = _run_against(tmp_path, address)
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [f"error: --ray-address {address}: no answer from Ray within 3 s (--ray-timeout)"]
    assert _stored(tmp_path / "res") == []


def test_executor_ray_without_ray_installed_exits_2(tmp_path):
    config = write_config(tmp_path / "c.yaml", depths=1)
    code = ("import sys; sys.modules['ray'] = None; sys.argv = ['initsweep', 'run', sys.argv[1], '--results', "
            "sys.argv[2], '--executor', 'ray']; from initsweep.cli import main; main()")
    proc = subprocess.run([sys.executable, "-c", code, str(config), str(tmp_path / "res")], capture_output=True,
                          text=True, env={**os.environ, "NO_COLOR": "1"})
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == ["error: --executor ray needs Ray: pip install 'initsweep[ray]'"]


def test_ray_flags_without_the_ray_executor_exit_2(tmp_path):
    from typer.testing import CliRunner

    from initsweep.cli import app

    config = str(write_config(tmp_path / "c.yaml", depths=1))
    for flag, value in (("--num-gpus", "0.5"), ("--ray-timeout", "5")):
        result = CliRunner().invoke(app, ["run", config, flag, value])
        assert result.exit_code == 2 and "need --executor ray" in result.stderr


def test_under_ray_the_checkout_is_the_drivers_and_the_weights_come_back(tmp_path, cluster):
    """A Ray worker runs in a folder of Ray's (on a cluster, on another machine): the git facts
    are still those of the folder the sweep was started from, and the weights (``train.save``)
    travel back with the result to the process that owns the results folder."""
    from test_provenance import CPU, checkout, correct, git, working_directory, write

    from initsweep.results.checkpoints import load_model, run_spec
    from initsweep.train import memory_format_for, splits_for
    from tolerances import IMAGES

    repo = checkout(tmp_path / "repo")
    config = write(tmp_path / "c.yaml", "ray", {"depth": [1]}, {"save": "final"})
    with working_directory(repo):
        outcome = run_sweep(config, results_dir=tmp_path / "res", executor="ray", ray_address=cluster)
    assert outcome.counts == {"ok": 1}
    (row,) = load_results(tmp_path / "res").itertuples()
    assert row.worker != str(os.getpid())  # trained in a Ray worker process
    assert row.git_commit == git(repo, "rev-parse", "HEAD") and row.git_dirty == 0
    spec = run_spec(tmp_path / "res", row.run_id)
    model = load_model(tmp_path / "res", row.run_id).to(memory_format=memory_format_for(spec, CPU))
    _, splits = splits_for(spec, CPU)
    assert abs(correct(model, splits.test_x, splits.test_y) - round(row.test_acc * row.n_test)) <= IMAGES


def test_fail_fast_on_ray_interrupts_the_task_in_flight(tmp_path, cluster):
    from test_ci import invoke
    from test_reuse import corrupt_dataset, mnist_config

    corrupt_dataset(tmp_path / "bad")
    config = mnist_config(tmp_path / "c.yaml", tmp_path / "bad")  # 3 runs, each fails reading its data
    result = invoke("run", str(config), "--results", str(tmp_path / "res"), "--executor", "ray", "--ray-address",
                    cluster, "--num-cpus", "1", "-q", "--fail-fast")
    assert result.exit_code == 1, result.output
    # the cluster's 2 CPUs took 2 runs at once: the first failure stops the sweep, the other is
    # recorded interrupted, the third never starts
    assert load_results(tmp_path / "res").status.value_counts().to_dict() == {"failed": 1, "interrupted": 1}
    assert "stopped at the first failed run (--fail-fast)" in result.stderr


def test_executor_ray_without_an_address_starts_its_own_even_beside_a_running_cluster(tmp_path, cluster):
    """(Last in this file: a local instance started here leaves the cluster tests above unable
    to connect for a while, seen on this machine.) With a cluster already up on this machine, ``ray.init(num_cpus=...)`` would join it and
    refuse num_cpus ("must not be provided"); the executor asks for a new local instance."""
    config = write_config(tmp_path / "c.yaml", depths=1, train_limit=256)
    outcome = run_sweep(config, results_dir=tmp_path / "res", executor="ray")
    assert outcome.counts == {"ok": 1}
    assert len(load_results(tmp_path / "res")) == 1
