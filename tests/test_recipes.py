"""The recipes of docs/architecture.md hold: a new initializer or activation is one registry
entry, and nothing else has to change for plan, run, the store, the probe and the report to
take it; likewise a new report format. The entries are registered by the test alone and
removed afterwards."""

from __future__ import annotations

import json
import math
from io import StringIO
from pathlib import Path

import pandas as pd
import pytest
import yaml
from torch import nn
from typer.testing import CliRunner

from initsweep import activations, inits
from initsweep.cli import app
from initsweep.report import formats
from initsweep.results.read import load_results
from initsweep.results.store import Store

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
