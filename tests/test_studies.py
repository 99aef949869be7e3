"""The studies' pages cannot drift from their data (issue 15).

Every table of a study page sits between markers and is rebuilt here from the archived
export in ``docs/studies/data/`` by ``docs/studies/build.py``; each archive must hold exactly
the runs its config plans today, all finished. The fitting helpers the edge-of-chaos page
relies on are checked on curves whose answer is known.
"""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from initsweep.cli import app

REPO = Path(__file__).resolve().parents[1]
runner = CliRunner()

_spec = importlib.util.spec_from_file_location("study_build", REPO / "docs" / "studies" / "build.py")
build = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(build)


@pytest.mark.parametrize("study", build.STUDIES)
def test_every_table_of_the_page_is_the_one_its_archive_gives(study, one_thread):
    page, _ = build.PAGES[study]
    text = page.read_text(encoding="utf-8")
    tables = build.tables_of(study)
    assert tables, study
    for name in tables:  # each table is on the page, once
        assert text.count(f"<!-- table: {name} -->") == 1, (page, name)
    assert build.render(text, tables, page) == text, (
        f"{page.relative_to(REPO)} has a table that its archive does not give: run docs/studies/build.py")


@pytest.mark.parametrize("study", build.STUDIES)
def test_each_archive_holds_exactly_the_runs_its_config_plans(study, tmp_path):
    """Planned as the studies ran (offline: `dataset: mnist` falls back to the shipped sample,
    which the run ids name), whether or not this machine has MNIST or a network."""
    result = runner.invoke(app, ["plan", str(REPO / "configs" / f"{study}.yaml"), "-S", "data.download=false",
                                 "--format", "json"], env={"INITSWEEP_DATA": str(tmp_path / "no-data")})
    assert result.exit_code == 0, result.output
    planned = [run["run_id"] for run in json.loads(result.stdout)["runs"]]
    archived = build.load_archive(study)
    assert sorted(archived["run_id"]) == sorted(planned)
    assert set(archived["status"]) <= {"ok", "diverged"}
    assert archived["test_acc"].between(0, 1).all()
    seeds = archived.groupby([c for c in ("init_label", "activation_label", "bias_label", "depth", "optimizer", "lr")
                              if archived[c].nunique() > 1])["seed"].nunique()
    assert seeds.min() >= 5  # the floor


def test_render_replaces_only_between_markers_and_refuses_strays(tmp_path):
    page = build.ROOT / "docs" / "x.md"
    text = "intro 0.5\n<!-- table: a -->\nold | 1\n<!-- end table -->\nprose 0.7\n"
    assert build.render(text, {"a": "| new |"}, page) == "intro 0.5\n<!-- table: a -->\n| new |\n<!-- end table -->\nprose 0.7\n"
    with pytest.raises(SystemExit, match="marker 'table: a' names no table"):
        build.render(text, {}, page)
    with pytest.raises(SystemExit, match="no marker for table"):
        build.render(text, {"a": "x", "b": "y"}, page)


def test_check_mode_says_a_stale_page_and_exits_1(tmp_path, monkeypatch, capsys):
    """``build.py --check`` on the repository's pages: up to date (exit 0); a page edited
    inside a table: exit 1, naming the page, and the page is left as it was."""
    assert build.main(["--check", "glorot2010"]) == 0
    page = tmp_path / "glorot2010.md"
    original = build.PAGES["glorot2010"][0].read_text(encoding="utf-8")
    page.write_text(original.replace("| sigmoid |", "| sigmoid (edited) |", 1), encoding="utf-8")
    assert page.read_text(encoding="utf-8") != original
    monkeypatch.setitem(build.PAGES, "glorot2010", (page, build.PAGES["glorot2010"][1]))
    monkeypatch.setattr(build, "ROOT", tmp_path)
    assert build.main(["--check", "glorot2010"]) == 1
    assert "stale tables in: glorot2010.md" in capsys.readouterr().err
    assert "(edited)" in page.read_text(encoding="utf-8")


def test_trainable_depth_interpolates_in_log_depth_and_says_when_censored():
    depths = np.array([8.0, 16.0, 32.0, 64.0])
    # accuracy 0.9 at 16, 0.1 at 32: the 0.5 line is crossed half-way in log-depth, at sqrt(16 * 32)
    assert build.trainable_depth(depths, np.array([0.9, 0.9, 0.1, 0.1])) == (pytest.approx(math.sqrt(16 * 32)), "=")
    # a quarter of the way down from 0.9 to 0.5 ... : 0.7 -> 0.3 crosses at the middle too
    assert build.trainable_depth(depths, np.array([0.9, 0.7, 0.3, 0.1]))[0] == pytest.approx(math.sqrt(16 * 32))
    assert build.trainable_depth(depths, np.array([0.9, 0.9, 0.9, 0.6])) == (64.0, ">=")
    assert build.trainable_depth(depths, np.array([0.3, 0.2, 0.1, 0.1])) == (8.0, "<")


def test_ratio_fit_recovers_a_known_ratio():
    xi = np.array([3.0, 7.0, 15.0, 40.0])
    noise = np.array([1.1, 0.9, 1.05, 0.95])
    depths = pd.DataFrame({"depth": 6 * xi * noise, "xi_c": xi, "censor": "="})
    fit = build.ratio_fit(depths)
    logs = np.log(noise * 6)
    assert fit["n"] == 4
    assert fit["a"] == pytest.approx(math.exp(logs.mean()))
    assert fit["low"] < 6 < fit["high"]
    assert fit["r"] > 0.99
    # censored points and infinite xi_c are left out of the fit
    extra = pd.DataFrame({"depth": [64.0, 10.0], "xi_c": [math.inf, 2.0], "censor": ["=", ">="]})
    assert build.ratio_fit(pd.concat([depths, extra]))["a"] == pytest.approx(fit["a"])


def test_a_missing_results_folder_is_one_line_and_exit_2(tmp_path):
    """``build.py --results DIR`` on a folder without the study: one line, exit 2, no page or
    archive touched (their bytes compared)."""
    import subprocess
    import sys

    watched = [build.DATA / "he2015.csv", build.PAGES["he2015"][0]]
    before = [p.read_bytes() for p in watched]
    done = subprocess.run([sys.executable, str(REPO / "docs" / "studies" / "build.py"), "--results",
                           str(tmp_path / "none"), "he2015"], capture_output=True, text=True)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [f"error: {tmp_path / 'none' / 'he2015'}: does not exist"]
    assert [p.read_bytes() for p in watched] == before
