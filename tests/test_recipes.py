"""The recipes of docs/architecture.md hold: a new initializer, activation, architecture,
executor or report format is one registry entry, and nothing else has to change for plan, run,
the store, the probe and the report to take it. The entries are registered by the test alone
and removed afterwards."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from io import StringIO
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from torch import nn
from typer.testing import CliRunner

from initsweep import activations, inits, models
from initsweep.cli import app
from initsweep.config import expand, validate
from initsweep.report import formats
from initsweep.results.read import load_results
from initsweep.results.store import Store
from initsweep.train import memory_format_for

runner = CliRunner()
SCALE = 0.5  # the new init draws N(0, SCALE / fan_in)


@pytest.fixture
def new_entries():
    """What a contributor would add to inits.py and activations.py, and nothing more."""
    init = inits.Initializer(
        "half_lecun_normal",
        lambda t, p, g, gen: inits.variance_scaling_(t, scale=SCALE, mode="fan_in", distribution="normal",
                                                     generator=gen),
        "Half LeCun's variance (a test entry).", "w ~ N(0, 0.5/fan_in)",
        lambda shape, p, g: (0.0, SCALE / inits.fans(shape)[0]))
    act = activations.Activation("scaled_softsign", lambda: nn.Sequential(nn.Softsign(), nn.Hardtanh(-0.5, 0.5)),
                                 "softsign clipped at +-1/2 (a test entry).", "clip(x/(1+|x|), -1/2, 1/2)",
                                 "saturating")
    assert init.name not in inits._REGISTRY and act.name not in activations._REGISTRY
    inits._register(init)
    activations._register(act)
    yield init, act
    del inits._REGISTRY[init.name], activations._REGISTRY[act.name]


def test_a_new_initializer_and_activation_are_one_registry_entry_each(tmp_path: Path, new_entries):
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({
        "name": "recipe", "data": {"dataset": "mnist-sample", "train_limit": 256, "test_limit": 256},
        "model": {"arch": "plain", "width": 8, "depth": 2, "head": "flatten"},
        "train": {"epochs": 1, "batch_size": 64},
        "grid": {"init": ["half_lecun_normal", "he"], "activation": ["scaled_softsign", "relu"]},
        "diagnostics": {"phases": ["init"]}}))
    planned = runner.invoke(app, ["plan", str(config), "-f", "json"])
    assert planned.exit_code == 0, planned.output
    ran = runner.invoke(app, ["run", str(config), "--results", str(tmp_path / "res"), "--device", "cpu",
                              "--workers", "1", "--threads", "1"])
    assert ran.exit_code == 0, ran.output
    runs = load_results(tmp_path / "res")
    assert sorted(runs.run_id) == sorted(r["run_id"] for r in json.loads(planned.stdout)["runs"])
    assert set(runs.init) == {"half_lecun_normal", "he"} and set(runs.activation) == {"scaled_softsign", "relu"}
    assert (runs.status == "ok").all()
    # the stored weights were drawn by the new entry: std sqrt(SCALE / fan_in) per layer
    row_ids = runs.loc[runs.init == "half_lecun_normal", "row_id"].tolist()
    with Store(tmp_path / "res", create=False) as store:
        layers = store.layers_frame(row_ids)
    assert len(layers) == 2 * 2  # two runs, two conv layers each, at init
    for layer in layers.itertuples():
        weights = layer.fan_in * 8  # out channels = width
        expected = math.sqrt(SCALE / layer.fan_in)
        assert layer.weight_std == pytest.approx(expected, rel=6 / math.sqrt(2 * weights))
    listed = runner.invoke(app, ["list-inits", "-f", "json"])
    assert "half_lecun_normal" in {e["name"] for e in json.loads(listed.stdout)}
    report = runner.invoke(app, ["report", "--results", str(tmp_path / "res"), "-f", "csv", "--by", "init,activation"])
    assert report.exit_code == 0 and "half_lecun_normal" in report.stdout and "scaled_softsign" in report.stdout


@pytest.fixture
def new_executor():
    """What a contributor would add for an executor: one registered class, nothing more. This
    one trains the tasks in this process in reverse order, so the test can tell it ran."""
    from initsweep.sweep import executors
    from initsweep.train import run_safely

    assert "backwards" not in executors.EXECUTORS

    @executors.register_executor("backwards", help="this process, last task first (a test entry)")
    class Backwards(executors.Executor):
        def execute(self, tasks, ledger, observer, may_start):
            for task in reversed(tasks):
                for spec in ledger.claim(task.specs):
                    observer.run_started(spec)
                    ledger.finish(spec, run_safely(spec, self.execution.device, source=task.source))

    yield Backwards
    del executors.EXECUTORS["backwards"]


def test_a_new_executor_is_one_registered_class(tmp_path: Path, new_executor):
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({
        "name": "recipe", "data": {"dataset": "mnist-sample", "train_limit": 128, "test_limit": 128},
        "model": {"arch": "mlp", "width": 8, "depth": 1}, "train": {"epochs": 1, "batch_size": 64},
        "grid": {"init": ["he", "xavier_uniform", "orthogonal"]}, "diagnostics": {"enabled": False}}))
    results = tmp_path / "res"
    planned = json.loads(runner.invoke(app, ["plan", str(config), "-f", "json"]).stdout)["runs"]
    ran = runner.invoke(app, ["run", str(config), "--results", str(results), "--executor", "backwards",
                              "--device", "cpu"])
    assert ran.exit_code == 0, ran.output
    runs = load_results(results).sort_values("row_id")
    assert (runs.status == "ok").all() and len(runs) == 3
    # claimed last task first: the rows are the plan's runs in reverse (equal costs keep plan order)
    assert runs.run_id.tolist() == [r["run_id"] for r in reversed(planned)]
    again = runner.invoke(app, ["run", str(config), "--results", str(results), "--executor", "backwards"])
    assert again.exit_code == 0 and len(load_results(results)) == 3  # resume holds: nothing rerun
    # not a cluster executor: the cluster options are refused, as with local
    refused = runner.invoke(app, ["run", str(config), "--results", str(results), "--executor", "backwards",
                                  "--num-cpus", "2"])
    assert refused.exit_code == 2 and "need --executor ray" in refused.stderr


@pytest.fixture
def new_arch():
    """What a contributor would add to models.py for a new architecture, and nothing more."""
    def one_hidden(width, activation):
        hidden = models.Block(nn.Linear(math.prod(models.IMAGE_SHAPE), width), activation(), flatten_input=True)
        return models.Net([hidden], nn.Linear(width, models.N_CLASSES), global_pool=False)

    arch = models.Arch("one_hidden", one_hidden, "One hidden layer of width units (a test entry).", ("width",))
    assert arch.name not in {a.name for a in models.list_archs()}
    models._register(arch)
    yield arch
    del models._REGISTRY[arch.name]


def test_a_new_architecture_is_one_registry_entry(tmp_path: Path, new_arch):
    config = tmp_path / "c.yaml"
    raw = {"name": "arch-recipe", "data": {"dataset": "mnist-sample", "train_limit": 256, "test_limit": 256},
           "model": {"arch": "mlp", "width": 8}, "train": {"epochs": 1, "batch_size": 64},
           "grid": {"arch": ["one_hidden", "mlp"], "depth": [1, 2]}, "diagnostics": {"phases": ["init"]}}
    config.write_text(yaml.safe_dump(raw))
    planned = runner.invoke(app, ["plan", str(config), "-f", "json"])
    assert planned.exit_code == 0, planned.output
    plan = json.loads(planned.stdout)
    # the entry says one_hidden does not use depth: its two depths are one run
    assert [(r["arch"], r["depth"]) for r in plan["runs"]] == [("one_hidden", 1), ("mlp", 1), ("mlp", 2)]
    assert "arch one_hidden does not use depth" in plan["notes"]
    assert plan["runs"][0]["params"] == 784 * 8 + 8 + 8 * 10 + 10  # measured on the meta device
    ran = runner.invoke(app, ["run", str(config), "--results", str(tmp_path / "res"), "--device", "cpu",
                              "--workers", "1", "--threads", "1"])
    assert ran.exit_code == 0, ran.output
    runs = load_results(tmp_path / "res")
    assert sorted(runs.run_id) == sorted(r["run_id"] for r in plan["runs"])
    assert sorted(runs.arch) == ["mlp", "mlp", "one_hidden"] and (runs.status == "ok").all()
    mine = runs[runs.arch == "one_hidden"]
    assert mine.depth.tolist() == [4] and mine.width.tolist() == [8]  # unused depth pinned to its default
    with Store(tmp_path / "res", create=False) as store:
        layers = store.layers_frame(mine.row_id.tolist())
    assert layers.fan_in.tolist() == [784]  # the one hidden layer, probed at init
    report = runner.invoke(app, ["report", "--results", str(tmp_path / "res"), "-f", "csv", "--by", "arch"])
    assert report.exit_code == 0 and "one_hidden" in report.stdout
    # not a conv net: no channels_last; the plain CNN still gets it
    (spec,) = [r for r in expand(validate(raw)).runs if r.model.arch == "one_hidden"]
    assert memory_format_for(spec, torch.device("cpu")) == torch.contiguous_format
    plain = expand(validate({**raw, "model": {"arch": "plain", "width": 4}, "grid": {}})).runs[0]
    assert memory_format_for(plain, torch.device("cpu")) == torch.channels_last

    probed = runner.invoke(app, ["probe", "--arch", "one_hidden", "--width", "8", "--init", "he", "--activation", "relu",
                                 "--batch-size", "16", "-f", "json", "--plot", str(tmp_path / "fig")])
    assert probed.exit_code == 0, probed.output
    (entry,) = json.loads(probed.stdout)
    assert entry["settings"]["arch"] == "one_hidden" and [l["fan_in"] for l in entry["layers"]] == [784]
    assert [p.name for p in (tmp_path / "fig").iterdir()] == ["probe_one_hidden_w8.png"]
    table = runner.invoke(app, ["probe", "--arch", "one_hidden", "--width", "8", "--init", "he", "--batch-size", "16",
                                "--seeds", "1"])
    assert table.exit_code == 0 and "he + relu · one_hidden width 8 · seed 0" in table.stdout

    # a wrong name is still one line and exit 2, the new entry among the names it lists
    expected = "model.arch: input should be 'plain', 'tutorial', 'mlp' or 'one_hidden' (got 'one_hiden')"
    refused = runner.invoke(app, ["probe", "--arch", "one_hiden"])
    assert refused.exit_code == 2 and refused.stderr.strip().splitlines() == [f"error: flags: {expected}"]
    config.write_text(yaml.safe_dump({**raw, "model": {"arch": "one_hiden"}, "grid": {}}))
    refused = runner.invoke(app, ["plan", str(config)])
    assert refused.exit_code == 2 and refused.stderr.strip().splitlines() == [f"error: {config}: {expected}"]


def test_the_cli_keeps_no_copy_of_the_arch_names():
    """`--arch` is checked by the config against the registry; importing the CLI loads no torch."""
    code = "import sys, initsweep.cli, initsweep.cli.probe as p; print('torch' in sys.modules, hasattr(p, 'ArchChoice'))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "False False", out.stderr


@pytest.fixture
def tsv_format():
    """What a contributor would add to report/formats.py for a new report format: a writer
    and its registry entry, nothing more."""
    def write_tsv(report, figures, source):
        return formats.report_frame(report).to_csv(sep="\t", index=False)

    entry = formats.FileFormat("tsv", write_tsv, "tab-separated (a test entry)", suffixes=(".tsv",))
    assert entry.name not in {f.name for f in formats.list_report_formats()}
    formats._register_report_format(entry)
    yield entry
    del formats._REPORT_FORMATS[entry.name]


def test_a_new_report_format_is_one_registry_entry(tmp_path: Path, tsv_format):
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({
        "name": "recipe", "data": {"dataset": "mnist-sample", "train_limit": 256, "test_limit": 256},
        "model": {"arch": "plain", "width": 4, "depth": 1, "head": "flatten"},
        "train": {"epochs": 1, "batch_size": 64}, "grid": {"init": ["he", "orthogonal"]},
        "diagnostics": {"enabled": False}}))
    res = str(tmp_path / "res")
    ran = runner.invoke(app, ["run", str(config), "--results", res, "--device", "cpu", "--workers", "1",
                              "--threads", "1", "--quiet"])
    assert ran.exit_code == 0, ran.output
    tsv = runner.invoke(app, ["report", "--results", res, "--format", "tsv"])
    assert tsv.exit_code == 0, tsv.output
    csv = runner.invoke(app, ["report", "--results", res, "--format", "csv"]).stdout
    assert tsv.stdout.splitlines()[0].split("\t")[:2] == ["metric", "init"] and len(tsv.stdout.splitlines()) == 3
    pd.testing.assert_frame_equal(pd.read_csv(StringIO(tsv.stdout), sep="\t"), pd.read_csv(StringIO(csv)))
    # --output's suffix implies it: the same bytes in the file, nothing on stdout
    out = runner.invoke(app, ["report", "--results", res, "--output", str(tmp_path / "r.tsv")])
    assert out.exit_code == 0 and out.stdout == ""
    assert (tmp_path / "r.tsv").read_text(encoding="utf-8") == tsv.stdout
    assert "<table|markdown|csv|json|html|tsv>" in runner.invoke(app, ["report", "-h"], env={"COLUMNS": "200"}).stdout
    # a name that is not registered: one usage line, exit 2, the nearest name suggested
    bad = runner.invoke(app, ["report", "--results", res, "--format", "tsvv"])
    assert bad.exit_code == 2 and bad.stdout == ""
    assert bad.stderr.splitlines() == [
        "error: initsweep report: Invalid value for '--format' / '-f': Value error, 'tsvv' is not one of 'table', "
        "'markdown', 'csv', 'json', 'html', 'tsv' — did you mean 'tsv'? (see initsweep report -h)"]
