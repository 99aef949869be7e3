"""Small CLI errors and edges: one line on stderr naming what the user typed, exit 2, and
nothing stored lost; empty plans said plainly; the notebook API's small edges; and the
scheduled workflow's shell steps, run for real."""

from __future__ import annotations

import csv
import hashlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from test_ci import invoke, write_config

import initsweep
from initsweep import load_results, summarize
from initsweep.sweep.planner import in_shard
from initsweep.config import expand, load_config
from initsweep.errors import InitsweepError, OptionError
from initsweep.sweep.run import plan_execution

ROOT = Path(__file__).resolve().parents[1]
WORKFLOW = ROOT / ".github/workflows/scheduled-sweep.yml"
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
    # executors are a registry the library checks (a registered one needs no CLI edit)
    (("--executor", "slurm"), "--executor slurm: use local or ray"),
    (("--executor", "rey"), "--executor rey: use local or ray — did you mean 'ray'?"),
])
def test_execution_errors_name_the_flag_the_user_typed(tmp_path, args, line):
    config = write_config(tmp_path / "c.yaml", {"depth": [1]})
    result = invoke("run", str(config), "--results", str(tmp_path / "res"), *args)
    assert result.exit_code == 2, result.output
    assert error_lines(result) == [f"error: {line}"]
    assert not (tmp_path / "res").exists()  # refused before a results folder was made


@pytest.mark.parametrize("flag,value,choices,metavar", [
    ("--vmap", "sometimes", "'auto', 'on', 'off'", "<auto|on|off>"),
    ("--precision", "fp16", "'fp32', 'bf16'", "<fp32|bf16>"),
])
def test_choice_options_refuse_a_typo_in_one_usage_line(tmp_path, flag, value, choices, metavar):
    """--vmap and --precision are choices: click refuses a typo, the help lists them."""
    config = write_config(tmp_path / "c.yaml", {"depth": [1]})
    result = invoke("run", str(config), "--results", str(tmp_path / "res"), flag, value)
    assert result.exit_code == 2, result.output
    [line] = error_lines(result)
    assert line.startswith("error: ") and line.endswith(" run -h)"), line
    assert f"Invalid value for '{flag}'" in line and f"{value!r} is not one of {choices}" in line, line
    assert not (tmp_path / "res").exists()
    assert re.search(rf"{flag}\s+{re.escape(metavar)}", invoke("run", "-h").stdout)


def test_execution_errors_from_python_name_the_parameter(tmp_path):
    with pytest.raises(OptionError) as info:
        plan_execution(devices=["cpu", "bogus"])
    assert str(info.value) == "devices='bogus': not a device (use auto, cpu, cuda, cuda:N or mps)"
    with pytest.raises(OptionError, match=r"^device='bogus': not a device"):
        plan_execution(device="bogus")
    # the CLI's choices reach the library as plain strings; a wrong one is named as the parameter
    for param, value, problem in (("vmap", "sometimes", "use auto, on or off"),
                                  ("executor", "slurm", "use local or ray")):
        with pytest.raises(OptionError) as info:
            plan_execution(**{param: value})
        assert str(info.value) == f"{param}={value!r}: {problem}"
        assert info.value.cli_lines() == [f"--{param} {value}: {problem}"]
    config = write_config(tmp_path / "c.yaml", {"depth": [1]})
    with pytest.raises(OptionError) as info:
        initsweep.run_sweep(config, results_dir=tmp_path / "res", precision="fp16")
    assert str(info.value) == "precision='fp16': use fp32 or bf16"
    assert not (tmp_path / "res").exists()


def test_cli_choices_are_the_librarys():
    """The CLI keeps its own copy of each choice list (the library's sit behind torch, which
    `initsweep -h` never imports); this holds the two equal."""
    from typing import get_args

    from initsweep import config
    from initsweep.cli import probe as cli_probe
    from initsweep.cli import sweep as cli_sweep
    from initsweep.sweep import run as sweep_run

    assert [c.value for c in cli_sweep.Vmap] == list(sweep_run.VMAP_MODES)
    assert [c.value for c in cli_sweep.Precision] == list(config.PRECISIONS)
    assert get_args(config.TrainConfig.model_fields["precision"].annotation) == config.PRECISIONS
    assert tuple(c.value for c in cli_probe.PaddingChoice) == get_args(
        config.ModelConfig.model_fields["padding"].annotation)


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


@pytest.mark.parametrize("command,value,line", [
    ("report", "mardown", "'mardown' is not one of 'table', 'markdown', 'csv', 'json', 'html' — did you mean "
                          "'markdown'?"),
    ("export", "jsn", "'jsn' is not one of 'csv', 'json', 'parquet', 'mlflow' — did you mean 'json'?"),
    ("export", "xlsx", "'xlsx' is not one of 'csv', 'json', 'parquet', 'mlflow'"),
])
def test_a_format_not_registered_is_one_usage_line(store, command, value, line):
    """--format takes the names of the format registry (report/formats.py): a typo is one line,
    worded as click words a choice (as when the choices were an Enum), with the nearest name."""
    result = invoke(command, "--results", str(store), "--format", value)
    assert result.exit_code == 2 and result.stdout == ""
    assert error_lines(result) == [f"error: initsweep {command}: Invalid value for '--format' / '-f': Value error, "
                                   f"{line} (see initsweep {command} -h)"]


def test_parquet_errors_name_format_and_output_from_python_and_the_flags_at_the_cli(store, tmp_path, monkeypatch):
    from initsweep.report.formats import write_runs

    df = load_results(store)
    result = invoke("export", "--results", str(store), "--format", "parquet")
    assert result.exit_code == 2
    assert error_lines(result) == ["error: --format parquet needs --output FILE (parquet is binary)"]
    with pytest.raises(InitsweepError) as info:
        write_runs(df, "parquet", None)
    assert str(info.value) == "format='parquet' needs output FILE (parquet is binary)"
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # as if the 'parquet' extra were not installed
    target = tmp_path / "runs.parquet"
    result = invoke("export", "--results", str(store), "--output", str(target))
    problem = "parquet needs pyarrow (initsweep's 'parquet' extra): pip install pyarrow"
    assert result.exit_code == 2 and error_lines(result) == [f"error: --format parquet: {problem}"]
    with pytest.raises(OptionError) as info:
        write_runs(df, "parquet", target)
    assert str(info.value) == f"format='parquet': {problem}"
    assert not target.exists()


def test_a_run_stored_by_two_sweeps_asks_for_sweep_as_the_caller_names_it(tmp_path):
    from initsweep.results.read import find_run

    res = tmp_path / "res"
    for name in ("a", "b"):  # the same point in two sweeps is the same run id (b trains it too: --fresh)
        config = write_config(tmp_path / f"{name}.yaml", {"depth": [1]}, name=name)
        assert invoke("run", str(config), "--results", str(res), *CPU, "--quiet", "--fresh").exit_code == 0
    [run_id] = set(load_results(res)["run_id"])
    problem = f"run {run_id} is stored by sweeps a, b; pick one with"
    result = invoke("show", run_id[:6], "--results", str(res))
    assert result.exit_code == 2 and error_lines(result) == [f"error: {problem} --sweep"]
    with pytest.raises(InitsweepError) as info:
        find_run(res, run_id[:6])
    assert str(info.value) == f"{problem} sweep"
    assert invoke("show", run_id[:6], "--results", str(res), "--sweep", "b").exit_code == 0


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
    # plan resolves the data as run does, so it says the same; neither it nor probe creates anything
    planned = invoke("plan", str(config), env=env)
    assert planned.exit_code == 2 and error_lines(planned) == error_lines(result)
    probe = invoke("probe", str(config), "--batch-size", "4", "--threads", "1", "--summary", env=env)
    assert probe.exit_code == 0 and "note: probing on mnist-sample" in probe.stderr
    assert not (tmp_path / "no").exists() and not (tmp_path / "res").exists()


# ---------------------------------------------------------------- the notebook API


def test_summarize_takes_one_column_as_a_string(store):
    df = load_results(store)
    by_list = summarize(df, "test_acc", ["depth"])
    assert list(by_list["depth"]) == [1, 2] and list(by_list["n"]) == [1, 1]
    assert summarize(df, "test_acc", "depth").equals(by_list)
    assert summarize(df, "test_acc", "init,depth").equals(summarize(df, "test_acc", ["init", "depth"]))


def test_report_errors_from_python_name_the_parameter_and_the_cli_the_flag(store):
    """From a notebook the error names the parameter (``by``); at the CLI the same error
    names the flag (``--by``): one message, two readers (see errors.OptionError/ParamError)."""
    from initsweep.report.check import check_against
    from initsweep.report.stats import build_report

    df = load_results(store)
    cases = [  # (the call, its message from Python, the start of its CLI line)
        (lambda: summarize(df, "test_accc"), "metric: unknown column 'test_accc' — did you mean 'test_acc'?",
         "--metric: unknown column 'test_accc'"),
        (lambda: summarize(df, "test_acc", "init,dpeth"), "by: unknown column 'dpeth'", "--by: unknown column"),
        (lambda: summarize(df, ci=1.5), "ci=1.5: the interval's level must lie strictly between 0 and 1",
         "--ci 1.5: the interval's level must lie strictly between 0 and 1"),
        (lambda: load_results(store, where="depth >="), "where: not a valid expression",
         "--where: not a valid expression"),
        (lambda: build_report(df, pivot="init:depth", top=1),
         "pivot shows every cell; sort and top order the flat table (drop pivot), and where narrows a pivot",
         "--pivot shows every cell; --sort and --top order the flat table (drop --pivot), and --where narrows"),
        (lambda: check_against(df, df, fail_on=["slow"]), "fail_on='slow': use any of diverged, failed, missing",
         "--fail-on slow: use any of"),
        (lambda: check_against(df, df, tolerance=-1.0), "tolerance=-1.0: must be a number >= 0",
         "--tolerance -1.0: must be"),
        (lambda: check_against(df, df, sigma=float("nan")), "sigma=nan: must be a number >= 0", "--sigma nan: must be"),
        (lambda: plan_execution(ray_address="auto"), "ray_address/ray_timeout/num_cpus/num_gpus need executor='ray'",
         "--ray-address/--ray-timeout/--num-cpus/--num-gpus need --executor ray"),
    ]
    for call, message, cli_start in cases:
        with pytest.raises(InitsweepError) as info:
            call()
        assert str(info.value).startswith(message) and "--" not in str(info.value), str(info.value)
        [cli_line] = info.value.cli_lines()
        assert cli_line.startswith(cli_start), cli_line


def test_dir_lists_the_lazy_api_without_importing_it():
    code = ("import sys, initsweep; names = dir(initsweep); "
            "print(sorted(set(initsweep.__all__) - set(names)), 'torch' in sys.modules, 'pandas' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "[] False False", out.stderr
    assert {"load_results", "summarize", "run_sweep"} <= set(initsweep.__all__)


# ---------------------------------------------------------------- the scheduled workflow


def workflow() -> dict:
    return yaml.safe_load(WORKFLOW.read_text())


def step(job: str, name: str) -> dict:
    return next(s for s in workflow()["jobs"][job]["steps"] if s.get("name", "").startswith(name))


def test_the_workflow_caches_each_shards_results_between_runs():
    wf = workflow()
    steps = wf["jobs"]["sweep"]["steps"]
    uses = [s.get("uses", "").split("@")[0] for s in steps]
    restore, save = steps[uses.index("actions/cache/restore")], steps[uses.index("actions/cache/save")]
    assert wf["jobs"]["sweep"]["env"]["SHARD_DIR"] == "results/shard-${{ matrix.shard }}"
    assert restore["with"]["path"] == save["with"]["path"] == "${{ env.SHARD_DIR }}"
    # each run saves under a new key; restore-keys, its prefix, finds the newest partial folder
    assert restore["with"]["key"] == save["with"]["key"] and "${{ github.run_id }}" in save["with"]["key"]
    assert save["with"]["key"].startswith(restore["with"]["restore-keys"])
    prefix = next(s for s in steps if s.get("id") == "cache")["run"]
    for part in ("$GITHUB_REF_NAME", "hashFiles(env.CONFIG)", "$TORCH_VERSION", "matrix.shard", "$SHARDS"):
        assert part in prefix
    assert save["if"].startswith("always()")  # saved after a spent budget or a failed run too
    sweep = steps.index(step("sweep", "Sweep shard"))
    assert steps.index(restore) < sweep < steps.index(save)


def test_the_workflow_installs_what_the_baseline_was_made_with():
    wf = workflow()
    with open(ROOT / "baselines/smoke.csv", newline="") as f:
        made_with = next(csv.DictReader(f))
    assert made_with["torch_version"].split("+")[0] == wf["env"]["TORCH_VERSION"]
    assert made_with["python_version"] == wf["env"]["PYTHON_VERSION"]
    for job in wf["jobs"].values():
        setup = next(s for s in job["steps"] if s.get("uses", "").startswith("actions/setup-python@"))
        assert setup["with"]["python-version"] == "${{ env.PYTHON_VERSION }}"
        install = next(s["run"] for s in job["steps"] if "pip install" in s.get("run", ""))
        assert '"torch==$TORCH_VERSION" "torchvision==$TORCHVISION_VERSION"' in install


def run_step(job: str, name: str, cwd: Path, substitute: dict[str, str] | None = None, **env: str):
    """A workflow step's script under ``bash -e`` (GitHub's default shell), with ``initsweep``
    the real CLI of this checkout."""
    script = re.sub(r"\$\{\{\s*matrix\.shard\s*\}\}", "1", step(job, name)["run"])
    for old, new in (substitute or {}).items():
        assert old in script
        script = script.replace(old, new)
    bin_dir = cwd / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "initsweep").write_text(f'#!/bin/sh\nexec "{sys.executable}" -m initsweep "$@"\n')
    (bin_dir / "initsweep").chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "CUDA_VISIBLE_DEVICES": "",
           "NO_COLOR": "1", "SHARDS": "3", "SHARD_DIR": "results/shard-1", **env}
    env.pop("GITHUB_STEP_SUMMARY", None)
    return subprocess.run(["bash", "-e", "-c", script], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_the_sweep_step_marks_a_finished_shard_and_continues_a_spent_budget_next_run(tmp_path):
    config = write_config(tmp_path / "c.yaml", {"depth": [2]})
    (spec,) = expand(load_config(config)).runs
    assert in_shard(spec.run_id, 1, 3)  # shard 1/3, the one the step runs here, holds this run
    marker = tmp_path / "results/shard-1/SWEEP_FINISHED"
    # exit 75: the budget is spent before the first run; green, with a notice, results kept for the cache
    spent = run_step("sweep", "Sweep shard", tmp_path, {"--time-budget 40m": "--time-budget 0.001"}, CONFIG="c.yaml")
    assert spent.returncode == 0, spent.stderr
    assert ("::notice title=Sweep continues next run::shard 1/3 spent its time budget; its results are cached "
            "and the next run resumes it") in spent.stdout.splitlines()
    assert (tmp_path / "results/shard-1/initsweep.db").is_file() and not marker.exists()
    # exit 0: the shard finished (resuming the same folder); marked so the next run starts afresh
    done = run_step("sweep", "Sweep shard", tmp_path, CONFIG="c.yaml")
    assert done.returncode == 0, done.stderr
    assert marker.is_file() and "::notice" not in done.stdout
    assert list(load_results(tmp_path / "results/shard-1")["status"]) in (["ok"], ["diverged"])  # finished
    # any other code fails the step
    bad = run_step("sweep", "Sweep shard", tmp_path, CONFIG="missing.yaml")
    assert bad.returncode == 2 and "missing.yaml: file not found" in bad.stderr
    # the next run: a finished shard's cached folder is cleared, an unfinished one is kept
    assert run_step("sweep", "Start afresh", tmp_path).returncode == 0
    assert not (tmp_path / "results/shard-1").exists()
    (tmp_path / "results/shard-1").mkdir(parents=True)
    assert run_step("sweep", "Start afresh", tmp_path).returncode == 0
    assert (tmp_path / "results/shard-1").is_dir()


def test_the_gate_waits_for_every_shard_to_finish(tmp_path):
    for k in (1, 2):
        (tmp_path / f"shards/results-shard-{k}/shard-{k}").mkdir(parents=True)
        (tmp_path / f"shards/results-shard-{k}/shard-{k}/SWEEP_FINISHED").write_text("done")
    waits = run_step("report", "Regression gate", tmp_path, BASELINE="baselines/smoke.csv")
    assert waits.returncode == 0
    assert ("::notice title=Regression gate waits::1 of 3 shard(s) have runs left; the gate runs once the sweep "
            "has finished") in waits.stdout.splitlines()
    (tmp_path / "shards/results-shard-3/shard-3").mkdir(parents=True)
    (tmp_path / "shards/results-shard-3/shard-3/SWEEP_FINISHED").write_text("done")
    gates = run_step("report", "Regression gate", tmp_path, BASELINE=str(ROOT / "baselines/smoke.csv"))
    # every shard finished: check runs (here on a merged folder that is not there: its own exit 2)
    assert gates.returncode == 2 and "results/merged" in gates.stderr
