"""Wrong results a new user hit, each through the real CLI: strict config types, ``plan`` and
``run`` agreeing on the data and the run ids offline, no silent swap of one dataset for
another, report groups of sweeps that share run ids, and baselines that differ in a setting."""

from __future__ import annotations

import json
import sqlite3
from io import StringIO
from pathlib import Path

import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from initsweep import data
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


# ---------------------------------------------------------------------- data: plan == run, no silent swap


@pytest.fixture
def no_data(tmp_path, monkeypatch) -> Path:
    """An empty data root, and no system-wide dataset folder (Debian's fashion-mnist), so the
    data is missing on any machine; configs here set ``download: false``: no network."""
    monkeypatch.setattr(data, "SYSTEM_DIRS", {"mnist": (), "fashion-mnist": ()})
    root = tmp_path / "no-data"
    monkeypatch.setenv(data.ROOT_ENV, str(root))
    return root


def stored(results: Path, sql: str) -> list[tuple]:
    with sqlite3.connect(results / "initsweep.db") as conn:
        return conn.execute(sql).fetchall()


def test_plan_lists_the_run_ids_run_stores_when_mnist_falls_back(tmp_path, no_data):
    config = write_config(tmp_path / "c.yaml", data={"dataset": "mnist", "download": False}, grid={"depth": [1, 2]})
    planned = invoke("plan", config, "-f", "json")
    assert planned.exit_code == 0, planned.output
    summary = json.loads(planned.stdout)
    assert (summary["dataset"], summary["dataset_requested"]) == ("mnist-sample", "mnist")
    assert summary["data_location"].endswith("mnist_5k.npz")
    assert str(no_data / "MNIST" / "raw") in summary["data_fallback"] and "data.download is false" in summary["data_fallback"]
    table = invoke("plan", config)
    assert table.exit_code == 0 and "data fallback:" in table.stdout and "5,000-digit MNIST sample" in table.stdout

    results = tmp_path / "res"
    ran = invoke("run", config, "--results", results, "--device", "cpu")
    assert ran.exit_code == 0, ran.output
    ids = {row[0] for row in stored(results, "SELECT run_id FROM runs")}
    assert ids == {run["run_id"] for run in summary["runs"]} and len(ids) == 2
    shown = invoke("show", summary["runs"][0]["run_id"], "--results", results)
    assert shown.exit_code == 0, shown.output
    # --offline never substitutes: plan refuses exactly as run does
    lines = [one_error_line(invoke(cmd, config, *extra, "--offline"))
             for cmd, extra in (("plan", ()), ("run", ("--results", tmp_path / "other")))]
    assert lines[0] == lines[1] and "offline: no download attempted" in lines[0]


def test_a_different_dataset_is_never_substituted_silently(tmp_path, no_data):
    config = write_config(tmp_path / "c.yaml", data={"dataset": "fashion-mnist", "download": False})
    results = tmp_path / "res"
    for args in (("plan", config), ("run", config, "--results", results, "--device", "cpu")):
        line = one_error_line(invoke(*args))
        assert line.startswith(f"error: fashion-mnist IDX files not found in {no_data / 'FashionMNIST' / 'raw'}, "
                               f"{no_data / 'fashion-mnist'}; data.download is false"), line
        assert line.endswith("set data.fallback: mnist-sample)"), line
    assert not (results / "initsweep.db").exists() or stored(results, "SELECT COUNT(*) FROM runs") == [(0,)]


@pytest.fixture
def fashion_on_digits(tmp_path, no_data) -> Path:
    """A results folder whose runs asked for Fashion-MNIST and, as their config allowed, trained
    on the MNIST sample: 2 inits x 2 depths, one seed."""
    config = write_config(tmp_path / "c.yaml", name="fm",
                          data={"dataset": "fashion-mnist", "download": False, "fallback": "mnist-sample"},
                          grid={"init": ["he", "std_normal"], "depth": [1, 2]})
    results = tmp_path / "res"
    ran = invoke("run", config, "--results", results, "--device", "cpu")
    assert ran.exit_code == 0, ran.output
    assert "instead of fashion-mnist" in ran.stderr and "data fallback" in ran.stdout
    rows = stored(results, "SELECT dataset, dataset_requested FROM runs WHERE status = 'ok'")
    assert rows == [("mnist-sample", "fashion-mnist")] * 4
    return results


MARK = "fashion-mnist→mnist-sample"


def test_every_report_format_marks_runs_on_substitute_data(fashion_on_digits, tmp_path):
    res = fashion_on_digits
    for view in ((), ("--by", "init,depth")):  # the pivot, then the flat table
        out = invoke("report", "--results", res, *view)
        assert out.exit_code == 0, out.output
        assert f"§ trained on other data than the config asked for (data.fallback): {MARK}" in out.stdout
    pivot = invoke("report", "--results", res).stdout
    assert sum(line.count("§") for line in pivot.splitlines() if line.startswith("│")) == 4
    flat = invoke("report", "--results", res, "--by", "init,depth").stdout
    assert flat.count(f"§ {MARK}") == 4
    for fmt in ("csv", "json"):
        frame = pd.read_csv(StringIO(invoke("report", "-r", res, "-f", fmt).stdout)) if fmt == "csv" else \
            pd.DataFrame(json.loads(invoke("report", "-r", res, "-f", fmt).stdout))
        assert frame["data_fallback"].tolist() == [MARK] * 4
    wide = pd.read_csv(StringIO(invoke("report", "-r", res, "--pivot", "init:depth", "-f", "csv").stdout))
    assert wide["data_fallback"].tolist() == [MARK] * 2
    markdown = invoke("report", "-r", res, "-f", "markdown").stdout
    assert markdown.count("§") == 4 + 4 + 1  # pivot cells, table rows, the footnote
    page = invoke("report", "-r", res, "-o", tmp_path / "r.html")
    assert page.exit_code == 0, page.output
    html = (tmp_path / "r.html").read_text()
    assert html.count(f"§ {MARK}") == 4 and "trained on other data than the config asked for" in html
    exported = pd.read_csv(StringIO(invoke("export", "-r", res).stdout))
    assert set(exported["dataset_requested"]) == {"fashion-mnist"} and exported["data_fallback"].notna().all()


# ---------------------------------------------------------------------- sweeps that share run ids


@pytest.fixture(scope="module")
def two_sweeps(tmp_path_factory) -> Path:
    """One results folder, one config run under two sweep names: ``a`` with depths 1 and 2,
    ``b`` with depth 2 only, so b's 2 runs have the same ids as 2 of a's 4 (6 rows, 4 ids)."""
    root = tmp_path_factory.mktemp("shared")
    results = root / "res"
    for name, depths in (("a", [1, 2]), ("b", [2])):
        config = write_config(root / f"{name}.yaml", name=name, grid={"init": ["he", "std_normal"], "depth": depths})
        # --fresh: b trains its own rows rather than reusing a's finished ones
        ran = invoke("run", config, "--results", results, "--device", "cpu", *(["--fresh"] if name == "b" else []))
        assert ran.exit_code == 0, ran.output
    assert stored(results, "SELECT COUNT(*), COUNT(DISTINCT run_id) FROM runs") == [(6, 4)]
    return results


def test_grouping_by_sweep_keeps_every_sweeps_runs(two_sweeps):
    out = invoke("report", "--results", two_sweeps, "--by", "sweep,init,activation", "-f", "json")
    assert out.exit_code == 0, out.output
    groups = {(r["sweep"], r["init"]): (r["runs"], r["n"]) for r in json.loads(out.stdout)}
    assert groups == {("a", "he"): (2, 2), ("a", "std_normal"): (2, 2), ("b", "he"): (1, 1), ("b", "std_normal"): (1, 1)}
    # b's he group is b's own depth-2 he run
    (acc,), = stored(two_sweeps, "SELECT test_acc FROM runs WHERE sweep = 'b' AND init = 'he'")
    b_he = next(r for r in json.loads(out.stdout) if (r["sweep"], r["init"]) == ("b", "he"))
    assert b_he["mean"] == acc


def test_report_headers_say_what_they_count_when_sweeps_share_ids(two_sweeps, tmp_path):
    per_sweep = "6 runs (4 distinct ids: a run id in several sweeps counts in each)"
    once = "4 runs (6 stored: a run id in several sweeps counts once)"
    for by, header in (("sweep,init,activation", per_sweep), ("init,activation", once)):
        table = invoke("report", "--results", two_sweeps, "--by", by)
        title = " ".join(table.stdout.split("┏")[0].split())  # rich wraps a long title
        assert table.exit_code == 0 and title == f"test_acc per group — {header}, statistics over seeds", \
            table.output
        groups = 4 if by.startswith("sweep") else 2
        markdown = invoke("report", "--results", two_sweeps, "--by", by, "-f", "markdown").stdout
        assert f"{header} in {groups} groups; statistics over seeds." in markdown
        page = tmp_path / f"{groups}.html"
        assert invoke("report", "--results", two_sweeps, "--by", by, "-o", page).exit_code == 0
        assert f"{header} in {groups} groups" in page.read_text()
    counted = json.loads(invoke("report", "--results", two_sweeps, "--by", "init,activation", "-f", "json").stdout)
    assert [r["runs"] for r in counted] == [2, 2]  # a run in both sweeps counts once


# ---------------------------------------------------------------------- baselines that differ in a setting


@pytest.fixture(scope="module")
def lr_stores(tmp_path_factory) -> tuple[Path, Path]:
    """Current runs at one lr (0.001), and a baseline folder that ran the same grid at two."""
    root = tmp_path_factory.mktemp("baseline")
    grid = {"init": ["he", "std_normal"]}
    current = write_config(root / "cur.yaml", name="cur", train={"lr": 0.001}, grid=grid)
    base = write_config(root / "base.yaml", name="base", grid={**grid, "lr": [0.001, 0.003]})
    for config, results in ((current, root / "cur"), (base, root / "base")):
        ran = invoke("run", config, "--results", results, "--device", "cpu")
        assert ran.exit_code == 0, ran.output
    return root / "cur", root / "base"


def test_a_baseline_that_differs_in_lr_is_refused_naming_it(lr_stores):
    current, base = lr_stores
    line = one_error_line(invoke("report", "--results", current, "--baseline", base))
    assert line == ("error: --baseline: lr differs: the runs have lr 0.001, the baseline 0.001, 0.003, and lr is "
                    "not a grouping column, so a group would average over it (narrow both sides with --where, "
                    "or group by it: --by init,activation,depth,lr)")
    exported = base.parent / "base.csv"
    assert invoke("export", "--results", base, "--output", exported).exit_code == 0
    assert one_error_line(invoke("report", "--results", current, "--baseline", exported)) == line


def test_a_baseline_matched_on_every_setting_compares(lr_stores):
    current, base = lr_stores
    means = dict(stored(base, "SELECT init, test_acc FROM runs WHERE lr = 0.001"))
    narrowed = invoke("report", "--results", current, "--baseline", base, "--where", "lr == 0.001", "-f", "json")
    assert narrowed.exit_code == 0, narrowed.output
    rows = json.loads(narrowed.stdout)
    assert [(r["init"], r["n"], r["base_n"]) for r in rows] == [("he", 1, 1), ("std_normal", 1, 1)]
    assert {r["init"]: r["base_mean"] for r in rows} == means  # each group against its own lr's run
    grouped = invoke("report", "--results", current, "--baseline", base, "--by", "init,lr", "-f", "json")
    assert grouped.exit_code == 0, grouped.output
    changes = {(r["init"], r["lr"]): r["change"] for r in json.loads(grouped.stdout)}
    assert {k: v for k, v in changes.items() if k[1] == 0.003} == {("he", 0.003): "missing",
                                                                      ("std_normal", 0.003): "missing"}
    assert all(v != "missing" for k, v in changes.items() if k[1] == 0.001) and len(changes) == 4
