"""One definition of a run's settings and results (initsweep/columns.py): the store's schema,
``RunSpec.settings()``, ``RunResult.to_row()`` and the probe's layer rows all agree with it,
and each list here is derived from the config's and ``RunResult``'s own fields, never
written out by hand, so a field added without its column (or the reverse) fails here.
Also pins what must never move: the SQLite schema and a few run ids."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sqlite3
import types
import typing
from pathlib import Path

import numpy as np
import pytest
import torch
from test_ci import TINY, invoke, write_config

from initsweep.columns import (
    ENVIRONMENT_COLUMNS, LAYER_COLUMNS, RESULT_COLUMNS, RUN_COLUMNS, SETTING_COLUMNS, STORE_COLUMNS,
)
from initsweep.config import AXIS_TARGETS, SECTIONS, Choice, expand, load_config, validate
from initsweep.provenance import git_state
from initsweep.results.store import Store
from initsweep.train import EpochRecord, RunResult, environment

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def sql_type(annotation: typing.Any) -> str | None:
    """The SQLite type a Python annotation is stored as (bools as 0/1); None: not a scalar."""
    if isinstance(annotation, str):  # RunResult's annotations are strings (``from __future__``)
        annotation = eval(annotation, vars(typing) | {"Any": typing.Any})  # noqa: S307 - our own source
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) is typing.Annotated:  # Int, Float, Bool: strict int, float, bool
        return sql_type(args[0])
    if typing.get_origin(annotation) is typing.Literal:
        return "TEXT"
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and len(args) == 1:
        return sql_type(args[0])
    return {int: "INTEGER", bool: "INTEGER", float: "REAL", str: "TEXT"}.get(annotation)


def config_settings() -> dict[str, str | None]:
    """Every setting a run records, from the pydantic sections: ``seed``, and each field a grid
    may sweep (AXIS_TARGETS' short names); a registry choice as name, params and label."""
    columns: dict[str, str | None] = {"seed": "INTEGER"}
    for name, (section, field_name) in AXIS_TARGETS.items():
        if "." in name:
            continue
        annotation = SECTIONS[section].model_fields[field_name].annotation
        if annotation is Choice:
            columns |= {name: "TEXT", f"{name}_params": "TEXT", f"{name}_label": "TEXT"}
        else:
            columns[name] = sql_type(annotation)
    return columns


def test_the_setting_columns_are_the_config_fields_with_their_types():
    derived = config_settings()
    assert len(derived) == len(SETTING_COLUMNS) > 20
    assert derived == SETTING_COLUMNS  # dict equality: names and SQL types, whatever the order


def test_settings_gives_one_value_per_setting_column_in_table_order():
    spec = expand(validate({"name": "s", "data": TINY, "model": {"activation": {"name": "leaky_relu",
                                                                                 "negative_slope": 0.2}}})).runs[0]
    values = spec.settings()
    assert list(values) == ["run_id", "sweep", *SETTING_COLUMNS]
    assert values["activation_label"] == "leaky_relu(negative_slope=0.2)"
    assert values["activation_params"] == {"negative_slope": 0.2} and values["train_limit"] == 256


def test_the_result_columns_are_runresult_fields_environment_and_store_bookkeeping():
    hints = typing.get_type_hints(RunResult)
    scalar = {f.name: sql_type(hints[f.name]) for f in dataclasses.fields(RunResult) if sql_type(hints[f.name])}
    row = RunResult("r", "ok", epochs=[EpochRecord(1, 0.5, 0.9, 0.4, 0.8, 1.0)], environment=environment()).to_row()
    # every scalar field is its own column, typed as annotated (status and run_id: the runs key)
    assert {k: RESULT_COLUMNS[k] for k in scalar if k in RESULT_COLUMNS} == {
        k: t for k, t in scalar.items() if k not in ("run_id", "status", "data_source")}
    assert set(row) | set(STORE_COLUMNS) == set(RESULT_COLUMNS) | {"status"}
    assert not set(row) & set(STORE_COLUMNS)
    assert (row["final_val_loss"], row["final_val_acc"]) == (0.4, 0.8)
    assert {row[c] for c in ENVIRONMENT_COLUMNS.values()} >= {environment()["torch"], environment()["host"]}


def test_the_store_schema_is_the_column_tables_and_does_not_change(tmp_path):
    with Store(tmp_path / "res") as store:
        runs = [(r[1], r[2]) for r in store.conn.execute("PRAGMA table_info(runs)")]
        layers = [(r[1], r[2]) for r in store.conn.execute("PRAGMA table_info(layers)")]
        reused = [(r[1], r[2]) for r in store.conn.execute("PRAGMA table_info(reused)")]
        schema = "\n".join(r[0] for r in store.conn.execute(
            "SELECT sql FROM sqlite_master WHERE sql IS NOT NULL ORDER BY name"))
    assert runs == list(RUN_COLUMNS.items())
    assert layers == [("row_id", "INTEGER"), ("run_id", "TEXT"), ("phase", "TEXT"), ("layer", "INTEGER"),
                      *LAYER_COLUMNS.items()]
    assert reused == [("sweep", "TEXT"), ("run_id", "TEXT"), ("row_id", "INTEGER"), ("reused_at", "TEXT")]
    # The exact CREATE statements of schema version 4 (2 plus the predictions, tags and reused
    # tables in 3, plus the runs' provenance, warnings, traceback and checkpoint columns in 4):
    # existing stores rely on them. A change here needs a SCHEMA_VERSION bump and a migration
    # in Store._migrate, then a new pin. (Version 2's statements hash to fbc058bc91e7e2d9.)
    assert hashlib.sha256(schema.encode()).hexdigest()[:16] == "37d01ec4a6c70d15"
    assert "CREATE TABLE predictions (\n    row_id INTEGER PRIMARY KEY REFERENCES runs (row_id)" in schema


def test_a_run_stores_every_result_column_and_every_layer_column(tmp_path):
    """Through the CLI: ``finish`` writes what ``RunResult.to_row()`` derives, the layers
    table what the probe measured; nothing a finished run has is left NULL."""
    config = write_config(tmp_path / "c.yaml", {"depth": [2]}, diagnostics={"batch_size": 32})
    result = invoke("run", str(config), "--results", str(tmp_path / "res"), "--device", "cpu", "--threads", "1", "-q")
    assert result.exit_code == 0, result.output
    conn = sqlite3.connect(tmp_path / "res" / "initsweep.db")
    conn.row_factory = sqlite3.Row
    run = dict(conn.execute("SELECT * FROM runs").fetchone())
    layers = [dict(r) for r in conn.execute("SELECT * FROM layers ORDER BY phase DESC, layer")]
    conn.close()
    unset = {c for c, v in run.items() if v is None}
    # none of these applies to an uncompiled run on the CPU that neither diverged, failed, warned
    # nor saved its weights, on the data it asked for; git and CUDA facts depend on the machine
    machine = ({"git_commit", "git_dirty"} if git_state().commit is None else set()) | (
        {"cuda_version", "cudnn_version"} if torch.version.cuda is None else {"cudnn_version"} & unset)
    assert unset == {"max_steps", "data_fallback", "compile_seconds", "diverged_step", "error", "gpu_name",
                     "warnings", "traceback", "checkpoint", "checkpoint_epoch"} | machine
    assert run["status"] == "ok" and run["verdict"] in ("healthy", "vanishing", "exploding", "dead")
    assert len(layers) == 2 * 2 and [(l["phase"], l["layer"]) for l in layers] == [
        ("init", 0), ("init", 1), ("final", 0), ("final", 1)]
    for layer in layers:
        # relu: a dead fraction, no saturation; the prediction at init only
        expected_unset = {"saturated_frac"} | ({"sigma_w2"} | {c for c in LAYER_COLUMNS if c.startswith("predicted_")}
                                               if layer["phase"] == "final" else set())
        assert {c for c in LAYER_COLUMNS if layer[c] is None} == expected_unset, layer


def test_probe_rows_are_keyed_by_the_layer_columns():
    """``initsweep probe`` shows the rows the store's ``layers`` table holds: the same keys."""
    result = invoke("probe", "--init", "he", "--activation", "tanh", "--depth", "2", "--width", "4",
                    "--threads", "1", "--batch-size", "16", "-f", "json")
    assert result.exit_code == 0, result.output
    (entry,) = json.loads(result.stdout)
    assert len(entry["layers"]) == 2
    for layer in entry["layers"]:
        assert set(layer) == {"layer", *LAYER_COLUMNS}


@pytest.mark.parametrize(("name", "first", "last", "count"), [
    ("grid.yaml", ["379a6f09b4006688", "76e865fe059ffac7", "b8300ffd9e0e1dd3"], "924b556d712b8e9e", 144),
    ("tutorial.yaml", ["a062a60ae409d86f", "cf244b3f2fb00eaf", "9b6e336e959e91df"], "21169e4fa70a1d36", 200),
])
def test_the_shipped_studies_keep_their_run_ids(name, first, last, count):
    ids = [s.run_id for s in expand(load_config(CONFIGS / name)).runs]
    assert len(ids) == count and ids[:3] == first and ids[-1] == last


def test_the_tutorial_study_before_issue_15_keeps_its_run_ids():
    """Issue 15 grew the tutorial study (5 seeds, an SGD arm, bf16), which changed its plan;
    set back to the old experiment (fp32, Adam at 1e-3, seeds 0 and 1) it plans the 40 runs
    pinned before issue 13, with the same ids: the identity of a run did not change."""
    from initsweep.overrides import load_config_with

    cfg = load_config_with(CONFIGS / "tutorial.yaml", ["train.precision=fp32", "grid.zip=null", "train.optimizer=adam",
                                                       "train.lr=1.0e-3", "train.seeds=[0, 1]"])
    ids = [s.run_id for s in expand(cfg).runs]
    assert len(ids) == 40
    assert ids[:3] == ["0e338443823ac5e2", "3542caec692af7c9", "d10cbf1d012b0ab1"] and ids[-1] == "7b042d3a0a4ea7f6"


def test_run_into_an_older_store_adds_the_missing_columns_and_keeps_its_rows(tmp_path):
    """The migration path: a schema-1 store (without the newest result columns and the
    probe's v2 layer columns) takes a run through the CLI; its old row reads back as it was."""
    from initsweep.results import store as store_module

    # not in this older store: the newest result columns, schema 4's among them
    newest = ["peak_rss_mb", "compile_seconds", "git_commit", "git_dirty", "cpu_model", "gpu_name", "cuda_version",
              "cudnn_version", "torchvision_version", "numpy_version", "warnings", "traceback", "checkpoint",
              "checkpoint_epoch"]
    v2_layers = ["pre_m2", "act_m2", "act_grad_norm2", "sigma_w2", "predicted_pre_m2", "predicted_act_m2",
                 "predicted_act_grad_norm2"]
    runs_now = ", ".join(f"{c} {t}" for c, t in {**SETTING_COLUMNS, **RESULT_COLUMNS}.items())
    layers_now = ", ".join(f"{c} {t}" for c, t in LAYER_COLUMNS.items())
    old_schema = store_module._SCHEMA.replace(runs_now, ", ".join(
        f"{c} {t}" for c, t in {**SETTING_COLUMNS, **RESULT_COLUMNS}.items() if c not in newest)).replace(
        layers_now, ", ".join(f"{c} {t}" for c, t in LAYER_COLUMNS.items() if c not in v2_layers))
    old_schema = old_schema[:old_schema.index("CREATE TABLE IF NOT EXISTS predictions")]  # version 3's tables
    assert old_schema.count("CREATE TABLE") == 4 and "peak_rss_mb" not in old_schema and "pre_m2" not in old_schema
    db = tmp_path / "res" / "initsweep.db"
    db.parent.mkdir()
    with sqlite3.connect(db) as conn:
        conn.executescript(old_schema)
        conn.execute("INSERT INTO meta VALUES ('schema_version', '1')")
        conn.execute("INSERT INTO runs (run_id, sweep, status, init, depth, test_acc, spec_json) "
                     "VALUES ('old', 'ci', 'ok', 'he', 7, 0.5, '{}')")
    conn.close()
    config = write_config(tmp_path / "c.yaml", {"depth": [1]})
    result = invoke("run", str(config), "--results", str(tmp_path / "res"), "--device", "cpu", "--threads", "1", "-q")
    assert result.exit_code == 0, result.output
    conn = sqlite3.connect(db)
    runs = [(r[1], r[2]) for r in conn.execute("PRAGMA table_info(runs)")]
    layers = {r[1] for r in conn.execute("PRAGMA table_info(layers)")}
    reused = {r[1] for r in conn.execute("PRAGMA table_info(reused)")}
    rows = conn.execute("SELECT run_id, status, init, depth, test_acc, peak_rss_mb, numpy_version FROM runs "
                        "ORDER BY row_id").fetchall()
    version = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0]
    tags = [r[1] for r in conn.execute("PRAGMA table_info(tags)")]
    predictions = [r[1] for r in conn.execute("PRAGMA table_info(predictions)")]
    conn.close()
    assert dict(runs) == RUN_COLUMNS and len(runs) == len(RUN_COLUMNS)  # the missing ones added, typed
    assert layers == {"row_id", "run_id", "phase", "layer", *LAYER_COLUMNS} and version == "4"
    assert tags == ["row_id", "tag", "note", "added_at"]  # the tables schema 3 added
    assert predictions == ["row_id", "run_id", "predicted", "target"]
    assert reused == {"sweep", "run_id", "row_id", "reused_at"}  # v3's table, created on the first write
    assert len(rows) == 2 and rows[0] == ("old", "ok", "he", 7, 0.5, None, None)
    assert rows[1][1] == "ok" and rows[1][3] == 1 and rows[1][5] is not None and rows[1][6] == np.__version__
