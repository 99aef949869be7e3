"""``run --log-to tensorboard`` / ``log_to: [tensorboard]``: one event folder per run, read
back with TensorBoard's own ``EventAccumulator`` and held against the store's rows."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from initsweep.cli import app
from initsweep.config import expand, load_config
from initsweep.results.read import load_results, read_curves
from initsweep.sweep.run import run_sweep

EventAccumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator").EventAccumulator
from tensorboard.plugins.hparams import metadata as hparams_metadata  # noqa: E402

runner = CliRunner()
TINY = {"dataset": "mnist-sample", "train_limit": 256, "test_limit": 256, "val_fraction": 0.1}


def write_config(path: Path, depths: list[int], epochs: int = 1, **extra) -> Path:
    path.write_text(yaml.safe_dump({"name": "tb", "data": TINY, "model": {"arch": "plain", "width": 4, "head": "flatten"},
                                    "train": {"epochs": epochs, "batch_size": 64}, "grid": {"depth": depths},
                                    **extra}))
    return path


def events(folder: Path) -> EventAccumulator:
    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return acc


def series(acc: EventAccumulator, tag: str) -> dict[int, float]:
    return {e.step: e.value for e in acc.Scalars(tag)}


def event_files(results: Path) -> dict[str, tuple[str, ...]]:
    """run_id -> the names of its event files."""
    return {d.name: tuple(sorted(f.name for f in d.iterdir())) for d in (results / "tensorboard" / "tb").iterdir()}


# TensorBoard keeps a scalar as float32: 2^-24 relative, with room
F32 = {"rel": 1e-6, "abs": 1e-9}


@pytest.fixture(scope="module")
def pooled(tmp_path_factory):
    """Two runs of two epochs trained by two worker processes, logged with --log-to."""
    tmp = tmp_path_factory.mktemp("tb")
    config = write_config(tmp / "c.yaml", [1, 2], epochs=2, log_every_steps=1)
    result = runner.invoke(app, ["run", str(config), "-r", str(tmp / "res"), "--device", "cpu", "--workers", "2",
                                 "--threads", "1", "--log-to", "tensorboard", "-q"])
    assert result.exit_code == 0, result.output + result.stderr
    return tmp / "res"


def test_one_folder_per_run_with_its_stored_epochs_test_metrics_and_layers(pooled):
    runs = load_results(pooled)
    assert len(runs) == 2 and (runs.worker != str(os.getpid())).all()  # trained in worker processes
    assert {d.name for d in (pooled / "tensorboard" / "tb").iterdir()} == set(runs.run_id)
    epochs, layers = read_curves(pooled, runs.row_id.tolist())
    for run in runs.itertuples():
        acc = events(pooled / "tensorboard" / "tb" / run.run_id)
        mine = epochs[epochs.row_id == run.row_id]
        assert len(mine) == 2
        for tag, column in (("train/loss", "train_loss"), ("train/acc", "train_acc"),
                            ("val/loss", "val_loss"), ("val/acc", "val_acc")):
            assert series(acc, tag) == {e: pytest.approx(v, **F32) for e, v in zip(mine.epoch, mine[column])}
        last = int(mine.epoch.max())
        assert series(acc, "test/acc") == {last: pytest.approx(run.test_acc, **F32)}
        assert series(acc, "test/loss") == {last: pytest.approx(run.test_loss, **F32)}
        for phase in ("init", "final"):
            rows = layers[(layers.row_id == run.row_id) & (layers.phase == phase)]
            assert len(rows) == run.depth  # one block per layer of the plain net
            assert series(acc, f"layers/{phase}/act_std") == {
                i: pytest.approx(v, **F32) for i, v in zip(rows.layer, rows.act_std)}
            assert series(acc, f"layers/{phase}/act_grad_norm") == {
                i: pytest.approx(math.sqrt(v), **F32) for i, v in zip(rows.layer, rows.act_grad_norm2)}


def assert_step_losses_average_to_epochs(results: Path, batch_size: int = 64) -> None:
    """``log_every_steps: 1``: a loss per optimizer step, which the store does not keep; each
    epoch's mean of them, weighted by batch size, is the epoch's stored ``train_loss``."""
    runs = load_results(results)
    epochs, _ = read_curves(results, runs.row_id.tolist())
    for run in runs.itertuples():
        steps = series(events(results / "tensorboard" / "tb" / run.run_id), "train/step_loss")
        assert sorted(steps) == list(range(1, run.steps + 1))
        per_epoch = math.ceil(run.n_train / batch_size)
        sizes = [min(batch_size, run.n_train - batch_size * i) for i in range(per_epoch)]  # the last is smaller
        mine = epochs[epochs.row_id == run.row_id]
        for epoch, stored in zip(mine.epoch, mine.train_loss):
            first = (epoch - 1) * per_epoch + 1
            mean = sum(steps[first + i] * b for i, b in enumerate(sizes)) / run.n_train
            assert mean == pytest.approx(stored, rel=1e-5)


def test_every_steps_loss_averages_to_its_epochs_stored_train_loss(pooled):
    assert_step_losses_average_to_epochs(pooled)


def test_step_losses_of_a_vmapped_group_are_each_runs_own(tmp_path):
    """K runs trained as one batched model: each run's folder gets its own model's losses."""
    config = write_config(tmp_path / "c.yaml", [2], log_every_steps=1, diagnostics={"enabled": False},
                          train={"epochs": 1, "batch_size": 64, "seeds": [0, 1]},
                          grid={"depth": [2], "init": ["kaiming_normal", "xavier_uniform"]})
    outcome = run_sweep(config, results_dir=tmp_path / "res", device="cpu", workers=1, vmap="on",
                        log_to=["tensorboard"])
    assert outcome.counts == {"ok": 4} and all(r.batched for _, r in outcome.results)
    assert_step_losses_average_to_epochs(tmp_path / "res")


def test_each_run_is_an_hparams_session_with_its_settings(pooled):
    for run in load_results(pooled).itertuples():
        content = events(pooled / "tensorboard" / "tb" / run.run_id).PluginTagToContent(hparams_metadata.PLUGIN_NAME)
        # a session per run and no experiment summary: TensorBoard builds it from all the runs
        assert set(content) == {hparams_metadata.SESSION_START_INFO_TAG, hparams_metadata.SESSION_END_INFO_TAG}
        values = hparams_metadata.parse_session_start_info_plugin_data(
            content[hparams_metadata.SESSION_START_INFO_TAG]).hparams
        assert values["depth"].number_value == run.depth and values["width"].number_value == 4
        assert values["lr"].number_value == pytest.approx(run.lr)
        assert values["init_label"].string_value == run.init_label
        assert values["activation"].string_value == run.activation
        assert values["dataset"].string_value == "mnist-sample"
        assert values["status"].string_value == "ok"
        assert "max_steps" not in values and "run_id" not in values  # unset settings left out


def test_config_log_to_in_process_and_a_resume_writes_no_second_events(tmp_path):
    config = write_config(tmp_path / "c.yaml", [1], log_to=["tensorboard"], diagnostics={"enabled": False},
                          log_every_steps=3)
    args = ["run", str(config), "-r", str(tmp_path / "res"), "--device", "cpu", "--workers", "1", "-q"]
    assert runner.invoke(app, args).exit_code == 0
    first = event_files(tmp_path / "res")
    assert list(first) == load_results(tmp_path / "res").run_id.tolist() and len(first[next(iter(first))]) == 1
    assert runner.invoke(app, args).exit_code == 0  # resume: nothing to run, nothing written
    assert event_files(tmp_path / "res") == first
    # --fresh trains the run again: its folder holds the new attempt's events only
    assert runner.invoke(app, [*args, "--fresh", "--log-to", "tensorboard"]).exit_code == 0
    again = event_files(tmp_path / "res")
    assert list(again) == list(first) and len(again[next(iter(again))]) == 1
    run = load_results(tmp_path / "res").iloc[0]
    acc = events(tmp_path / "res" / "tensorboard" / "tb" / run.run_id)
    assert series(acc, "test/acc") == {1: pytest.approx(run.test_acc, **F32)}
    assert not [t for t in acc.Tags()["scalars"] if t.startswith("layers/")]  # diagnostics off: no layer rows
    assert sorted(series(acc, "train/step_loss")) == list(range(3, run.steps + 1, 3))


def test_log_to_changes_no_run_id(tmp_path):
    plain = expand(load_config(write_config(tmp_path / "a.yaml", [1, 2])))
    logged = expand(load_config(write_config(tmp_path / "b.yaml", [1, 2], log_to=["tensorboard"], log_every_steps=5)))
    assert [r.run_id for r in logged.runs] == [r.run_id for r in plain.runs]


def test_an_unknown_logger_is_one_line_exit_2(tmp_path):
    config = write_config(tmp_path / "c.yaml", [1])
    result = runner.invoke(app, ["run", str(config), "-r", str(tmp_path / "res"), "--log-to", "tensorbord"])
    assert result.exit_code == 2
    assert result.stderr.splitlines() == ["error: --log-to: unknown logger 'tensorbord' — did you mean 'tensorboard'?"]
    bad = write_config(tmp_path / "bad.yaml", [1], log_to=["tensorbord"])
    result = runner.invoke(app, ["run", str(bad), "-r", str(tmp_path / "res")])
    assert result.exit_code == 2
    assert result.stderr.splitlines() == [
        f"error: {bad}: log_to[0]: unknown logger 'tensorbord' — did you mean 'tensorboard'?"]
    assert not (tmp_path / "res").exists()  # refused before a results folder is made


def test_without_the_extra_log_to_tensorboard_is_one_line_exit_2(tmp_path):
    config = write_config(tmp_path / "c.yaml", [1])
    code = ("import sys; sys.modules['tensorboard'] = None; sys.argv = ['initsweep', 'run', sys.argv[1], '--results', "
            "sys.argv[2], '--log-to', 'tensorboard']; from initsweep.cli import main; main()")
    proc = subprocess.run([sys.executable, "-c", code, str(config), str(tmp_path / "res")], capture_output=True,
                          text=True, env={**os.environ, "NO_COLOR": "1"})
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == ["error: logging to tensorboard needs TensorBoard, which is not installed: "
                                        "pip install 'initsweep[tensorboard]'"]
    assert not (tmp_path / "res").exists()
