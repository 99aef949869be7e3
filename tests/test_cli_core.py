"""CLI: plan, list-*, --version, and malformed configs (exit 2, one line per problem, no traceback)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from initsweep import __version__
from initsweep.cli import app
from initsweep.inits import list_inits

REPO = Path(__file__).resolve().parents[1]
runner = CliRunner()

# (config text, the key paths the error lines must name, in order)
BAD_CONFIGS = [
    ("name: t\ngrid:\n  init: [he, xavier_uniform, kaiming_nromal]\n", ["grid.init[2]: unknown initializer 'kaiming_nromal' — did you mean 'kaiming_normal'?"]),
    ("name: t\nmodel: {depth: 1000000000}\n", ["model.depth:"]),
    ("name: t\ngrid: {depth: [2, 1000000000]}\n", ["grid.depth[1]:"]),
    ("name: t\ntrain: {lr: -1, batchsize: 3}\n", ["train.lr:", "train.batchsize: unknown key 'batchsize' — did you mean 'batch_size'?"]),
    ("!!python/object/apply:os.system ['echo pwned']\n", ["line 1, column 1: not valid YAML: YAML tag"]),
    ("name: !!python/name:os.system t\n", ["not valid YAML: YAML tag"]),
    ("name: t\ngrid:\n  init: []\n  depht: [1]\n", ["grid.init: empty axis", "grid.depht: unknown axis 'depht' — did you mean 'depth'?"]),
    ("name: t\ngrid: {depth: [2]}\nexclude:\n  - {activaton: relu}\n", ["exclude[0].activaton: unknown axis"]),
    ("name: t\ngrid:\n  init: [{name: normal, std: -1}]\n", ["grid.init[0].std: must be >= 0"]),
    ("name: t\ngrid:\n  init: [{name: kaiming_normal, mode: fan_avg}]\n", ["grid.init[0].mode: must be one of"]),
    ("name: t\ngrid:\n  activation: [{name: leaky_relu, slope: 0.1}]\n", ["grid.activation[0].slope: unknown parameter"]),
    ("name: t\ngrid:\n  activation: [relu, sigmoidd]\n", ["grid.activation[1]: unknown activation 'sigmoidd'"]),
    ("- a\n- b\n", ["top level must be a mapping"]),
    ("", ["empty file"]),
    ("name: t\nname: u\n", ["duplicate key 'name'"]),
    ("name: t\ngrid: {depth: 3}\n", ["grid.depth: input should be a valid list"]),
    ("name: t\ngrid: {lr: [0.1, abc]}\n", ["grid.lr[1]:"]),
    ("name: t\ngrid: {width: [0, 8]}\n", ["grid.width[0]: input should be greater than or equal to 1"]),
    ("name: t\ntrain: {seeds: [1, 1]}\n", ["train.seeds: seeds repeat"]),
    ("name: t\ntrain: {seeds: []}\n", ["train.seeds:"]),
    ("name: t\ntrain: {optimizer: adam, momentum: 0.9}\n", ["train: momentum/nesterov are sgd options"]),
    ("name: t\nmodel: {init: {mode: fan_in}}\n", ["model.init: a mapping needs a 'name' key"]),
    ("name: t\nmodel: {activation: 3}\n", ["model.activation: must be a name or a mapping"]),
    ("name: t\ndata: {dataset: cifar}\n", ["data.dataset: input should be 'mnist', 'fashion-mnist' or 'mnist-sample'"]),
    ("name: t\ndata: {val_fraction: 1.5}\n", ["data.val_fraction:"]),
    ("name: t\nmodel: {arch: resnet}\n", ["model.arch: input should be 'plain', 'tutorial' or 'mlp' (got 'resnet')"]),
    ("name: t\n  bad: : indent\n", ["not valid YAML"]),
    ("name: 'bad name!'\n", ["name: 'bad name!' is not a valid sweep name: use letters, digits"]),
    ("name: t\ngrid: {seed: [1, 2]}\n", ["grid.seed: seeds are not a grid axis"]),
    ("name: t\ngrid: {root: [a, b]}\n", ["grid.root: unknown axis"]),
    ("name: t\nmodel: {width: 4096, depth: 1000}\n", ["parameters, over the limit"]),
    ("name: t\nexperiment: {}\n", ["experiment: unknown key 'experiment'"]),
    ("name: t\ngrid: {depth: [2]}\nexclude: [{depth: 2, init: he}]\n", ["exclude[0].init: unknown axis"]),
    ("name: t\nmodel: {bias: {name: normal, sd: 1}}\n", ["model.bias.sd: unknown parameter"]),
    ("name: t\ntrain: {epochs: 2.5}\n", ["train.epochs:"]),
]


@pytest.mark.parametrize("text,expected", BAD_CONFIGS, ids=[f"bad{i:02d}" for i in range(len(BAD_CONFIGS))])
def test_malformed_config_exits_2_with_one_line_per_problem(tmp_path, text, expected):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    result = runner.invoke(app, ["plan", str(path)])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == len(expected), lines
    for line, want in zip(lines, expected):
        assert line.startswith(f"error: {path}: "), line
        assert want in line, line
    assert "Traceback" not in result.output


def test_missing_and_unreadable_files_exit_2(tmp_path):
    result = runner.invoke(app, ["plan", str(tmp_path / "nope.yaml")])
    assert result.exit_code == 2 and "nope.yaml: file not found" in result.stderr
    result = runner.invoke(app, ["plan", str(tmp_path)])
    assert result.exit_code == 2 and "is a directory" in result.stderr
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(b"\xff\xfe\x00bad")
    result = runner.invoke(app, ["plan", str(binary)])
    assert result.exit_code == 2 and "cannot read" in result.stderr


def test_real_console_script_bad_config_no_traceback(tmp_path):
    """The installed entry point, in a fresh process: exit code 2 and one line on stderr."""
    path = tmp_path / "bad.yaml"
    path.write_text("name: t\ngrid:\n  init: [kaiming_nromal]\n")
    proc = subprocess.run([sys.executable, "-m", "initsweep", "plan", str(path)], capture_output=True, text=True,
                          env={**os.environ, "NO_COLOR": "1"})
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"error: {path}: grid.init[0]: unknown initializer 'kaiming_nromal' — did you mean 'kaiming_normal'?"]
    assert proc.stdout == ""


def test_plan_json_counts(tmp_path):
    result = runner.invoke(app, ["plan", str(REPO / "configs/smoke.yaml"), "--format", "json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["n_points"] == 2 * 2 * 2
    assert data["n_excluded"] == 1
    assert data["n_runs"] == len(data["runs"]) == 7
    assert all(run["train_samples"] == 512 for run in data["runs"])
    assert data["work"]["train_gflop"] > 0


# Run ids are hashes of RunSpec.identity(): every store relies on them, so a refactor of
# how a config is validated or expanded must leave them exactly as they are. Pinned here
# from main before issue 13 (sha256 of the plan's run ids in order, first 16 hex digits).
PINNED_CHOICES = """\
name: pinned
data: {dataset: mnist-sample, train_limit: 256, test_limit: 256, download: false}
model: {width: 4, depth: 2, bias: 0.1}
train: {seeds: [0, 1]}
grid:
  init: [he, {name: kaiming_uniform, nonlinearity: auto}, {name: xavier_normal, gain: auto}, {name: uniform, a: -0.1, b: 0.1}]
  activation: [relu, {name: leaky_relu, negative_slope: 0.2}, {name: hardtanh, min_val: -2.0}]
  bias: [zeros, {name: normal, std: 0.05}]
exclude:
  - {init: he, activation: hardtanh}
"""


@pytest.mark.parametrize("config, n_runs, first, last, digest", [
    ("smoke", 7, "35e5d7166d42790a", "8fb1df69345a96c6", "30db47721df282ea"),
    ("grid", 144, "7169cd80169e41e8", "2f7ed16c893331c5", "e3c6817f28c0e164"),
    ("pinned", 44, "b133ea70d249014d", "28e78a76b9385bb0", "733ba3be8cdfdb45"),
])
def test_plan_run_ids_are_pinned(tmp_path, config, n_runs, first, last, digest):
    if config == "pinned":
        cfg = yaml.safe_load(PINNED_CHOICES)
    else:
        cfg = yaml.safe_load((REPO / f"configs/{config}.yaml").read_text())
    cfg["data"].update(root=str(tmp_path), download=False)  # no network: grid falls back to mnist-sample
    (tmp_path / f"{config}.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    result = runner.invoke(app, ["plan", str(tmp_path / f"{config}.yaml"), "--format", "json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    ids = [run["run_id"] for run in data["runs"]]
    assert (len(ids), ids[0], ids[-1]) == (n_runs, first, last)
    assert hashlib.sha256(" ".join(ids).encode()).hexdigest()[:16] == digest
    if config == "pinned":  # a choice's label: its name and the parameters not at their default
        assert data["axes"] == {
            "init": ["he", "kaiming_uniform(nonlinearity=auto)", "xavier_normal(gain=auto)", "uniform(a=-0.1, b=0.1)"],
            "activation": ["relu", "leaky_relu(negative_slope=0.2)", "hardtanh(min_val=-2.0)"],
            "bias": ["zeros", "normal(std=0.05)"]}


def test_plan_table_for_the_default_study(tmp_path):
    # plan resolves the data as run does: with download off and an empty root, no network
    cfg = yaml.safe_load((REPO / "configs/grid.yaml").read_text())
    cfg["data"].update(root=str(tmp_path), download=False)
    (tmp_path / "grid.yaml").write_text(yaml.safe_dump(cfg))
    result = runner.invoke(app, ["plan", str(tmp_path / "grid.yaml")])
    assert result.exit_code == 0, result.output
    assert "init-activation-depth" in result.stdout
    assert "144 runs" in result.stdout  # 6 inits x 4 activations x 3 depths x 2 seeds


def test_list_inits_json_has_the_required_names():
    result = runner.invoke(app, ["list-inits", "--format", "json"])
    names = {e["name"] for e in json.loads(result.stdout)}
    required = {"uniform", "normal", "xavier_uniform", "xavier_normal", "kaiming_uniform", "kaiming_normal",
                "orthogonal", "trunc_normal", "lecun_normal", "lecun_uniform", "delta_orthogonal", "zeros",
                "pytorch_default", "uniform_inv_sqrt_n", "std_normal", "gaussian_inv_sqrt_n", "he", "he_as_written"}
    assert required <= names == {e.name for e in list_inits()}
    table = runner.invoke(app, ["list-inits"])
    assert table.exit_code == 0 and "he_as_written" in table.stdout


def test_list_activations_json_gains():
    rows = {r["name"]: r for r in json.loads(runner.invoke(app, ["list-activations", "-f", "json"]).stdout)}
    assert rows["relu"]["gain"] == pytest.approx(2**0.5, rel=1e-6)
    assert rows["tanh"]["gain"] == pytest.approx(5 / 3, rel=1e-6)
    assert rows["gelu"]["gain_source"] == "1/sqrt(E[phi(z)^2])"
    assert set(rows) == {"sigmoid", "tanh", "relu", "leaky_relu", "elu", "selu", "gelu", "silu", "softplus",
                         "softsign", "mish", "hardtanh", "identity"}


def _table_rows(command: str) -> dict[str, list[str]]:
    """``initsweep COMMAND``'s table through the real entry point, wide enough that no cell
    wraps: each row's cells by its first cell (the name)."""
    proc = subprocess.run([sys.executable, "-m", "initsweep", command], capture_output=True, text=True, cwd=REPO,
                          env={**os.environ, "COLUMNS": "1000", "NO_COLOR": "1"})
    assert proc.returncode == 0, proc.stderr
    rows = [[c.strip() for c in line.split("│")[1:-1]] for line in proc.stdout.splitlines() if line.startswith("│")]
    return {r[0]: r for r in rows}


def test_list_commands_print_registry_texts_verbatim():
    """Brackets are text, not rich markup: ``w ~ U[a, b]`` was printed ``w ~ U``, ``1/sqrt(E[phi(z)^2])``
    ``1/sqrt(E)`` and trunc_normal's formula ended at "truncated to". Every cell, every entry."""
    from initsweep.activations import list_activations

    inits = _table_rows("list-inits")
    expected = {e.name: [e.name, e.formula, ", ".join(p.describe() for p in e.params), e.description]
                for e in list_inits()}
    assert inits == expected
    assert inits["uniform"][1] == "w ~ U[a, b]" and inits["trunc_normal"][1] == "w ~ N(mean, std^2) truncated to [a, b]"
    acts = _table_rows("list-activations")
    assert {name: [row[1], row[4], row[5]] for name, row in acts.items()} == {
        a.name: [a.formula, "calculate_gain" if a.gain_key else "1/sqrt(E[phi(z)^2])",
                 ", ".join(p.describe() for p in a.params)] for a in list_activations()}
    assert acts["gelu"][4] == "1/sqrt(E[phi(z)^2])"


def test_he_as_written_is_twice_hes_variance():
    """The tutorial's misprint (std 2/sqrt(n)) is sqrt(2) times He's std, 2 times its variance:
    what list-inits says of it, from the declared moments (which tests/test_inits.py samples)."""
    from initsweep.inits import get_init

    for shape in ((64, 32, 3, 3), (10, 64)):
        (_, misprint), (_, he) = (get_init(n).moments(shape, {}, 1.0) for n in ("he_as_written", "he"))
        assert misprint / he == pytest.approx(2.0, rel=1e-12)
    described = {e["name"]: e["description"] for e in json.loads(runner.invoke(app, ["list-inits", "-f", "json"]).stdout)}
    assert "sqrt(2) times He's std, twice its variance" in described["he_as_written"]


def test_version_and_short_help():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and __version__ in result.stdout
    for args in (["-h"], ["plan", "-h"], ["list-inits", "-h"]):
        result = runner.invoke(app, args)
        assert result.exit_code == 0 and "Usage" in result.stdout


def test_usage_error_exits_2():
    result = runner.invoke(app, ["plan"])
    assert result.exit_code == 2
    result = runner.invoke(app, ["list-inits", "--format", "xml"])
    assert result.exit_code == 2


@pytest.mark.parametrize("args,message", [
    (["run", "configs/smoke.yaml", "--workers", "0"], "error: python -m initsweep run: Invalid value for '--workers'"),
    (["run"], "error: python -m initsweep run: Missing argument 'config'"),
    (["nosuchcommand"], "error: python -m initsweep: No such command 'nosuchcommand'"),
])
def test_usage_errors_are_one_line_and_exit_2(args, message):
    """Click's own usage errors, through the real entry point: one line, no box, exit 2."""
    proc = subprocess.run([sys.executable, "-m", "initsweep", *args], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[1])
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()] and proc.stderr.startswith(message), proc.stderr
    assert proc.stdout == ""


def test_bare_initsweep_prints_help_and_exits_2():
    """The real entry point with no arguments: the help (on stdout), exit 2, no error line."""
    proc = subprocess.run([sys.executable, "-m", "initsweep"], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 2, proc.stderr
    assert "Usage:" in proc.stdout and "list-inits" in proc.stdout
    assert proc.stderr.strip() == ""


def test_main_is_the_app():
    """The console script ``initsweep.cli:main`` is the Typer app itself, no wrapper."""
    from initsweep import cli

    assert cli.main is app


