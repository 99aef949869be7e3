"""`initsweep check`'s noise-aware rule and its environment warnings, on real stored runs.

The sweep: one config (He, ReLU, depth 1 and 2, width 8, 256 training images, one epoch),
trained twice, on seeds 0-2 ("a") and on seeds 3-5 ("b"): the same settings, so any
difference between a and b is seed noise. At depth 1 b's mean is about 0.034 below a's
while the standard error of that difference is about 0.05, so the old fixed tolerance
(0.01) calls it a regression and the new rule, max(tolerance, 2 × se), does not. These
margins are a dozen test images wide: far above the one image another CPU may move
(tests/tolerances.py).
"""

from __future__ import annotations

import json
import math
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from scipy import stats
from typer.testing import CliRunner

from initsweep.cli import app
from initsweep.report.check import check_against
from initsweep.results.read import load_results

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("noise")
    for side, seeds in (("a", [0, 1, 2]), ("b", [3, 4, 5])):
        cfg = {"name": "noise", "data": {"dataset": "mnist-sample", "train_limit": 256, "test_limit": 256},
               "model": {"arch": "plain", "width": 8, "head": "flatten"},
               "train": {"epochs": 1, "batch_size": 64, "seeds": seeds},
               "grid": {"init": ["he"], "depth": [1, 2]}, "diagnostics": {"enabled": False}}
        (tmp / f"{side}.yaml").write_text(yaml.safe_dump(cfg))
        ran = invoke("run", tmp / f"{side}.yaml", "--results", tmp / side, "--device", "cpu", "--threads", "1")
        assert ran.exit_code == 0, ran.output
        assert invoke("export", "--results", tmp / side, "--format", "csv", "--output", tmp / f"{side}.csv").exit_code == 0
    return tmp


def edited(sweep: Path, side: str, name: str, edit) -> Path:
    """A copy of a side's export, changed by ``edit(frame) -> frame``."""
    edit(pd.read_csv(sweep / f"{side}.csv")).to_csv(sweep / name, index=False)
    return sweep / name


def check_json(*args) -> tuple[int, dict]:
    result = invoke("check", *args, "--format", "json")
    return result.exit_code, json.loads(result.stdout)


def test_identical_results_pass_with_the_rule_in_the_output(sweep):
    result = invoke("check", "--baseline", sweep / "a.csv", "--results", sweep / "a")
    assert result.exit_code == 0, result.output
    assert "test_acc: a group regresses when its drop exceeds max(tolerance 0.01, 2 × se)" in result.stdout
    assert "check passed: 2 group(s) within max(0.01, 2 × se) of the baseline" in result.stdout
    header = next(line for line in result.stdout.splitlines() if "base_mean" in line)
    assert "se" in header.split() and "threshold" in header.split()
    assert result.stderr == ""  # the same runs: no environment warning


def test_noisy_but_equal_results_pass_only_because_of_the_standard_error(sweep):
    a, b = load_results(sweep / "a"), load_results(sweep / "b")
    drop = a[a.depth == 1].test_acc.mean() - b[b.depth == 1].test_acc.mean()
    se = math.hypot(stats.sem(a[a.depth == 1].test_acc), stats.sem(b[b.depth == 1].test_acc))
    assert 0.02 < drop < 2 * se - 0.02  # the premise, with margins of 5 test images and more
    passed = invoke("check", "--baseline", sweep / "a", "--results", sweep / "b")
    assert passed.exit_code == 0, passed.output
    assert "check passed: 2 group(s)" in passed.stdout
    failed = invoke("check", "--baseline", sweep / "a", "--results", sweep / "b", "--sigma", "0")
    assert failed.exit_code == 1
    assert f"check failed: 1 of 2 group(s): regressed {-drop:+.4f} (beyond 0.0100 = tolerance)" in failed.stderr


def test_the_standard_errors_are_those_scipy_computes_from_the_stored_runs(sweep):
    code, out = check_json("--baseline", sweep / "a", "--results", sweep / "b")
    assert code == 0 and out["passed"] is True and out["tolerance"] == 0.01 and out["sigma"] == 2.0
    a, b = load_results(sweep / "a"), load_results(sweep / "b")
    assert [g["depth"] for g in out["groups"]] == [1, 2]
    for group in out["groups"]:
        then, now = a[a.depth == group["depth"]].test_acc, b[b.depth == group["depth"]].test_acc
        se = np.sqrt(stats.sem(then) ** 2 + stats.sem(now) ** 2)
        assert group["base_n"] == 3 and group["n"] == 3
        assert group["se"] == pytest.approx(se, rel=1e-9)
        assert group["threshold"] == pytest.approx(max(0.01, 2 * se), rel=1e-9)
    code, wide = check_json("--baseline", sweep / "a", "--results", sweep / "b", "--sigma", "3.5")
    assert [g["threshold"] for g in wide["groups"]] == pytest.approx([3.5 * g["se"] for g in out["groups"]])


def test_a_single_seed_side_uses_the_binomial_standard_error(sweep):
    one = edited(sweep, "b", "b-seed3.csv", lambda df: df[df.seed == 3])
    code, out = check_json("--baseline", sweep / "a", "--results", one)
    assert code == 0
    a, b = load_results(sweep / "a"), load_results(one)
    assert set(b.n_test) == {256}
    for group in out["groups"]:
        then, now = a[a.depth == group["depth"]].test_acc, b[b.depth == group["depth"]]
        p, n = now.test_acc.item(), now.n_test.item()
        binomial = stats.binom(n, p).std() / n  # the sd of a share of n Bernoulli(p) trials
        assert group["n"] == 1
        assert group["se"] == pytest.approx(np.sqrt(stats.sem(then) ** 2 + binomial ** 2), rel=1e-9)
    assert out["notes"] == ["se: a side with a single seed has no sample std; its binomial standard error "
                            "sqrt(p(1-p)/n_test) stands in"]
    # a loss is no share of images: with one seed there is no standard error, only the tolerance
    loss = invoke("check", "--baseline", sweep / "a", "--results", one, "--metric", "test_loss", "--tolerance", "5")
    assert loss.exit_code == 0, loss.output
    assert ("se: 2 group(s) have a single seed on a side and test_loss is not an accuracy: judged by the "
            "tolerance 5 alone") in loss.stdout
    code, out = check_json("--baseline", sweep / "a", "--results", one, "--metric", "test_loss", "--tolerance", "5")
    assert [(g["se"], g["threshold"]) for g in out["groups"]] == [(None, 5.0), (None, 5.0)]


def test_an_injected_drop_of_0_2_fails_with_both_numbers_in_every_output(sweep, tmp_path):
    current = edited(sweep, "a", "a-minus-0.2.csv", lambda df: df.assign(test_acc=df.test_acc - 0.2))
    result = invoke("check", "--baseline", sweep / "a", "--results", current, "--junit", tmp_path / "check.xml",
                    "--summary-md", tmp_path / "check.md")
    assert result.exit_code == 1
    assert "check failed: 2 of 2 group(s): regressed -0.2000 (beyond " in result.stderr
    code, out = check_json("--baseline", sweep / "a", "--results", current)
    assert code == 1 and out["passed"] is False and out["failures"] == 2
    for group in out["groups"]:
        assert group["delta"] == pytest.approx(-0.2) and 2 * group["se"] < 0.2
        assert group["verdict"] == f"regressed -0.2000 (beyond {group['threshold']:.4f} = 2×se)"
    cases = ET.parse(tmp_path / "check.xml").getroot().iter("testcase")
    messages = [case.find("failure").get("message") for case in cases]
    assert len(messages) == 2
    for message, group in zip(messages, out["groups"]):
        assert message.endswith(f"tolerance 0.01, 2×se {2 * group['se']:.4f})")
    markdown = (tmp_path / "check.md").read_text()
    assert "2 of 2 group(s) failed (a group regresses when its drop exceeds max(tolerance 0.01, 2 × se))" in markdown
    assert "| se | threshold |" in markdown


def test_environment_differences_warn_and_fail_under_strict_env(sweep, tmp_path):
    run = load_results(sweep / "a").iloc[0]

    # the baseline ran elsewhere, and asked for MNIST and fell back to the sample
    elsewhere = {"torch_version": "9.9.9", "initsweep_version": "0.0.1", "device": "cuda:0", "precision": "bf16",
                 "dataset_requested": "mnist"}
    base = edited(sweep, "a", "a-elsewhere.csv", lambda df: df.assign(**elsewhere))
    warned = invoke("check", "--baseline", base, "--results", sweep / "a")
    assert warned.exit_code == 0, warned.output
    assert warned.stderr.splitlines() == [
        f"warning: torch_version differs: baseline 9.9.9, current {run.torch_version}",
        f"warning: initsweep_version differs: baseline 0.0.1, current {run.initsweep_version}",
        "warning: device differs: baseline cuda, current cpu",
        "warning: precision differs: baseline bf16, current fp32",
        "warning: dataset differs: baseline mnist→mnist-sample (fallback), current mnist-sample"]
    # precision held one value on each side: the groups still match, none is "missing"
    assert "check passed: 2 group(s)" in warned.stdout
    strict = invoke("check", "--baseline", base, "--results", sweep / "a", "--strict-env", "--junit",
                    tmp_path / "env.xml")
    assert strict.exit_code == 1
    assert strict.stderr.splitlines()[-1] == ("check failed: environment differs (--strict-env): torch_version, "
                                              "initsweep_version, device, precision, dataset")
    suite = ET.parse(tmp_path / "env.xml").getroot().find("testsuite")
    assert suite.get("tests") == "3" and suite.get("failures") == "1"
    # one field alone, and the Python API returns the differences instead of printing them
    torch_only = edited(sweep, "a", "a-torch.csv", lambda df: df.assign(torch_version="9.9.9"))
    result = check_against(load_results(sweep / "a"), load_results(torch_only), strict_env=True)
    assert [(d.field, d.baseline, d.current) for d in result.env_differences] == [
        ("torch_version", "9.9.9", run.torch_version)]
    assert result.failures.empty and not result.passed


@pytest.mark.parametrize("bad", ["-1", "nan", "inf"])
def test_a_bad_sigma_is_one_line_exit_2(sweep, bad):
    result = invoke("check", "--baseline", sweep / "a", "--results", sweep / "a", "--sigma", bad)
    assert result.exit_code == 2
    assert result.stderr.splitlines() == [f"error: --sigma {float(bad)}: must be a number >= 0"]


def test_the_recipe_a_field_check_compares_is_one_environment_entry(sweep, monkeypatch):
    """docs/architecture.md, "Where to add": a run column in ``ENVIRONMENT`` and nothing else
    gives its warning line and its --strict-env failure."""
    from initsweep.report import check

    monkeypatch.setattr(check, "ENVIRONMENT", (*check.ENVIRONMENT, "python_version"))
    base = edited(sweep, "a", "a-python.csv", lambda df: df.assign(python_version="2.7.18"))
    python = load_results(sweep / "a").python_version.iloc[0]
    result = invoke("check", "--baseline", base, "--results", sweep / "a", "--strict-env")
    assert result.exit_code == 1
    assert result.stderr.splitlines() == [f"warning: python_version differs: baseline 2.7.18, current {python}",
                                          "check failed: environment differs (--strict-env): python_version"]
