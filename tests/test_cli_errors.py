"""Small CLI errors and edges: one line on stderr naming what the user typed, exit 2, and
nothing stored lost; empty plans said plainly; the notebook API's small edges."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_ci import invoke, write_config

import initsweep
from initsweep import load_results, summarize
from initsweep.ci import in_shard
from initsweep.config import expand, load_config
from initsweep.errors import OptionError
from initsweep.sweep import plan_execution

ROOT = Path(__file__).resolve().parents[1]
CPU = ("--device", "cpu", "--workers", "1", "--threads", "1")


def error_lines(result) -> list[str]:
    return result.stderr.strip().splitlines()


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    """A results folder holding sweep ``ci``: depth 1 and 2, one seed each."""
    tmp = tmp_path_factory.mktemp("errors")
    config = write_config(tmp / "c.yaml", {"depth": [1, 2]})
    result = invoke("run", str(config), "--results", str(tmp / "res"), *CPU, "--quiet")
    assert result.exit_code == 0, result.output
    return tmp / "res"


# ---------------------------------------------------------------- --sweep that is not there


def test_an_unknown_sweep_is_exit_2_listing_the_sweeps_there(store, tmp_path):
    before = digest(store / "initsweep.db")
    for command in (("report",), ("export",), ("show", "0")):
        result = invoke(*command, "--results", str(store), "--sweep", "nosuch")
        assert result.exit_code == 2, result.output
        assert error_lines(result) == [f"error: --sweep nosuch: no such sweep in {store} (its sweeps: ci)"]
        assert result.stdout == ""
    export = tmp_path / "runs.csv"
    assert invoke("export", "--results", str(store), "-o", str(export)).exit_code == 0
    result = invoke("report", "--results", str(export), "--sweep", "ci", "--sweep", "nosuch")
    assert result.exit_code == 2
    assert error_lines(result) == [f"error: --sweep nosuch: no such sweep in {export} (its sweeps: ci)"]
    # from Python the same error names the parameter, not a flag
    with pytest.raises(OptionError) as info:
        load_results(store, sweep="nosuch")
    assert str(info.value) == f"sweep='nosuch': no such sweep in {store} (its sweeps: ci)"
    assert len(load_results(store, sweep="ci")) == 2
    assert digest(store / "initsweep.db") == before


# ---------------------------------------------------------------- the option the user typed


@pytest.mark.parametrize("args,line", [
    (("--devices", "cpu,bogus"), "--devices bogus: not a device (use auto, cpu, cuda, cuda:N or mps)"),
    (("--devices", "cpu,meta"), "--devices meta: unsupported device type (use auto, cpu, cuda, cuda:N or mps)"),
    (("--device", "bogus"), "--device bogus: not a device (use auto, cpu, cuda, cuda:N or mps)"),
    (("--vmap", "sometimes"), "--vmap sometimes: use auto, on or off"),
    (("--executor", "slurm"), "--executor slurm: use local or ray"),
])
def test_execution_errors_name_the_flag_the_user_typed(tmp_path, args, line):
    config = write_config(tmp_path / "c.yaml", {"depth": [1]})
    result = invoke("run", str(config), "--results", str(tmp_path / "res"), *args)
    assert result.exit_code == 2, result.output
    assert error_lines(result) == [f"error: {line}"]
    assert not (tmp_path / "res").exists()  # refused before a results folder was made


def test_execution_errors_from_python_name_the_parameter():
    with pytest.raises(OptionError) as info:
        plan_execution(devices=["cpu", "bogus"])
    assert str(info.value) == "devices='bogus': not a device (use auto, cpu, cuda, cuda:N or mps)"
    with pytest.raises(OptionError, match=r"^device='bogus': not a device"):
        plan_execution(device="bogus")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="a mix of device types needs a CUDA device")
def test_a_mix_of_device_types_names_devices(tmp_path):
    config = write_config(tmp_path / "c.yaml", {"depth": [1]})
    result = invoke("run", str(config), "--results", str(tmp_path / "res"), "--devices", "cpu,cuda:0")
    assert result.exit_code == 2
    assert error_lines(result) == ["error: --devices cpu,cuda:0: a mix of device types (use one type, e.g. cuda:0,cuda:1)"]


@pytest.mark.parametrize("shard,problem", [
    ("1/0", "N must be at least 1"),
    ("5/4", "K must be between 1 and 4"),
    ("0/3", "K must be between 1 and 3"),
    ("1-4", "expected K/N, e.g. 1/4"),
])
def test_shard_errors_use_the_users_numbers(tmp_path, shard, problem):
    config = write_config(tmp_path / "c.yaml", {"depth": [1]})
    result = invoke("run", str(config), "--results", str(tmp_path / "res"), "--shard", shard)
    assert result.exit_code == 2
    assert error_lines(result) == [f"error: --shard {shard}: {problem}"]


def test_an_invalid_sweep_name_is_explained_in_words(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("name: a b\n")
    result = invoke("plan", str(path))
    assert result.exit_code == 2
    assert error_lines(result) == [
        f"error: {path}: name: 'a b' is not a valid sweep name: use letters, digits, '-', '_' and '.', "
        "starting with a letter or digit (at most 100 characters)"]


# ---------------------------------------------------------------- export's output format


def test_export_refuses_a_suffix_it_cannot_write_unless_format_is_given(store, tmp_path):
    for name, what in (("runs.xlsx", "its suffix '.xlsx'"), ("runs", "a name without a suffix")):
        target = tmp_path / name
        result = invoke("export", "--results", str(store), "-o", str(target))
        assert result.exit_code == 2
        assert error_lines(result) == [
            f"error: --output {target}: export cannot tell the format from {what}; it writes .csv, .json and "
            ".parquet (or .pq), or give --format csv|json|parquet"]
        assert not target.exists()
    target = tmp_path / "runs.xlsx"
    result = invoke("export", "--results", str(store), "-o", str(target), "--format", "csv")
    assert result.exit_code == 0
    assert error_lines(result) == [f"2 runs -> {target} (csv)"]  # says what it wrote
    assert target.read_text() == invoke("export", "--results", str(store)).stdout


# ---------------------------------------------------------------- empty plans


def test_a_grid_excluded_entirely_is_exit_2_for_plan_and_run(tmp_path):
    config = write_config(tmp_path / "c.yaml", {"depth": [1, 2], "init": ["he", "orthogonal"]},
                          exclude=[{"depth": 1}, {"depth": 2, "init": ["he", "orthogonal"]}])
    line = f"error: {config}: exclude: the grid expands to 0 runs: every point is excluded by exclude[0], exclude[1]"
    plan = invoke("plan", str(config))
    assert plan.exit_code == 2 and error_lines(plan) == [line]
    run = invoke("run", str(config), "--results", str(tmp_path / "res"), *CPU)
    assert run.exit_code == 2 and error_lines(run) == [line]
    assert not (tmp_path / "res").exists()


def test_an_empty_shard_says_so_and_exits_0(tmp_path):
    config = write_config(tmp_path / "c.yaml", {"depth": [1, 2]})
    ids = [spec.run_id for spec in expand(load_config(config)).runs]
    k = next(k for k in range(1, 5) if not any(in_shard(i, k, 4) for i in ids))  # 2 runs: 2+ of 4 shards empty
    result = invoke("run", str(config), "--results", str(tmp_path / "res"), "--shard", f"{k}/4", *CPU)
    assert result.exit_code == 0, result.output
    assert f"shard {k}/4 holds none of the 2 runs: nothing to do" in result.stdout.splitlines()
    assert load_results(tmp_path / "res").empty


# ---------------------------------------------------------------- $INITSWEEP_DATA


def test_a_data_root_from_the_environment_that_does_not_exist_is_never_created(tmp_path):
    missing = tmp_path / "no" / "such" / "root"
    env = {"INITSWEEP_DATA": str(missing)}
    config = write_config(tmp_path / "c.yaml", {"depth": [1]},
                          data={"dataset": "mnist", "train_limit": 256, "test_limit": 256})
    result = invoke("run", str(config), "--results", str(tmp_path / "res"), *CPU, env=env)
    assert result.exit_code == 2
    assert error_lines(result) == [
        f"error: $INITSWEEP_DATA is {missing}, which does not exist: create that folder to download mnist into "
        "it, or unset $INITSWEEP_DATA (default ~/.cache/initsweep)"]
    # the read-only commands only look
    assert invoke("plan", str(config), env=env).exit_code == 0
    probe = invoke("probe", str(config), "--batch-size", "4", "--threads", "1", "--summary", env=env)
    assert probe.exit_code == 0 and "note: probing on mnist-sample" in probe.stderr
    assert not (tmp_path / "no").exists()


# ---------------------------------------------------------------- the notebook API


def test_summarize_takes_one_column_as_a_string(store):
    df = load_results(store)
    by_list = summarize(df, "test_acc", ["depth"])
    assert list(by_list["depth"]) == [1, 2] and list(by_list["n"]) == [1, 1]
    assert summarize(df, "test_acc", "depth").equals(by_list)
    assert summarize(df, "test_acc", "init,depth").equals(summarize(df, "test_acc", ["init", "depth"]))


def test_dir_lists_the_lazy_api_without_importing_it():
    code = ("import sys, initsweep; names = dir(initsweep); "
            "print(sorted(set(initsweep.__all__) - set(names)), 'torch' in sys.modules, 'pandas' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "[] False False", out.stderr
    assert {"load_results", "summarize", "run_sweep"} <= set(initsweep.__all__)
