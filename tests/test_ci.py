"""CI support: shards, merge, time budgets, JUnit XML and Markdown summaries."""

from __future__ import annotations

import sqlite3
import xml.etree.ElementTree as ET
from pathlib import Path

import pandas as pd
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from initsweep.sweep.planner import in_shard, parse_duration, parse_shard
from initsweep.cli import app
from initsweep.config import expand, validate
from initsweep.errors import EXIT_BUDGET, InitsweepError
from initsweep.results.read import load_results
from tolerances import assert_same_rows

runner = CliRunner()
TINY = {"dataset": "mnist-sample", "train_limit": 256, "test_limit": 256}
METRICS = ["status", "test_acc", "test_loss", "steps"]


def write_config(path: Path, grid: dict, **extra) -> Path:
    path.write_text(yaml.safe_dump({"name": "ci", "data": TINY,
                                    "model": {"arch": "plain", "width": 4, "head": "flatten"},
                                    "train": {"epochs": 1, "batch_size": 64}, "grid": grid,
                                    "diagnostics": {"enabled": False}, **extra}))
    return path


def invoke(*args: str, env: dict | None = None):
    return runner.invoke(app, list(args), env=env)


@settings(max_examples=60, deadline=None)
@given(st.dictionaries(st.sampled_from(["depth", "width", "lr", "batch_size"]),
                       st.lists(st.integers(1, 9), min_size=1, max_size=4, unique=True), min_size=1, max_size=3),
       st.lists(st.integers(0, 50), min_size=1, max_size=3, unique=True), st.integers(1, 7))
def test_shards_partition_any_grid_exactly(axes, seeds, n):
    grid = {k: [v * 1e-3 for v in vals] if k == "lr" else vals for k, vals in axes.items()}
    plan = expand(validate({"name": "p", "data": TINY, "train": {"seeds": seeds}, "grid": grid}))
    ids = [r.run_id for r in plan.runs]
    shards = [{i for i in ids if in_shard(i, k, n)} for k in range(1, n + 1)]
    assert set().union(*shards) == set(ids)
    assert sum(len(s) for s in shards) == len(ids)  # disjoint


def test_parse_shard_and_duration():
    assert parse_shard("2/4") == (2, 4) and parse_shard(" 1 / 1 ") == (1, 1)
    # from Python the error names the parameter; the CLI prints the flag the user typed
    for bad in ("0/4", "5/4", "1-4", "", "a/b"):
        with pytest.raises(InitsweepError, match=f"^shard={bad!r}: ") as info:
            parse_shard(bad)
        assert info.value.cli_lines()[0].startswith(f"--shard {bad}: ")
    assert parse_duration("90s") == 90 and parse_duration("15m") == 900 and parse_duration("1h30m") == 5400
    assert parse_duration("2.5h") == 9000 and parse_duration("45") == 45
    for bad in ("15 minutes", "m", "0s", "-5m", "1x"):
        with pytest.raises(InitsweepError, match=f"^time_budget={bad!r}: ") as info:
            parse_duration(bad)
        assert info.value.cli_lines()[0].startswith(f"--time-budget {bad}: ")


def test_shards_then_merge_equal_one_unsharded_sweep_and_merge_is_idempotent(tmp_path):
    config = write_config(tmp_path / "c.yaml", {"depth": [1, 2, 3], "init": ["he", "orthogonal"]})
    for k in (1, 2, 3):
        assert invoke("run", str(config), "--results", str(tmp_path / f"s{k}"), "--shard", f"{k}/3",
                      "--device", "cpu", "--workers", "1", "--threads", "1").exit_code == 0
    assert invoke("run", str(config), "--results", str(tmp_path / "full"), "--device", "cpu", "--workers", "1",
                  "--threads", "1").exit_code == 0
    sources = [str(tmp_path / f"s{k}") for k in (1, 2, 3)]
    first = invoke("merge", *sources, "--into", str(tmp_path / "merged"))
    assert first.exit_code == 0 and "6 run(s) added, 0 already there" in first.stdout
    again = invoke("merge", *sources, "--into", str(tmp_path / "merged"))
    assert again.exit_code == 0 and "0 run(s) added, 6 already there" in again.stdout
    merged = load_results(tmp_path / "merged", history=True)
    shards = pd.concat([load_results(s) for s in sources])
    # merge copies: the merged rows are the shards' rows to the bit
    assert (merged.set_index("run_id").sort_index()[METRICS] == shards.set_index("run_id").sort_index()[METRICS]).all().all()
    # and the shards together are the unsharded sweep: same runs, same numbers up to float noise
    assert_same_rows(merged, load_results(tmp_path / "full"))
    with sqlite3.connect(tmp_path / "merged" / "initsweep.db") as conn:  # curves came along
        assert conn.execute("SELECT COUNT(*) FROM epochs").fetchone()[0] == 6


def test_merge_reports_conflicts_and_keeps_what_was_there(tmp_path):
    """A run finished in two folders with different results is a conflict: reported, exit 1,
    and the target keeps its own row. The conflict is made on purpose (another thread count
    may or may not change the last digits, depending on the CPU): b is a merged copy of a
    whose He run then came out 0.01 better."""
    config = write_config(tmp_path / "c.yaml", {"init": ["he", "orthogonal"]})
    assert invoke("run", str(config), "--results", str(tmp_path / "a"), "--device", "cpu").exit_code == 0
    assert invoke("merge", str(tmp_path / "a"), "--into", str(tmp_path / "b")).exit_code == 0
    a = load_results(tmp_path / "a")
    with sqlite3.connect(tmp_path / "b" / "initsweep.db") as conn:
        changed = conn.execute("UPDATE runs SET test_acc = test_acc + 0.01 WHERE init = 'he'").rowcount
    assert changed == 1
    result = invoke("merge", str(tmp_path / "b"), "--into", str(tmp_path / "a"))
    assert result.exit_code == 1
    conflicts = [line for line in result.stderr.splitlines() if "conflict:" in line]
    assert len(conflicts) == 1 and a.set_index("init").loc["he", "run_id"] in conflicts[0]
    assert "0 run(s) added, 1 already there" in result.stdout
    kept = load_results(tmp_path / "a", history=True)
    assert len(kept) == 2 and list(kept.test_acc) == list(a.test_acc)  # the target's own rows, to the bit


def test_merge_of_something_that_is_not_results_exits_2(tmp_path):
    result = invoke("merge", str(tmp_path / "nothing"), "--into", str(tmp_path / "m"))
    assert result.exit_code == 2 and f"{tmp_path / 'nothing'}: does not exist" in result.stderr


def test_junit_xml_and_markdown_summary(tmp_path):
    config = write_config(tmp_path / "c.yaml", {"init": ["he", "std_normal"], "depth": [2, 20], "lr": [0.001, 10.0]},
                          exclude=[{"init": "he", "lr": 10.0}, {"init": "std_normal", "lr": 0.001},
                                   {"init": "std_normal", "depth": 2}])
    step_summary = tmp_path / "step_summary.md"
    step_summary.write_text("earlier step\n")
    result = invoke("run", str(config), "--results", str(tmp_path / "res"), "--device", "cpu",
                    "--junit", str(tmp_path / "out/junit.xml"), env={"GITHUB_STEP_SUMMARY": str(step_summary)})
    assert result.exit_code == 0, result.output
    root = ET.parse(tmp_path / "out/junit.xml").getroot()
    suite = root.find("testsuite")
    assert suite.get("name") == "ci" and suite.get("tests") == "3" and suite.get("failures") == "1"
    failures = [c for c in suite.iter("testcase") if c.find("failure") is not None]
    assert len(failures) == 1 and "diverged at step 2" in failures[0].find("failure").get("message")
    assert "std_normal" in failures[0].get("name")
    summary = step_summary.read_text()
    assert summary.startswith("earlier step\n")  # appended, not overwritten
    assert "| depth | setting | test_acc | seeds |" in summary and "1 diverged, 2 ok" in summary
    explicit = invoke("run", str(config), "--results", str(tmp_path / "res"), "--summary-md", str(tmp_path / "s.md"),
                      env={"GITHUB_STEP_SUMMARY": str(step_summary)})
    assert "| depth |" in (tmp_path / "s.md").read_text()
    assert step_summary.read_text() == summary  # an explicit file replaces the default target
    assert explicit.exit_code == 0


def test_time_budget_stops_starting_runs_then_the_next_invocation_resumes(tmp_path):
    config = write_config(tmp_path / "c.yaml", {"depth": [1, 2, 3, 4]})
    spent = invoke("run", str(config), "--results", str(tmp_path / "res"), "--time-budget", "0.001", "--device", "cpu")
    assert spent.exit_code == EXIT_BUDGET, spent.output
    assert "time budget spent with 4 run(s) left" in spent.stderr
    assert load_results(tmp_path / "res").empty
    resumed = invoke("run", str(config), "--results", str(tmp_path / "res"), "--time-budget", "1h", "--device", "cpu")
    assert resumed.exit_code == 0, resumed.output
    history = load_results(tmp_path / "res", history=True)
    assert len(history) == 4 and (history.status == "ok").all()


def test_time_budget_lets_the_runs_in_flight_finish_in_a_pool(tmp_path):
    config = write_config(tmp_path / "c.yaml", {"depth": [1, 2, 3, 4, 5, 6]})
    result = invoke("run", str(config), "--results", str(tmp_path / "res"), "--time-budget", "3s",
                    "--workers", "2", "--threads", "1", "--device", "cpu")
    df = load_results(tmp_path / "res", history=True)
    assert set(df.status) <= {"ok"}  # nothing cut off mid-run, nothing left claimed
    if result.exit_code == EXIT_BUDGET:
        assert len(df) < 6
    else:  # a fast machine finished everything inside the budget
        assert result.exit_code == 0 and len(df) == 6
