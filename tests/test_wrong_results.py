"""Wrong results a new user hit, each through the real CLI: strict config types, ``plan`` and
``run`` agreeing on the data and the run ids offline, no silent swap of one dataset for
another, report groups of sweeps that share run ids, and baselines that differ in a setting."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from initsweep.cli import app

runner = CliRunner()
TINY = {"dataset": "mnist-sample", "train_limit": 256, "test_limit": 256, "val_fraction": 0.1}


def write_config(path: Path, name: str = "t", data: dict | None = None, model: dict | None = None,
                 train: dict | None = None, grid: dict | None = None) -> Path:
    cfg = {"name": name, "data": {**TINY, **(data or {})},
           "model": {"arch": "plain", "width": 4, "head": "flatten", "depth": 1, **(model or {})},
           "train": {"epochs": 1, "batch_size": 64, "seeds": [0], **(train or {})},
           "diagnostics": {"enabled": False}, **({"grid": grid} if grid else {})}
    path.write_text(yaml.safe_dump(cfg))
    return path


def invoke(*args: str, env: dict | None = None):
    return runner.invoke(app, [str(a) for a in args], env={"NO_COLOR": "1", "COLUMNS": "200", **(env or {})})


def one_error_line(result) -> str:
    """The single ``error: ...`` line of a refused command (exit 2, no traceback)."""
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output
    return lines[0]


# ---------------------------------------------------------------------- strict config types


@pytest.mark.parametrize("text,line", [
    ("model: {width: true}", "model.width: expected an integer, got true (a boolean)"),
    ("model: {width: '4'}", "model.width: expected an integer, got '4' (a string: write it without quotes)"),
    ("train: {lr: true}", "train.lr: expected a number, got true (a boolean)"),
    ("train: {epochs: 2.0}", "train.epochs: expected an integer, got 2.0 (a float)"),
    ("train: {seeds: [0, false]}", "train.seeds[1]: expected an integer, got false (a boolean)"),
    ("data: {download: 'no'}", "data.download: expected true or false, got 'no' (a string)"),
    ("grid: {width: [4, true]}", "grid.width[1]: expected an integer, got true (a boolean)"),
    ("grid: {lr: [0.1, false]}", "grid.lr[1]: expected a number, got false (a boolean)"),
])
def test_plan_refuses_a_value_of_the_wrong_type(tmp_path, text, line):
    config = tmp_path / "bad.yaml"
    config.write_text(f"name: t\n{text}\n")
    assert one_error_line(invoke("plan", config)) == f"error: {config}: {line}"


def test_numbers_written_the_usual_ways_still_plan(tmp_path):
    """An int where a float goes (``lr: 1``) and ``1e-3`` (a string to PyYAML) are numbers."""
    config = tmp_path / "ok.yaml"
    config.write_text("name: t\ndata: {dataset: mnist-sample}\ntrain: {lr: 1, weight_decay: 5E-4}\n"
                      "grid: {lr: [1e-3, 2]}\n")
    result = invoke("plan", config, "-f", "json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["axes"]["lr"] == [0.001, 2.0]
