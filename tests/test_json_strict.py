"""Every JSON the tool writes is strict (RFC 8259): NaN and infinities become null, never
the bare ``NaN``/``Infinity`` tokens that jq, JavaScript and most parsers reject."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_ci import invoke, write_config

from initsweep.jsontext import json_text

ROOT = Path(__file__).resolve().parents[1]


def strict(text: str):
    """``json.loads`` as a strict parser: Python's accepts NaN/Infinity unless told not to."""
    def refuse(token: str):
        raise AssertionError(f"not strict JSON: bare {token} token")

    return json.loads(text, parse_constant=refuse)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """Two single-seed runs with diagnostics: a report's std is NaN (one seed), layers present."""
    tmp = tmp_path_factory.mktemp("json")
    config = write_config(tmp / "c.yaml", {"depth": [1, 2]}, diagnostics={"enabled": True, "batch_size": 16})
    result = invoke("run", str(config), "--results", str(tmp / "res"), "--device", "cpu", "--workers", "1",
                    "--threads", "1", "--quiet")
    assert result.exit_code == 0, result.output
    return tmp / "res"


def test_probe_of_a_depth_100_n01_relu_net_writes_null_where_float32_overflowed():
    # N(0, 1) weights multiply the second moment by ~fan_in/2 = 18 a layer: float32 overflows
    # near layer 30 and every statistic after it is inf/NaN.
    result = invoke("probe", "--arch", "plain", "--depth", "100", "--width", "4", "--init", "std_normal",
                    "--activation", "relu", "--batch-size", "4", "--threads", "1", "--format", "json")
    assert result.exit_code == 0, result.output
    (entry,) = strict(result.stdout)
    assert entry["verdict"] == "exploding"
    assert len(entry["layers"]) == 100
    assert entry["layers"][0]["act_std"] is not None and entry["layers"][99]["act_std"] is None
    assert entry["loss"] is None


@pytest.mark.parametrize("args", [
    ("plan", "configs/smoke.yaml", "--format", "json"),
    ("list-inits", "--format", "json"),
    ("list-activations", "--format", "json"),
])
def test_commands_without_a_store_write_strict_json(args, monkeypatch):
    monkeypatch.chdir(ROOT)
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    assert strict(result.stdout)


def test_report_export_and_show_write_strict_json(store, tmp_path):
    report = invoke("report", "--results", str(store), "--by", "depth", "--format", "json")
    assert report.exit_code == 0, report.output
    groups = strict(report.stdout)
    assert len(groups) == 2 and all(g["std"] is None for g in groups)  # one seed: std unknown, null
    export = invoke("export", "--results", str(store), "--format", "json")
    assert export.exit_code == 0 and len(strict(export.stdout)) == 2
    assert invoke("report", "--results", str(store), "--by", "depth", "-o", str(tmp_path / "r.json")).exit_code == 0
    assert strict((tmp_path / "r.json").read_text()) == groups
    run_id = strict(export.stdout)[0]["run_id"]
    show = invoke("show", run_id, "--results", str(store), "--format", "json")
    assert show.exit_code == 0, show.output
    detail = strict(show.stdout)
    assert detail["run"]["run_id"] == run_id and len(detail["epochs"]) == 1 and detail["layers"]


def test_json_text_turns_every_missing_or_non_finite_value_into_null():
    data = {"nan": float("nan"), "inf": np.float32("inf"), "na": pd.NA, "nat": pd.NaT,
            "array": np.array([1.5, -np.inf]), "nested": [{"x": (math.inf, 2)}], "int": np.int64(3),
            "exact": 0.1 + 0.2}
    assert strict(json_text(data)) == {"nan": None, "inf": None, "na": None, "nat": None, "array": [1.5, None],
                                       "nested": [{"x": [None, 2]}], "int": 3, "exact": 0.30000000000000004}
