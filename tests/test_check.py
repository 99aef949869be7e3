"""`initsweep check` (the regression gate) and the example CI workflow's commands."""

from __future__ import annotations

import re
import shlex
import xml.etree.ElementTree as ET
from pathlib import Path

import pandas as pd
import pytest
import typer
import yaml
from typer.testing import CliRunner

from initsweep.cli import app

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """A real sweep with a diverging point, and its export as the baseline."""
    tmp = tmp_path_factory.mktemp("check")
    config = tmp / "c.yaml"
    cfg = {"name": "gate", "data": {"dataset": "mnist-sample", "train_limit": 256, "test_limit": 256},
           "model": {"arch": "plain", "width": 4, "head": "flatten"},
           "train": {"epochs": 1, "batch_size": 64, "seeds": [0, 1]},
           "grid": {"init": ["he", "std_normal"], "depth": [2, 20], "lr": [0.001, 10.0]},
           "exclude": [{"init": "he", "lr": 10.0}, {"init": "std_normal", "lr": 0.001}, {"init": "std_normal", "depth": 2}],
           "diagnostics": {"enabled": False}}
    config.write_text(yaml.safe_dump(cfg))
    assert invoke("run", config, "--results", tmp / "res", "--device", "cpu").exit_code == 0
    assert invoke("export", "--results", tmp / "res", "--format", "csv", "--output", tmp / "base.csv").exit_code == 0
    # the same sweep without one of its points: a "missing" group
    cfg["exclude"].append({"init": "he", "depth": 20})
    (tmp / "less.yaml").write_text(yaml.safe_dump(cfg))
    assert invoke("run", tmp / "less.yaml", "--results", tmp / "less", "--device", "cpu").exit_code == 0
    return tmp


def edited_baseline(sweep: Path, name: str, edit) -> Path:
    df = pd.read_csv(sweep / "base.csv")
    edit(df)
    path = sweep / name
    df.to_csv(path, index=False)
    return path


def test_identical_results_pass(sweep):
    result = invoke("check", "--baseline", sweep / "base.csv", "--results", sweep / "res")
    assert result.exit_code == 0, result.output
    assert "check passed: 3 group(s)" in result.stdout
    # a results folder works as a baseline too
    assert invoke("check", "--baseline", sweep / "res", "--results", sweep / "res").exit_code == 0


def test_an_accuracy_drop_beyond_tolerance_fails_and_within_passes(sweep):
    def better_he(df):  # the baseline was 0.05 better at he/depth 2: the current runs dropped
        df.loc[(df.init == "he") & (df.depth == 2), "test_acc"] += 0.05

    base = edited_baseline(sweep, "drop.csv", better_he)
    result = invoke("check", "--baseline", base, "--results", sweep / "res", "--junit", sweep / "drop.xml")
    assert result.exit_code == 1
    assert "check failed: 1 of 3 group(s): regressed -0.0500" in result.stderr
    suite = ET.parse(sweep / "drop.xml").getroot().find("testsuite")
    assert suite.get("tests") == "3" and suite.get("failures") == "1"
    assert invoke("check", "--baseline", base, "--results", sweep / "res", "--tolerance", "0.06").exit_code == 0


def test_a_newly_diverged_run_fails(sweep):
    def healthy_before(df):
        df.loc[df.status == "diverged", "status"] = "ok"

    base = edited_baseline(sweep, "diverged.csv", healthy_before)
    result = invoke("check", "--baseline", base, "--results", sweep / "res")
    assert result.exit_code == 1 and "newly diverged" in result.stderr
    assert invoke("check", "--baseline", base, "--results", sweep / "res", "--fail-on", "failed,missing").exit_code == 0


def test_a_missing_run_fails(sweep):
    result = invoke("check", "--baseline", sweep / "base.csv", "--results", sweep / "less")
    assert result.exit_code == 1 and "missing" in result.stderr
    assert invoke("check", "--baseline", sweep / "base.csv", "--results", sweep / "less",
                  "--fail-on", "diverged").exit_code == 0


def test_bad_input_exits_2(sweep):
    assert invoke("check", "--baseline", sweep / "nope.csv", "--results", sweep / "res").exit_code == 2
    bad = invoke("check", "--baseline", sweep / "base.csv", "--results", sweep / "res", "--fail-on", "slow")
    assert bad.exit_code == 2 and "--fail-on slow" in bad.stderr
    (sweep / "notruns.csv").write_text("a,b\n1,2\n")
    assert invoke("check", "--baseline", sweep / "notruns.csv", "--results", sweep / "res").exit_code == 2


def test_the_committed_smoke_baseline_holds_for_the_code_as_it_is(tmp_path):
    """What the nightly workflow does: run configs/smoke.yaml, check it against the baseline."""
    assert invoke("run", ROOT / "configs/smoke.yaml", "--results", tmp_path / "res", "--device", "cpu").exit_code == 0
    result = invoke("check", "--baseline", ROOT / "baselines/smoke.csv", "--results", tmp_path / "res")
    assert result.exit_code == 0, result.output


def _workflow_commands() -> list[list[str]]:
    workflow = yaml.safe_load((ROOT / ".github/workflows/scheduled-sweep.yml").read_text())
    values = {"CONFIG": "configs/smoke.yaml", "BASELINE": "baselines/smoke.csv", "SHARDS": "3",
              "GITHUB_STEP_SUMMARY": "summary.md"}
    commands = []
    for job in workflow["jobs"].values():
        for step in job["steps"]:
            # YAML has already folded ">" blocks into one line; "|" blocks keep a command a line
            for line in step.get("run", "").splitlines():
                line = re.sub(r"\$\{\{\s*matrix\.shard\s*\}\}", "1", line)
                line = re.sub(r"\$\{?(\w+)\}?", lambda m: values.get(m.group(1), m.group(0)), line)
                words = shlex.split(line.split(">>")[0])
                if words and words[0] == "initsweep":
                    commands.append(words[1:])
    return commands


def test_every_command_of_the_example_workflow_parses_and_is_tested():
    commands = _workflow_commands()
    assert {c[0] for c in commands} == {"run", "merge", "report", "export", "check"}
    click_app = typer.main.get_command(app)
    for words in commands:
        sub = click_app.commands[words[0]]
        sub.make_context(words[0], list(words[1:]))  # raises on an unknown flag or a bad value
    tested = {"run": "test_run.py", "merge": "test_ci.py", "report": "test_report.py", "export": "test_report.py",
              "check": "test_check.py"}
    for command, test_file in tested.items():
        assert f'"{command}"' in (ROOT / "tests" / test_file).read_text()


def test_the_markdown_summary_is_the_gate_table_cell_for_cell(sweep):
    """The summary's table, byte for byte: a ``---`` rule per column, floats at 4 decimals,
    missing values as ``–`` (the CI summary's style, written by report/formats.py's one
    table writer)."""
    from initsweep.report.check import check_against
    from initsweep.results.read import read_runs

    def better_he(df):
        df.loc[(df.init == "he") & (df.depth == 2), "test_acc"] += 0.05

    base = edited_baseline(sweep, "drop-md.csv", better_he)
    result = invoke("check", "--baseline", base, "--results", sweep / "less", "--summary-md", sweep / "drop.md")
    assert result.exit_code == 1
    table = check_against(read_runs(sweep / "less"), read_runs(base)).table
    assert table["verdict"].isin(["missing"]).any() and table.isna().any().any()  # a row with gaps

    def cell(v):
        if v is None or (isinstance(v, float) and v != v):
            return "–"
        return f"{v:.4f}" if isinstance(v, float) else str(v)

    rows = ["| " + " | ".join(map(cell, row)) + " |" for row in table.itertuples(index=False)]
    assert (sweep / "drop.md").read_text(encoding="utf-8") == (
        f"## initsweep check: test_acc against {base}\n\n{int((table['verdict'] != 'ok').sum())} of {len(table)} "
        "group(s) failed (a group regresses when its drop exceeds max(tolerance 0.01, 2 × se)).\n\n"
        + "| " + " | ".join(table.columns) + " |\n" + "|" + "|".join("---" for _ in table.columns) + "|\n"
        + "\n".join(rows) + "\n")
