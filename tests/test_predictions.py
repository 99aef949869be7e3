"""Per-example predictions: every finished run stores its predicted and true class of each
test image, through the CLI on real stored sweeps.

Checked for the single and the vmapped path: one byte per test image, and the stored
accuracy is their count of hits (exactly: it is a count); ``show`` prints the per-class
accuracy and confusion matrix recomputed here from the BLOBs read with plain sqlite3;
``merge`` carries them; a store of schema 2 (before the table) is read as it is, merges,
and migrates in place when written to.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_ci import invoke, write_config

from initsweep import load_results
from initsweep.results.store import SCHEMA_VERSION

CPU = ("--device", "cpu", "--workers", "1", "--threads", "1", "--quiet")
SEEDS = [0, 1, 2, 3, 4, 5]  # six pairs a group: the fewest the Wilcoxon test of test_compare is given


def make_store(tmp: Path) -> Path:
    """Sweep ``ci``: he and xavier_uniform x depth 1, 2 x six seeds, one epoch on 256 images."""
    config = write_config(tmp / "c.yaml", {"init": ["he", "xavier_uniform"], "depth": [1, 2]},
                          train={"epochs": 1, "batch_size": 64, "seeds": SEEDS})
    result = invoke("run", str(config), "--results", str(tmp / "res"), *CPU)
    assert result.exit_code == 0, result.output
    return tmp / "res"


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    return make_store(tmp_path_factory.mktemp("predictions"))


@pytest.fixture(scope="module")
def vmapped(tmp_path_factory) -> Path:
    """Four runs trained as one vmapped group on the CPU (``--vmap on``)."""
    tmp = tmp_path_factory.mktemp("vmapped")
    config = write_config(tmp / "c.yaml", {"init": ["he", "xavier_uniform"]},
                          train={"epochs": 1, "batch_size": 64, "seeds": [0, 1]})
    result = invoke("run", str(config), "--results", str(tmp / "res"), *CPU, "--vmap", "on")
    assert result.exit_code == 0, result.output
    return tmp / "res"

def stored_predictions(results: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """run_id -> (predicted, target) of each run's current row, read with plain sqlite3."""
    conn = sqlite3.connect(results / "initsweep.db")
    rows = conn.execute("SELECT r.run_id, p.predicted, p.target FROM predictions p JOIN runs r USING (row_id) "
                        "WHERE r.row_id IN (SELECT MAX(row_id) FROM runs GROUP BY sweep, run_id)").fetchall()
    conn.close()
    return {run_id: (np.frombuffer(p, np.uint8), np.frombuffer(t, np.uint8)) for run_id, p, t in rows}


@pytest.mark.parametrize("which", ["store", "vmapped"])
def test_every_run_stores_one_byte_per_test_image_and_its_accuracy_is_their_count(which, request):
    results = request.getfixturevalue(which)
    runs = load_results(results)
    predictions = stored_predictions(results)
    assert len(runs) == (24 if which == "store" else 4) and set(predictions) == set(runs["run_id"])
    assert set(runs["batched"]) == {1 if which == "vmapped" else 0}
    first_target = next(iter(predictions.values()))[1]
    for run in runs.itertuples():
        predicted, target = predictions[run.run_id]
        assert len(predicted) == len(target) == run.n_test == 256
        assert np.array_equal(target, first_target)  # the test split, in its order, for every run
        assert int(predicted.max()) <= 9 and int(target.max()) == 9
        assert (predicted == target).sum() / len(target) == run.test_acc  # a count over 256: exact


def test_show_prints_per_class_accuracy_and_the_confusion_matrix(store):
    run = load_results(store).iloc[0]
    predicted, target = stored_predictions(store)[run.run_id]
    result = invoke("show", run.run_id, "--results", str(store), "-f", "json")
    assert result.exit_code == 0, result.output
    shown = json.loads(result.stdout)["predictions"]
    matrix = pd.crosstab(pd.Series(target, name="true"), pd.Series(predicted, name="predicted")).reindex(
        index=range(10), columns=range(10), fill_value=0)
    assert shown["confusion"] == matrix.to_numpy().tolist() and shown["n"] == 256
    assert shown["correct"] == int((predicted == target).sum()) == round(run.test_acc * 256)
    for k, entry in enumerate(shown["per_class"]):
        assert entry["class"] == k and entry["n"] == int((target == k).sum())
        assert entry["correct"] == int(((target == k) & (predicted == k)).sum())
        assert entry["accuracy"] == pytest.approx(entry["correct"] / entry["n"], rel=1e-12)
    table = invoke("show", run.run_id, "--results", str(store))
    assert table.exit_code == 0
    assert f"test predictions: {shown['correct']}/256 right (rows: true class, columns: predicted)" in table.stdout
    assert "accuracy" in table.stdout and "no per-example predictions" not in table.stdout


def test_merge_carries_the_predictions_with_their_runs(store, tmp_path):
    result = invoke("merge", str(store), "--into", str(tmp_path / "merged"))
    assert result.exit_code == 0 and "24 run(s) added" in result.stdout
    merged = stored_predictions(tmp_path / "merged")
    source = stored_predictions(store)
    assert set(merged) == set(source) and len(merged) == 24
    for run_id, (predicted, target) in source.items():
        assert merged[run_id][0].tobytes() == predicted.tobytes() and merged[run_id][1].tobytes() == target.tobytes()


def schema_2_copy(store: Path, folder: Path) -> Path:
    """The store as an initsweep of schema 2 left it: no predictions table, version 2."""
    shutil.copytree(store, folder)
    conn = sqlite3.connect(folder / "initsweep.db")
    conn.execute("DROP TABLE predictions")
    conn.execute("UPDATE meta SET value = '2' WHERE key = 'schema_version'")
    conn.commit()
    conn.close()
    return folder


def test_an_old_store_is_read_as_it_is_then_migrates_in_place_and_merges(store, tmp_path):
    old = schema_2_copy(store, tmp_path / "old")
    run_id = load_results(old).iloc[0].run_id
    shown = invoke("show", run_id, "--results", str(old))
    assert shown.exit_code == 0, shown.output
    assert "no per-example predictions (stored before store schema 3)" in shown.stdout
    as_json = json.loads(invoke("show", run_id, "--results", str(old), "-f", "json").stdout)
    assert as_json["predictions"] is None
    assert as_json["predictions_note"] == "no per-example predictions (stored before store schema 3)"
    # merging the old store carries its runs (without predictions) into a new one
    merged = invoke("merge", str(old), "--into", str(tmp_path / "merged"))
    assert merged.exit_code == 0 and "24 run(s) added" in merged.stdout
    assert stored_predictions(tmp_path / "merged") == {}
    # a run into the old folder migrates it: the table appears, the old runs keep lacking predictions
    config = write_config(tmp_path / "c.yaml", {"depth": [3]})
    assert invoke("run", str(config), "--results", str(old), *CPU).exit_code == 0
    conn = sqlite3.connect(old / "initsweep.db")
    version = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0]
    conn.close()
    assert int(version) == SCHEMA_VERSION == 4
    predictions = stored_predictions(old)
    (new_run,) = load_results(old, where="depth == 3")["run_id"]
    assert list(predictions) == [new_run] and len(load_results(old)) == 25
    again = invoke("show", run_id, "--results", str(old))
    assert "no per-example predictions (stored before store schema 3)" in again.stdout



def test_show_says_a_run_that_did_not_finish_has_no_predictions(store, tmp_path):
    """A failed attempt is stored without predictions (``Store.finish`` of a failed result):
    here one run's row made so by hand, as a failed retry would leave it."""
    folder = tmp_path / "res"
    shutil.copytree(store, folder)
    run_id = load_results(folder).iloc[0].run_id
    conn = sqlite3.connect(folder / "initsweep.db")
    conn.execute("DELETE FROM predictions WHERE row_id = (SELECT row_id FROM runs WHERE run_id = ?)", (run_id,))
    conn.execute("UPDATE runs SET status = 'failed', error = 'RuntimeError: boom' WHERE run_id = ?", (run_id,))
    conn.commit()
    conn.close()
    shown = invoke("show", run_id, "--results", str(folder))
    assert shown.exit_code == 0 and "no per-example predictions (the run did not finish)" in shown.stdout
    as_json = json.loads(invoke("show", run_id, "--results", str(folder), "-f", "json").stdout)
    assert as_json["predictions"] is None
    assert as_json["predictions_note"] == "no per-example predictions (the run did not finish)"
