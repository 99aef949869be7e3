"""``initsweep export --format mlflow``: a real MLflow tracking store (sqlite:/// and a folder) read
back with mlflow's own API, against the results store read independently with sqlite3: every run
with its settings as params, its epochs as metric histories, its final metrics and tags; a second
export adds only what is new; --sweep/--where select; bad input is one line and exit 2."""

from __future__ import annotations

import os
import shutil
import sqlite3
import sys
from pathlib import Path

import pytest
import yaml

pytest.importorskip("mlflow")

import mlflow  # noqa: E402
from mlflow import MlflowClient  # noqa: E402

from initsweep.columns import SETTING_COLUMNS  # noqa: E402
from initsweep.config import expand, validate  # noqa: E402
from initsweep.report.mlflow_export import EPOCH_METRICS, FINAL_METRICS, RUN_STATUS  # noqa: E402
from initsweep.results.store import DB_NAME, Store  # noqa: E402
from initsweep.sweep.run import run_sweep  # noqa: E402
from test_ci import TINY, invoke  # noqa: E402

# SGD at lr 100 diverges (loss NaN: its later epochs and test loss are NULL), lr 0.05 trains
GRID = {"name": "grid", "data": TINY, "model": {"arch": "plain", "width": 4, "depth": 2, "head": "flatten"},
        "train": {"optimizer": "sgd", "epochs": 2, "batch_size": 64, "seeds": [0]},
        "grid": {"init": ["he", "std_normal"], "lr": [0.05, 100.0]}}
OTHER = {**GRID, "name": "other", "train": {**GRID["train"], "epochs": 1}, "grid": {"init": ["lecun_normal"]},
         "diagnostics": {"enabled": False}}


def spec_of(config: dict, **train):
    return expand(validate({**config, "train": {**config["train"], **train}})).runs[0]


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    """Two sweeps: ``grid`` (4 runs, 2 epochs, some diverged) and ``other`` (1 run); and one run
    of ``other`` whose first attempt was interrupted and whose second is still running."""
    root = tmp_path_factory.mktemp("mlflow")
    res = root / "res"
    for config in (GRID, OTHER):
        path = root / f"{config['name']}.yaml"
        path.write_text(yaml.safe_dump(config))
        run_sweep(path, results_dir=res, device="cpu")
    with Store(res) as s:
        spec = spec_of(OTHER, seeds=[1])
        s.mark_interrupted(s.claim(spec), "stopped by the test")
        s.claim(spec)
    return res


@pytest.fixture
def tracking(monkeypatch):
    """mlflow.search_runs reads the global tracking URI: set per test, put back after. A folder
    store is MLflow's file store, which MLflow 3 opens only when asked to."""
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    before = mlflow.get_tracking_uri()
    yield
    mlflow.set_tracking_uri(before)


def stored(res: Path, sweeps: tuple[str, ...] = ("grid", "other")) -> tuple[list[dict], dict[int, list[dict]]]:
    """Each run's latest attempt and every attempt's epochs, read with sqlite3 (not initsweep)."""
    conn = sqlite3.connect(res / DB_NAME)
    conn.row_factory = sqlite3.Row
    runs = [dict(r) for r in conn.execute(
        f"SELECT * FROM runs WHERE sweep IN ({','.join('?' * len(sweeps))}) AND row_id IN "
        "(SELECT max(row_id) FROM runs GROUP BY sweep, run_id) ORDER BY row_id", sweeps)]
    epochs: dict[int, list[dict]] = {}
    for row in conn.execute("SELECT * FROM epochs ORDER BY row_id, epoch"):
        epochs.setdefault(row["row_id"], []).append(dict(row))
    conn.close()
    return runs, epochs


def exported(uri: str, sweeps: tuple[str, ...] = ("grid", "other")):
    """The MLflow runs of the sweeps' experiments, by their initsweep.run_id tag (each once)."""
    mlflow.set_tracking_uri(uri)
    frame = mlflow.search_runs(experiment_names=list(sweeps))
    keys = frame["tags.initsweep.run_id"].tolist()
    assert len(keys) == len(set(keys))
    return frame.set_index("tags.initsweep.run_id")


def assert_exported(uri: str, runs: list[dict], epochs: dict[int, list[dict]]) -> None:
    frame = exported(uri)
    finished = [run for run in runs if run["status"] != "running"]
    assert sorted(frame.index) == sorted(run["run_id"] for run in finished)
    client = MlflowClient(tracking_uri=uri)
    experiments = {e.name: e.experiment_id for e in client.search_experiments()}
    for run in finished:
        got = frame.loc[run["run_id"]]
        assert got["experiment_id"] == experiments[run["sweep"]] and got["status"] == RUN_STATUS[run["status"]]
        params = {k[len("params."):]: v for k, v in got.items() if k.startswith("params.") and isinstance(v, str)}
        assert set(params) == {c for c in SETTING_COLUMNS if run[c] is not None}
        for column, value in params.items():
            kind = SETTING_COLUMNS[column]
            assert (float(value) if kind == "REAL" else int(value) if kind == "INTEGER" else value) == run[column]
        for column in FINAL_METRICS:
            if run[column] is None:
                assert f"metrics.{column}" not in got or got[f"metrics.{column}"] != got[f"metrics.{column}"]
            else:
                assert got[f"metrics.{column}"] == run[column], column
        for column in ("status", "verdict", "torch_version", "initsweep_version", "data_location", "n_train",
                       "dataset_requested", "device"):
            tag = got.get(f"tags.initsweep.{column}")  # a missing tag reads as NaN in the frame
            assert (tag if isinstance(tag, str) else None) == (None if run[column] is None else str(run[column]))
        mlflow_id = got["run_id"]
        for column, name in EPOCH_METRICS.items():
            history = [(m.step, m.value) for m in client.get_metric_history(mlflow_id, name)]
            expected = [(e["epoch"], e[column]) for e in epochs.get(run["row_id"], []) if e[column] is not None]
            assert sorted(history) == expected, (run["run_id"], name)


def test_every_run_goes_to_mlflow_once_with_params_metrics_and_tags(store, tmp_path, tracking, monkeypatch):
    runs, epochs = stored(store)
    assert {r["status"] for r in runs} >= {"ok", "diverged", "running"} and len(runs) == 6
    assert any(r["verdict"] for r in runs) and not all(r["verdict"] for r in runs)
    assert sum(len(epochs.get(r["row_id"], [])) for r in runs) >= 4 * 1 + 1  # curves to compare
    for uri in (f"sqlite:///{tmp_path / 'mlflow.db'}", str(tmp_path / "mlruns")):
        monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE")  # the export opts in to a folder by itself, and back out
        out = invoke("export", "--results", str(store), "--format", "mlflow", "--output", uri)
        assert out.exit_code == 0, out.output
        assert "MLFLOW_ALLOW_FILE_STORE" not in os.environ
        monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
        assert out.stderr.strip() == (f"5 runs added to {uri} (mlflow, experiments grid, other); "
                                      "0 skipped: exported before; 1 still running, not exported")
        assert out.stdout == ""  # mlflow's INFO lines (creating tables, ...) kept off the terminal
        assert_exported(uri, runs, epochs)
        again = invoke("export", "--results", str(store), "-f", "mlflow", "-o", uri)
        assert again.exit_code == 0 and again.stderr.startswith(f"0 runs added to {uri} ")
        assert "5 skipped: exported before" in again.stderr
        assert_exported(uri, runs, epochs)


def test_a_second_export_adds_only_the_new_runs(store, tmp_path, tracking):
    res = tmp_path / "res"
    shutil.copytree(store, res)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert invoke("export", "-r", str(res), "-f", "mlflow", "-o", uri).exit_code == 0
    before = exported(uri)
    config = tmp_path / "more.yaml"
    config.write_text(yaml.safe_dump({**OTHER, "grid": {"init": ["lecun_normal", "xavier_uniform"]}}))
    run_sweep(config, results_dir=res, device="cpu")  # one new run; lecun_normal is stored already
    with Store(res) as s:
        [running] = [int(r) for r in s.runs_frame().query("status == 'running'")["row_id"]]
        s.mark_interrupted(running, "stopped by the test")
    out = invoke("export", "-r", str(res), "-f", "mlflow", "-o", uri)
    assert out.exit_code == 0, out.output
    assert out.stderr.strip() == f"2 runs added to {uri} (mlflow, experiments grid, other); 5 skipped: exported before"
    after = exported(uri)
    new = sorted(set(after.index) - set(before.index))
    runs, epochs = stored(res)
    assert new == sorted([run_spec.run_id for run_spec in (spec_of(OTHER, seeds=[1]),
                                                           spec_of({**OTHER, "grid": {"init": ["xavier_uniform"]}}))])
    assert (after.loc[before.index, "run_id"] == before["run_id"]).all()  # the old ones untouched
    assert after.loc[spec_of(OTHER, seeds=[1]).run_id, "status"] == "KILLED"
    assert_exported(uri, runs, epochs)


def test_sweep_and_where_select_the_runs_exported(store, tmp_path, tracking):
    runs, epochs = stored(store)
    uri = str(tmp_path / "mlruns")
    out = invoke("export", "-r", str(store), "--sweep", "grid", "--where", 'init == "he"', "-f", "mlflow", "-o", uri)
    assert out.exit_code == 0, out.output
    assert out.stderr.startswith(f"2 runs added to {uri} (mlflow, experiments grid); 0 skipped")
    frame = exported(uri, ("grid",))
    assert sorted(frame.index) == sorted(r["run_id"] for r in runs if r["sweep"] == "grid" and r["init"] == "he")
    assert set(frame["params.lr"].astype(float)) == {0.05, 100.0}
    out = invoke("export", "-r", str(store), "--sweep", "other", "-f", "mlflow", "-o", uri)
    assert out.stderr.startswith(f"1 runs added to {uri} (mlflow, experiments other); 0 skipped")
    assert len(exported(uri)) == 3
    nothing = tmp_path / "nothing.db"
    out = invoke("export", "-r", str(store), "--where", "depth == 99", "-f", "mlflow", "-o", f"sqlite:///{nothing}")
    assert out.exit_code == 0 and out.stderr.strip() == f"0 runs added to sqlite:///{nothing} (mlflow): no runs selected"
    assert not nothing.exists()
    # from an export file (no epochs stored there): the runs with their final metrics, no curves
    csv = tmp_path / "grid.csv"
    assert invoke("export", "-r", str(store), "--sweep", "grid", "-o", str(csv)).exit_code == 0
    uri = str(tmp_path / "from_csv")
    assert invoke("export", "-r", str(csv), "-f", "mlflow", "-o", uri).exit_code == 0
    frame = exported(uri, ("grid",))
    assert sorted(frame.index) == sorted(r["run_id"] for r in runs if r["sweep"] == "grid")
    assert frame["metrics.test_acc"].tolist() == [next(r["test_acc"] for r in runs if r["run_id"] == key)
                                                  for key in frame.index]
    assert not any(MlflowClient(tracking_uri=uri).get_metric_history(mlflow_id, "train_loss")
                   for mlflow_id in frame["run_id"])


def test_a_run_an_export_left_half_written_is_written_anew(store, tmp_path, tracking):
    """An export stopped between creating an MLflow run and terminating it leaves it RUNNING:
    the next export deletes it and writes the run again, so it is there once and complete."""
    runs, epochs = stored(store)
    uri = str(tmp_path / "mlruns")
    assert invoke("export", "-r", str(store), "-f", "mlflow", "-o", uri).exit_code == 0
    first = exported(uri)
    half = first.index[0]
    MlflowClient(tracking_uri=uri).update_run(first.loc[half, "run_id"], status="RUNNING")
    out = invoke("export", "-r", str(store), "-f", "mlflow", "-o", uri)
    assert out.stderr.startswith(f"1 runs added to {uri} ") and "4 skipped: exported before" in out.stderr
    again = exported(uri)
    assert again.loc[half, "run_id"] != first.loc[half, "run_id"]
    assert_exported(uri, runs, epochs)


def test_bad_input_is_one_line_and_exit_2(store, tmp_path, monkeypatch):
    def fails(*args: str) -> str:
        out = invoke("export", "-r", str(store), "-f", "mlflow", *args)
        assert out.exit_code == 2 and "Traceback" not in out.output, out.output
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1, lines
        return lines[0]

    assert fails() == "error: --format mlflow needs --output URI (a tracking store: sqlite:///mlflow.db or a folder)"
    assert fails("-o", "nope://x").startswith(
        "error: --output nope://x: not a usable MLflow tracking store: ")
    not_a_db = tmp_path / "notes.txt"
    not_a_db.write_text("not a database\n" * 100)
    assert fails("-o", f"sqlite:///{not_a_db}") == (
        f"error: --output sqlite:///{not_a_db}: not a usable MLflow tracking store: "
        "(sqlite3.DatabaseError) file is not a database")
    assert fails("-o", str(tmp_path / "m"), "--history") == (
        "error: --format mlflow writes each run's latest attempt as one MLflow run: every attempt (--history) "
        "has no place there")
    deleted = str(tmp_path / "deleted")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    client = MlflowClient(tracking_uri=deleted)
    client.delete_experiment(client.create_experiment("grid"))
    assert fails("-o", deleted, "--sweep", "grid") == (
        f"error: --output {deleted}: its experiment 'grid' is deleted: restore it, or remove it for good "
        "(mlflow gc), before exporting the sweep again")
    monkeypatch.setitem(sys.modules, "mlflow", None)  # as if the 'mlflow' extra were not installed
    assert fails("-o", str(tmp_path / "m")) == (
        "error: --format mlflow: needs the mlflow client (initsweep's 'mlflow' extra): "
        "pip install 'initsweep[mlflow]'")
    assert not (tmp_path / "m").exists()
