"""`initsweep run` end to end on real MNIST digits and a real SQLite file: rows, statuses,
divergence, resume, kill -9, concurrency, determinism, fallback and bad folders."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from initsweep.cli import app
from initsweep.config import expand, load_config, validate
from initsweep.results.read import load_results
from initsweep.results.store import Store
from initsweep.sweep.run import run_sweep
from initsweep.train import run
from tolerances import assert_differ, assert_same_rows

runner = CliRunner()
TINY = {"dataset": "mnist-sample", "train_limit": 256, "test_limit": 256, "val_fraction": 0.1}


def write_config(path: Path, **sections) -> Path:
    cfg = {"name": "t", "data": TINY, "model": {"arch": "plain", "width": 4, "head": "flatten"},
           "train": {"epochs": 1, "batch_size": 64, "seeds": [0]}, **sections}
    path.write_text(yaml.safe_dump(cfg))
    return path


def finished_counts(db: Path) -> dict[str, int]:
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT run_id, COUNT(*) FROM runs WHERE status IN ('ok', 'diverged') GROUP BY run_id")
        return dict(rows.fetchall())


def cli(*args: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "initsweep", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "NO_COLOR": "1"}, **kwargs)


def test_end_to_end_rows_statuses_and_a_real_accuracy_bar(tmp_path):
    config = write_config(
        tmp_path / "c.yaml",
        data={"dataset": "mnist-sample", "val_fraction": 0.1},
        model={"arch": "plain", "width": 16, "head": "flatten"},
        grid={"init": ["he", "std_normal"], "activation": ["relu"], "depth": [2, 20], "lr": [0.001, 10.0]},
        # two points: He at depth 2 with a sane lr; N(0, 1) at depth 20 with a huge one
        exclude=[{"init": "he", "depth": 20}, {"init": "he", "lr": 10.0},
                 {"init": "std_normal", "depth": 2}, {"init": "std_normal", "lr": 0.001}],
    )
    outcome = run_sweep(config, results_dir=tmp_path / "res", device="cpu")
    plan = expand(load_config(config))
    df = load_results(tmp_path / "res")
    assert len(df) == len(plan.runs) == 2
    assert set(df.run_id) == {s.run_id for s in plan.runs}
    by = df.set_index("init")
    # He + ReLU at depth 2 learns real digits in one epoch (chance is 0.10; measured 0.68-0.75 over seeds 0-2)
    assert by.loc["he", "status"] == "ok" and by.loc["he", "diverged_step"] != by.loc["he", "diverged_step"]
    assert by.loc["he", "test_acc"] > 0.6
    # N(0, 1) weights through 20 ReLU convs start at a loss near 1e18; lr 10 sends it to inf at step 2
    assert by.loc["std_normal", "status"] == "diverged"
    assert by.loc["std_normal", "diverged_step"] == 2
    assert by.loc["std_normal", "steps"] == 1
    assert (df.n_train == 3600).all() and (df.n_val == 400).all() and (df.n_test == 1000).all()
    assert (df.dataset == "mnist-sample").all() and df.data_fallback.isna().all()
    assert outcome.counts == {"ok": 1, "diverged": 1}
    with Store(tmp_path / "res") as store:
        epochs = store.epochs_frame()
    assert len(epochs) == 2 and epochs.train_loss.notna().all()


def test_divergence_step_is_the_first_bad_step(tmp_path):
    """SGD with a huge lr diverges after some updates; one step fewer must be a clean run."""
    base = {"name": "d", "data": TINY, "model": {"arch": "plain", "width": 8, "depth": 3, "head": "flatten"},
            "train": {"optimizer": "sgd", "lr": 50.0, "batch_size": 32, "epochs": 3}}
    spec = expand(validate(base)).runs[0]
    result = run(spec, "cpu")
    assert result.status == "diverged"
    assert result.diverged_step > 1
    assert result.steps == result.diverged_step - 1  # the bad step's update was never applied
    before = expand(validate({**base, "train": {**base["train"], "max_steps": result.diverged_step - 1}})).runs[0]
    assert run(before, "cpu").status == "ok"


def test_cpu_runs_are_bit_for_bit_reproducible():
    spec = expand(validate({"name": "r", "data": TINY, "model": {"arch": "plain", "width": 8, "depth": 4},
                            "train": {"epochs": 2, "batch_size": 32, "seeds": [3]}})).runs[0]
    a, b = run(spec, "cpu"), run(spec, "cpu")
    assert [(e.train_loss, e.train_acc, e.val_loss, e.val_acc) for e in a.epochs] == \
           [(e.train_loss, e.train_acc, e.val_loss, e.val_acc) for e in b.epochs]
    assert (a.test_loss, a.test_acc) == (b.test_loss, b.test_acc)
    other = expand(validate({"name": "r", "data": TINY, "model": {"arch": "plain", "width": 8, "depth": 4},
                             "train": {"epochs": 2, "batch_size": 32, "seeds": [4]}})).runs[0]
    assert_differ(run(other, "cpu").epochs[0].train_loss, a.epochs[0].train_loss)


def test_resume_runs_nothing_the_second_time_and_fresh_keeps_history(tmp_path):
    config = write_config(tmp_path / "c.yaml", grid={"init": ["he", "lecun_normal"], "depth": [1, 2]})
    first = run_sweep(config, results_dir=tmp_path / "res", device="cpu")
    assert len(first.results) == 4
    second = run_sweep(config, results_dir=tmp_path / "res", device="cpu")
    assert second.results == [] and second.n_done_before == 4
    fresh = run_sweep(config, results_dir=tmp_path / "res", device="cpu", fresh=True)
    assert len(fresh.results) == 4
    history = load_results(tmp_path / "res", history=True)
    assert len(history) == 8 and len(load_results(tmp_path / "res")) == 4
    # reruns of the same spec reproduce the stored numbers (to float tolerance: the sweep may
    # train them in other processes; tests/tolerances.py)
    attempts = history.sort_values("row_id")
    assert_same_rows(attempts.iloc[:4], attempts.iloc[4:])


def test_max_runs_and_failed_runs_are_retried(tmp_path):
    config = write_config(tmp_path / "c.yaml", grid={"depth": [1, 2, 3]})
    assert len(run_sweep(config, results_dir=tmp_path / "res", device="cpu", max_runs=2).results) == 2
    assert len(run_sweep(config, results_dir=tmp_path / "res", device="cpu").results) == 1


def test_a_failing_run_is_recorded_and_the_sweep_goes_on(tmp_path, monkeypatch):
    """Inject an exception into one run's model build; the others must still run."""
    import initsweep.build as build_module

    real = build_module.build_model

    def build(arch, *, depth, **kw):
        if depth == 2:
            raise RuntimeError("injected failure for depth 2")
        return real(arch, depth=depth, **kw)

    monkeypatch.setattr(build_module, "build_model", build)
    config = write_config(tmp_path / "c.yaml", grid={"depth": [1, 2, 3]})
    outcome = run_sweep(config, results_dir=tmp_path / "res", device="cpu", workers=1)  # in-process: sees the patch
    assert outcome.counts == {"ok": 2, "failed": 1}
    df = load_results(tmp_path / "res").set_index("depth")
    assert df.loc[2, "status"] == "failed"
    assert "RuntimeError: injected failure for depth 2" in df.loc[2, "error"]


def test_corrupt_data_fails_every_run_and_exits_1(tmp_path):
    """A real failure: IDX files that resolve but cannot be read."""
    raw = tmp_path / "data" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for stem in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (raw / stem).write_bytes(b"\x00\x00\x08\x03\x00\x00\x00\x05")  # header of a 5x?x? array, then nothing
    config = write_config(tmp_path / "c.yaml", data={"dataset": "mnist", "root": str(tmp_path / "data")},
                          grid={"depth": [1, 2]})
    result = runner.invoke(app, ["run", str(config), "--results", str(tmp_path / "res"), "--device", "cpu"])
    assert result.exit_code == 1, result.output
    df = load_results(tmp_path / "res")
    assert list(df.status) == ["failed", "failed"]
    assert df.error.str.contains("DataError").all() and df.error.str.contains("truncated or corrupt").all()


def test_offline_fallback_is_recorded_in_every_row(tmp_path):
    config = write_config(tmp_path / "c.yaml", data={**TINY, "dataset": "mnist", "root": str(tmp_path / "empty"),
                                                     "download": False}, grid={"depth": [1, 2]})
    result = runner.invoke(app, ["run", str(config), "--results", str(tmp_path / "res"), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "WARNING" in result.stderr and "MNIST sample" in result.stderr
    df = load_results(tmp_path / "res")
    assert (df.dataset == "mnist-sample").all() and (df.dataset_requested == "mnist").all()
    assert df.data_fallback.str.contains(str(tmp_path / "empty")).all()
    # the run ids say what was trained on: not the ids of real-MNIST runs
    asked = {s.run_id for s in expand(load_config(config)).runs}
    assert asked.isdisjoint(set(df.run_id))


def test_offline_flag_refuses_to_substitute(tmp_path):
    config = write_config(tmp_path / "c.yaml", data={**TINY, "dataset": "mnist", "root": str(tmp_path / "empty")})
    result = runner.invoke(app, ["run", str(config), "--results", str(tmp_path / "res"), "--offline"])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "offline: no download attempted" in lines[0] and str(tmp_path / "empty") in lines[0]


@pytest.mark.parametrize("where", ["/proc/initsweep-results", "file-in-the-way/sub"])
def test_unwritable_results_folder_exits_2_before_training(tmp_path, where):
    (tmp_path / "file-in-the-way").write_text("not a folder")
    results = where if where.startswith("/") else str(tmp_path / where)
    config = write_config(tmp_path / "c.yaml", grid={"depth": [1]})
    result = runner.invoke(app, ["run", str(config), "--results", results])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and f"results folder {results} cannot be used" in lines[0]
    assert "Traceback" not in result.output


def test_bad_device_exits_2(tmp_path):
    config = write_config(tmp_path / "c.yaml")
    result = runner.invoke(app, ["run", str(config), "--results", str(tmp_path / "r"), "--device", "tpu"])
    assert result.exit_code == 2 and "--device tpu" in result.stderr


def _slow_config(tmp_path: Path, n_depths: int = 10) -> Path:
    return write_config(tmp_path / "slow.yaml", data={"dataset": "mnist-sample", "train_limit": 1024, "test_limit": 256},
                        model={"arch": "plain", "width": 8, "head": "flatten"},
                        grid={"depth": list(range(1, n_depths + 1))})


def _wait_for_finished(db: Path, n: int, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"sweep ended early: {proc.communicate()}")
        if db.exists():
            try:
                if sum(finished_counts(db).values()) >= n:
                    return
            except sqlite3.OperationalError:
                pass
        time.sleep(0.05)
    raise AssertionError("timed out waiting for runs to finish")


def _sweep_in_background(tmp_path: Path, wait_for: int) -> tuple[Path, Path, Path, subprocess.Popen]:
    """Start a 10-run sweep in a subprocess; return once ``wait_for`` runs are stored."""
    config, results = _slow_config(tmp_path), tmp_path / "res"
    db = results / "initsweep.db"
    proc = cli("run", str(config), "--results", str(results), "--device", "cpu")
    _wait_for_finished(db, wait_for, proc)
    return config, results, db, proc


def test_kill_9_mid_sweep_keeps_the_database_and_resume_completes(tmp_path):
    config, results, db, proc = _sweep_in_background(tmp_path, wait_for=3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    done_before = sum(finished_counts(db).values())
    assert 3 <= done_before < 10
    resumed = cli("run", str(config), "--results", str(results), "--device", "cpu")
    out, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    assert f"{done_before} already finished, {10 - done_before} to run" in out
    counts = finished_counts(db)
    assert len(counts) == 10 and set(counts.values()) == {1}  # every run finished exactly once
    df = load_results(results, history=True)
    assert set(df.status) <= {"ok", "diverged", "interrupted"}
    assert (df.status == "interrupted").sum() <= 1  # at most the run in flight was lost
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_two_concurrent_sweeps_share_the_work(tmp_path):
    config, results = _slow_config(tmp_path, n_depths=8), tmp_path / "res"
    a = cli("run", str(config), "--results", str(results), "--device", "cpu")
    b = cli("run", str(config), "--results", str(results), "--device", "cpu")
    out_a, err_a = a.communicate(timeout=300)
    out_b, err_b = b.communicate(timeout=300)
    assert a.returncode == 0 and b.returncode == 0, (err_a, err_b)
    assert "locked" not in err_a + err_b
    counts = finished_counts(results / "initsweep.db")
    assert len(counts) == 8 and set(counts.values()) == {1}
    df = load_results(results, history=True)
    assert len(df) == 8 and (df.status == "ok").all()


def test_sigterm_marks_the_run_in_flight_interrupted_and_exits_143(tmp_path):
    _, results, _, proc = _sweep_in_background(tmp_path, wait_for=2)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    df = load_results(results, history=True)
    assert "running" not in set(df.status)
    assert (df.status == "interrupted").sum() <= 1
    assert "resume" in err


def test_report_lists_runs_and_handles_empty_and_missing_folders(tmp_path):
    config = write_config(tmp_path / "c.yaml", grid={"depth": [1, 2]})
    run_sweep(config, results_dir=tmp_path / "res", device="cpu")
    result = runner.invoke(app, ["report", "--results", str(tmp_path / "res"), "--format", "json"])
    assert result.exit_code == 0 and [r["depth"] for r in json.loads(result.stdout)] == [1, 2]
    missing = runner.invoke(app, ["report", "--results", str(tmp_path / "nope")])
    assert missing.exit_code == 2 and "does not exist" in missing.stderr
    Store(tmp_path / "empty").close()
    empty = runner.invoke(app, ["report", "--results", str(tmp_path / "empty")])
    assert empty.exit_code == 0 and "no runs" in empty.stdout
