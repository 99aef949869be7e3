"""The grid language through the CLI: ``zip`` (settings that vary together), a list of grids
(their union, merged by run id), ``exclude`` over both, and ``-S/--set KEY=VALUE``
overrides on plan, run and probe (validated like the file, naming the override)."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from initsweep.cli import app
from initsweep.errors import ConfigError, OptionError
from initsweep.overrides import load_config_with

REPO = Path(__file__).resolve().parents[1]
runner = CliRunner()
TINY = {"dataset": "mnist-sample", "train_limit": 256, "test_limit": 256}
ZIP = [{"init": "he", "activation": "relu"}, {"init": "xavier_uniform", "activation": "tanh"}]


def write(path: Path, grid, **extra) -> Path:
    path.write_text(yaml.safe_dump({"name": "g", "data": TINY, "model": {"width": 4, "head": "flatten"},
                                    "train": {"epochs": 1, "batch_size": 64}, "grid": grid,
                                    "diagnostics": {"enabled": False}, **extra}, sort_keys=False))
    return path


def plan_json(*args: str) -> dict:
    result = runner.invoke(app, ["plan", *args, "-f", "json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def points(data: dict) -> list[tuple]:
    return [tuple((k, v) for k, v in run.items() if k not in ("run_id", "params", "macs_per_sample",
                                                               "train_samples")) for run in data["runs"]]


def errors(*args: str) -> list[str]:
    """A command that must fail on bad input: exit 2, only error lines, no traceback."""
    result = runner.invoke(app, list(args))
    assert result.exit_code == 2, result.output
    assert result.stdout == "" and "Traceback" not in result.output
    return result.stderr.strip().splitlines()


# ---------------------------------------------------------------- zip and lists of grids


def test_zip_is_crossed_with_the_other_axes(tmp_path):
    """The issue's example: 2 pairs x 3 depths = 6 points, not 2 x 2 x 3; the pairs stay paired."""
    data = plan_json(str(write(tmp_path / "z.yaml", {"depth": [2, 8, 20], "zip": ZIP})))
    assert (data["n_points"], data["n_runs"], data["n_duplicates"]) == (6, 6, 0)
    assert points(data) == [(("depth", d), ("init", i), ("activation", a), ("seed", 0))
                            for d in (2, 8, 20) for i, a in (("he", "relu"), ("xavier_uniform", "tanh"))]
    assert data["axes"] == {"depth": [2, 8, 20], "init": ["he", "xavier_uniform"], "activation": ["relu", "tanh"]}
    assert data["grids"] == [{"where": "grid", "axes": {"depth": [2, 8, 20]}, "zip": ZIP, "n_points": 6, "n_runs": 6}]


def test_zip_runs_are_the_runs_of_the_same_points_written_out(tmp_path):
    """A zipped point is the same experiment as that point written as plain axes: same run id."""
    zipped = plan_json(str(write(tmp_path / "z.yaml", {"depth": [2, 8], "zip": ZIP})))
    ids = set()
    for pair in ZIP:
        one = plan_json(str(write(tmp_path / "one.yaml", {"depth": [2, 8], **{k: [v] for k, v in pair.items()}})))
        ids |= {run["run_id"] for run in one["runs"]}
    assert {run["run_id"] for run in zipped["runs"]} == ids and len(ids) == 4


def test_a_list_of_grids_is_their_union_with_duplicates_merged(tmp_path):
    grids = [{"depth": [1, 2], "init": ["he", "xavier_uniform"]},  # 4 points
             {"depth": [2, 3], "zip": [{"init": "he", "activation": "relu"}]}]  # 2 points, depth 2 + he already planned
    path = write(tmp_path / "u.yaml", grids, train={"epochs": 1, "batch_size": 64, "seeds": [0, 1]})
    data = plan_json(str(path))
    assert (data["n_points"], data["n_duplicates"], data["n_runs"]) == (12, 2, 10)
    assert [(g["where"], g["n_points"], g["n_runs"]) for g in data["grids"]] == [("grid[0]", 8, 8), ("grid[1]", 4, 2)]
    assert "2 run(s) of grid[1] were already planned by an earlier grid and were merged" in data["notes"]
    # every run shows every axis of the union; a grid that does not sweep one shows the config's own
    assert points(data)[-2:] == [(("depth", 3), ("init", "he"), ("activation", "relu"), ("seed", s)) for s in (0, 1)]
    assert points(data)[0] == (("depth", 1), ("init", "he"), ("activation", "relu"), ("seed", 0))
    table = runner.invoke(app, ["plan", str(path)])
    assert table.exit_code == 0, table.output
    assert "2 grids, 12 points x seeds, 0 excluded, 2 merged -> 10 runs" in table.stdout
    assert "grid[1]: 4 points x seeds, 2 new run(s)" in table.stdout
    assert "zip: init=he activation=relu  (1)" in table.stdout


def test_exclude_works_across_zip_and_grids(tmp_path):
    grids = [{"depth": [2, 8], "zip": ZIP}, {"depth": [2], "init": ["orthogonal"]}]
    data = plan_json(str(write(tmp_path / "x.yaml", grids, exclude=[{"activation": "tanh", "depth": 8},
                                                                    {"init": "orthogonal"}])))
    assert data["n_excluded"] == 2 and data["n_runs"] == 3
    assert points(data) == [(("depth", 2), ("init", "he"), ("activation", "relu"), ("seed", 0)),
                            (("depth", 2), ("init", "xavier_uniform"), ("activation", "tanh"), ("seed", 0)),
                            (("depth", 8), ("init", "he"), ("activation", "relu"), ("seed", 0))]


@pytest.mark.parametrize("grid, lines", [
    ([{"depth": [2]}, {"zip": [{"init": "he"}, {"init": "hee", "activation": "relu"}]}],
     ["grid[1].zip[1].init: unknown initializer 'hee' — did you mean 'he'?"]),
    ([{"depth": [2]}, {"depth": 3}], ["grid[1].depth: input should be a valid list (got 3)"]),
    ([], ["grid: empty list (give at least one grid, or leave grid out)"]),
    ({"zip": [{"init": "he"}], "init": ["orthogonal"]}, ["grid.init: 'init' is already an axis"]),
    ({"zip": [{"dpeth": 2}, {}]}, ["grid.zip[0].dpeth: unknown axis 'dpeth' — did you mean 'depth'?",
                                   "grid.zip[1]: empty entry (name the settings that vary together)"]),
    ({"zip": []}, ["grid.zip: empty zip (give at least one entry)"]),
    ({"zip": "he"}, ["grid.zip: input should be a valid list (got 'he')"]),
    # an entry's settings are checked together: momentum is refused with adam, in its entry
    ({"zip": [{"optimizer": "sgd", "momentum": 0.9}, {"optimizer": "adam", "momentum": 0.9}]},
     ["grid.zip[1]: momentum/nesterov are sgd options (optimizer is adam)"]),
])
def test_grid_errors_name_the_list_index(tmp_path, grid, lines):
    path = write(tmp_path / "bad.yaml", grid)
    assert errors("plan", str(path)) == [f"error: {path}: {line}" for line in lines]


def test_grid_problems_come_in_order_with_the_others(tmp_path):
    """The grid's shape is checked outside pydantic; its lines still come among the rest, in
    the order of the keys (model, grid, diagnostics, then unknown keys)."""
    path = write(tmp_path / "bad.yaml", [{"depth": 3}, 4], model={"wdith": 4}, diagnostics={"x": 1}, extra=1)
    assert [line.split(": ")[2] for line in errors("plan", str(path))] == [
        "model.wdith", "grid[0].depth", "grid[1]", "diagnostics.x", "extra"]


def test_the_paired_example_config_plans():
    data = plan_json(str(REPO / "configs" / "paired.yaml"))
    assert data["n_runs"] == 9 and data["grids"][0]["axes"] == {"depth": [2, 8, 16]}
    assert [(run["init"], run["activation"]) for run in data["runs"][:3]] == [
        ("he", "relu"), ("xavier_uniform", "tanh"), ("lecun_normal", "selu")]


# ---------------------------------------------------------------- -S/--set


def test_set_forms_on_plan(tmp_path):
    path = write(tmp_path / "s.yaml", {"depth": [1, 2], "init": ["he", "orthogonal"]})

    def ids(*sets: str) -> list[str]:
        return [run["run_id"] for run in plan_json(str(path), *sets)["runs"]]

    data = plan_json(str(path), "-S", "name=renamed", "-S", "grid.depth=[3, 4, 5]", "-S", "grid.lr=1e-3,3e-3",
                     "--set", "grid.init=null")
    assert data["sweep"] == "renamed"
    assert data["axes"] == {"depth": [3, 4, 5], "lr": [0.001, 0.003]} and data["n_runs"] == 6
    assert ids("-S", "grid.depth=3,4,5") == ids("-S", "grid.depth=[3, 4, 5]")
    assert ids("-S", "grid.depth=2") == ids("-S", "grid.depth=[2]")
    # the commas of a mapping are not the axis's: two values
    mixed = plan_json(str(path), "-S", "grid.activation={name: leaky_relu, negative_slope: 0.1},relu")
    assert mixed["axes"]["activation"] == ["leaky_relu(negative_slope=0.1)", "relu"]
    # an override changes run ids as the same setting in the file does
    base = ids()
    assert not set(ids("-S", "train.lr=0.01")) & set(base)
    same = write(tmp_path / "same.yaml", {"depth": [1, 2], "init": ["he", "orthogonal"]},
                 train={"epochs": 1, "batch_size": 64, "lr": 0.01})
    assert ids("-S", "train.lr=0.01") == [run["run_id"] for run in plan_json(str(same))["runs"]]
    assert ids("-S", "model.width=4") == base  # the file's own value: nothing changes
    # the whole grid, as a list of two: lr 0.001 is the default, so depth 1 is the same run twice
    union = plan_json(str(path), "-S", "grid=[{depth: [1]}, {depth: [1, 2], lr: [0.001]}]")
    assert (len(union["grids"]), union["n_points"], union["n_duplicates"], union["n_runs"]) == (2, 3, 1, 2)


@pytest.mark.parametrize("setting, line", [
    ("train.lrr=0.1", "--set train.lrr=0.1: unknown key 'lrr' — did you mean 'lr'?"),
    ("train.lr=-1", "--set train.lr=-1: input should be greater than 0 (got -1)"),
    ("grid.depth=2,x", "--set grid.depth=2,x: grid.depth[1]: expected an integer, got 'x' (a string)"),
    ("grid.dpeth=null", "--set grid.dpeth=null: no grid axis 'dpeth' to remove — did you mean 'depth'?"),
    ("train.lr", "--set train.lr: expected KEY=VALUE, e.g. train.lr=0.01"),
    ("=0.1", "--set =0.1: empty key: expected KEY=VALUE, e.g. train.lr=0.01"),
    ("train..lr=1", "--set train..lr=1: empty part in the key 'train..lr' (a dotted path such as train.lr)"),
    ("train.lr=[1,", "--set train.lr=[1,: the value is not valid YAML: expected the node content, "
                     "but found '<stream end>'"),
    ("name.x=1", "--set name.x=1: 'name' is not a mapping in the config, so it has no 'x' (set 'name' itself)"),
])
def test_bad_set_is_one_line_naming_it(tmp_path, setting, line):
    path = write(tmp_path / "s.yaml", {"depth": [1, 2]})
    assert errors("plan", str(path), "-S", setting) == [f"error: {line}"]


def test_set_problems_say_whether_the_file_or_the_override_is_wrong(tmp_path):
    path = write(tmp_path / "s.yaml", {"depth": [1, 2]}, exclude=[{"depth": 2}])
    # a problem of the file and the override together names both
    assert errors("plan", str(path), "-S", "train.momentum=0.9") == [
        f"error: {path} with --set train.momentum=0.9: train: momentum/nesterov are sgd options (optimizer is adam)"]
    assert errors("plan", str(path), "-S", "grid.depth=null") == [
        f"error: {path} with --set grid.depth=null: exclude[0].depth: unknown axis 'depth' (grid axes: none)"]
    # in a list of grids an axis is set in every grid; its problem names the grid
    grids = write(tmp_path / "l.yaml", [{"depth": [1]}, {"width": [4]}])
    assert errors("plan", str(grids), "-S", "grid.lr=0") == [
        "error: --set grid.lr=0: grid[0].lr[0]: input should be greater than 0 (got 0)",
        "error: --set grid.lr=0: grid[1].lr[0]: input should be greater than 0 (got 0)"]
    # a problem of the file alone still names the file
    bad = write(tmp_path / "b.yaml", {"depth": [1]}, model={"width": 4, "wdith": 4})
    assert errors("plan", str(bad), "-S", "train.lr=0.1") == [
        f"error: {bad}: model.wdith: unknown key 'wdith' — did you mean 'width'?"]


def test_set_reaches_the_stored_runs(tmp_path):
    """One tiny run: the override is in the run ids, the rows and each run's stored spec."""
    path = write(tmp_path / "r.yaml", {"depth": [1]})
    sets = ["-S", "name=overridden", "-S", "train.lr=0.01", "-S", "grid.init=he,orthogonal"]
    planned = {run["run_id"] for run in plan_json(str(path), *sets)["runs"]}
    result = runner.invoke(app, ["run", str(path), "--results", str(tmp_path / "res"), "--workers", "1",
                                 "--threads", "1", "--quiet", *sets])
    assert result.exit_code == 0, result.output
    with sqlite3.connect(tmp_path / "res" / "initsweep.db") as conn:
        rows = conn.execute("SELECT run_id, sweep, lr, init, spec_json FROM runs WHERE status = 'ok'").fetchall()
    assert {r[0] for r in rows} == planned and len(rows) == 2
    assert {r[1:4] for r in rows} == {("overridden", 0.01, "he"), ("overridden", 0.01, "orthogonal")}
    for *_, spec in rows:
        spec = json.loads(spec)
        assert (spec["sweep"], spec["train"]["lr"], spec["model"]["depth"]) == ("overridden", 0.01, 1)


def test_set_on_probe(tmp_path):
    path = write(tmp_path / "p.yaml", {"depth": [1, 2], "zip": ZIP})
    result = runner.invoke(app, ["probe", str(path), "--threads", "1", "--batch-size", "8", "-f", "json",
                                 "-S", "grid.depth=null", "-S", "model.depth=1", "-S", "model.width=6"])
    assert result.exit_code == 0, result.output
    entries = json.loads(result.stdout)
    assert [(e["point"], e["settings"]["depth"], e["settings"]["width"]) for e in entries] == [
        ({"init": "he", "activation": "relu"}, 1, 6), ({"init": "xavier_uniform", "activation": "tanh"}, 1, 6)]
    assert errors("probe", "-S", "model.depthh=3") == [
        "error: --set model.depthh=3: unknown key 'depthh' — did you mean 'depth'?"]
    # a probe flag replaces its setting inside zip entries and in every grid of a list too
    grids = write(tmp_path / "l.yaml", [{"depth": [1], "zip": ZIP}, {"depth": [1], "init": ["orthogonal"]}])
    result = runner.invoke(app, ["probe", str(grids), "--threads", "1", "--batch-size", "8", "-f", "json",
                                 "--init", "lecun_normal"])
    assert result.exit_code == 0, result.output
    assert [(e["settings"]["init_label"], e["settings"]["activation_label"]) for e in json.loads(result.stdout)] == [
        ("lecun_normal", "relu"), ("lecun_normal", "tanh")]  # grid[1]'s one point is grid[0]'s first: merged


def test_overrides_from_python_name_the_parameter(tmp_path):
    """The library says ``set_=...`` (the CLI, ``--set ...``): it never writes a flag."""
    path = write(tmp_path / "s.yaml", {"depth": [1, 2]})
    with pytest.raises(ConfigError) as info:
        load_config_with(path, ["train.lrr=0.1"])
    assert str(info.value) == "set_='train.lrr=0.1': unknown key 'lrr' — did you mean 'lr'?"
    with pytest.raises(OptionError, match=r"^set_='train.lr': expected KEY=VALUE"):
        load_config_with(path, ["train.lr"])
    assert load_config_with(path, ["train.lr=0.01", "grid.depth=null"]).train.lr == 0.01


@pytest.mark.parametrize("command", ["plan", "run", "probe"])
def test_set_is_on_run_plan_and_probe(command):
    result = runner.invoke(app, [command, "-h"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    assert "--set" in result.stdout and "-S" in result.stdout and "grid.AXIS=[a, b]" in result.stdout
