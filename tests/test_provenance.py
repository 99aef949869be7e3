"""What produced a run, and what it left besides its numbers (issue 17): the git checkout a
sweep was started from and the machine that trained (columns, ``show``, ``export``), a run's
warnings and a failed run's traceback, and its weights (``train.save``) loaded back into the
model its RunSpec builds, whose accuracy is recomputed image by image.

Every run goes through the real CLI into a real store, from a real git repository made here.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from test_ci import TINY, invoke
from tolerances import IMAGES

from initsweep import inits
from initsweep.build import build_initialized_model
from initsweep.config import expand, validate
from initsweep.provenance import GitState, git_state
from initsweep.results.checkpoints import checkpoint_path, load_model, run_spec
from initsweep.results.read import load_results
from initsweep.train import EVAL_BATCH_CPU, memory_format_for, splits_for

CPU = torch.device("cpu")


def write(path: Path, name: str, grid: dict, train: dict | None = None, model: dict | None = None,
          data: dict | None = None) -> Path:
    """A tiny sweep's config (one epoch, width 4, no diagnostics), with these sections' changes."""
    path.write_text(yaml.safe_dump({"name": name, "data": data or TINY,
                                    "model": {"arch": "plain", "width": 4, "head": "flatten", **(model or {})},
                                    "train": {"epochs": 1, "batch_size": 64, **(train or {})}, "grid": grid,
                                    "diagnostics": {"enabled": False}}))
    return path


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.org", *args],
                          capture_output=True, text=True, check=True).stdout.strip()


def checkout(repo: Path) -> Path:
    """A clean git checkout with one commit, made at ``repo``."""
    repo.mkdir()
    git(repo, "init", "-q")
    (repo / "model.py").write_text("width = 4\n")
    git(repo, "add", "model.py")
    git(repo, "commit", "-q", "-m", "first")
    return repo


@contextmanager
def working_directory(folder: Path):
    """``initsweep run`` started from ``folder`` (the CLI runs in this process)."""
    before = Path.cwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(before)


def run(config: Path, results: Path, *more: str) -> None:
    result = invoke("run", str(config), "--results", str(results), "--device", "cpu", "--threads", "1",
                    "--workers", "1", "-q", *more)
    assert result.exit_code == 0, result.output


@pytest.fixture(scope="module")
def stored(tmp_path_factory):
    """Two sweeps in one results folder, started from a clean git checkout: ``prov-final``
    (depth 1, ``save: final``) and ``prov-best`` (depth 2, ``save: best``, four epochs of SGD at
    lr 1.0, whose validation accuracy peaked at epoch 2 of 4 on the machine this was written on:
    the test holds wherever it peaks)."""
    base = tmp_path_factory.mktemp("prov")
    repo = checkout(base / "repo")
    final = write(base / "final.yaml", "prov-final", {"depth": [1]}, {"save": "final"})
    best = write(base / "best.yaml", "prov-best", {"depth": [2]}, {"save": "best", "epochs": 4, "optimizer": "sgd", "lr": 1.0})
    with working_directory(repo):
        run(final, base / "res")
        run(best, base / "res")
    runs = load_results(base / "res").set_index("sweep")
    return base, repo, runs


def test_every_run_records_the_checkout_and_the_machine(stored):
    base, repo, runs = stored
    assert len(runs) == 2 and (runs.status == "ok").all()
    assert set(runs.git_commit) == {git(repo, "rev-parse", "HEAD")} and set(runs.git_dirty) == {0}
    assert set(runs.threads) == {1}  # --threads 1
    assert set(runs.numpy_version) == {np.__version__} and set(runs.torch_version) == {torch.__version__}
    assert set(runs.torchvision_version) == {importlib.metadata.version("torchvision")}
    assert runs.gpu_name.isna().all()  # trained on the CPU
    assert set(runs.cuda_version.fillna("none")) == {torch.version.cuda or "none"}
    if Path("/proc/cpuinfo").is_file():  # read here independently of initsweep's reader
        names = [line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                 if line.startswith("model name")]
        if names:
            assert set(runs.cpu_model) == {names[0]}


def test_show_prints_the_provenance(stored):
    base, repo, runs = stored
    shown = invoke("show", runs.loc["prov-final", "run_id"], "--results", str(base / "res"))
    assert shown.exit_code == 0, shown.output
    lines = {line.split(None, 1)[0]: line.split(None, 1)[1].strip() for line in shown.stdout.splitlines()
             if len(line.split(None, 1)) == 2}
    assert lines["git_commit"] == git(repo, "rev-parse", "HEAD") and lines["git_dirty"] == "no"
    assert lines["numpy_version"] == np.__version__ and lines["threads"] == "1"
    assert lines["checkpoint"] == f"checkpoints/{runs.loc['prov-final', 'run_id']}.pt (epoch 1)"


def test_export_csv_has_the_provenance_columns(stored):
    base, repo, runs = stored
    out = base / "runs.csv"
    result = invoke("export", "--results", str(base / "res"), "--format", "csv", "--output", str(out))
    assert result.exit_code == 0, result.output
    exported = pd.read_csv(out)
    assert len(exported) == 2
    for column in ("git_commit", "git_dirty", "cpu_model", "threads", "gpu_name", "cuda_version", "cudnn_version",
                   "torchvision_version", "numpy_version", "warnings", "traceback", "checkpoint"):
        assert column in exported.columns, column
    assert set(exported.git_commit) == {git(repo, "rev-parse", "HEAD")} and set(exported.git_dirty) == {0}


def test_a_dirty_checkout_and_a_folder_without_git(stored, tmp_path, monkeypatch):
    base, repo, _ = stored
    config = write(tmp_path / "c.yaml", "prov-dirty", {"depth": [1]})
    (repo / "model.py").write_text("width = 8\n")  # a change not committed
    try:
        with working_directory(repo):
            run(config, tmp_path / "dirty")
    finally:
        git(repo, "checkout", "-q", "model.py")
    (row,) = load_results(tmp_path / "dirty").itertuples()
    assert row.git_commit == git(repo, "rev-parse", "HEAD") and row.git_dirty == 1
    # not a checkout, and no git on the PATH at all: no provenance of code, no error
    plain = tmp_path / "plain"
    plain.mkdir()
    assert git_state(plain) == GitState()
    monkeypatch.setenv("PATH", str(tmp_path / "no-bin"))
    assert git_state(repo) == GitState()
    with working_directory(plain):
        run(config, tmp_path / "nogit")
    (row,) = load_results(tmp_path / "nogit").itertuples()
    assert row.status == "ok" and pd.isna(row.git_commit) and pd.isna(row.git_dirty)


def test_save_stays_out_of_the_run_id():
    """Saving weights does not change what a run computes, so its id is that of the same
    config without ``save`` (and the shipped studies' pinned ids hold: tests/test_columns.py)."""
    ids = {mode: [s.run_id for s in expand(validate({"name": "s", "data": TINY, "train": {"save": mode}})).runs]
           for mode in ("none", "final", "best")}
    without = [s.run_id for s in expand(validate({"name": "s", "data": TINY})).runs]
    assert ids == {"none": without, "final": without, "best": without}


def test_a_bad_save_is_one_line_naming_the_key(tmp_path):
    config = write(tmp_path / "c.yaml", "bad", {"depth": [1]}, {"save": "last"})
    result = invoke("run", str(config), "--results", str(tmp_path / "res"), "--device", "cpu")
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [
        f"error: {config}: train.save: input should be 'none', 'final' or 'best' (got 'last')"]
    assert not (tmp_path / "res").exists()


def correct(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> int:
    """Images ``model`` classifies right, in the batches training evaluates in."""
    with torch.no_grad():
        return sum(int((model(x[i:i + EVAL_BATCH_CPU]).argmax(1) == y[i:i + EVAL_BATCH_CPU]).sum())
                   for i in range(0, len(y), EVAL_BATCH_CPU))


def test_the_final_checkpoint_is_the_model_that_was_tested(stored):
    """The README's three lines load it; its test accuracy, recomputed, is the stored one."""
    base, _, runs = stored
    run_id, results = runs.loc["prov-final", "run_id"], base / "res"
    assert runs.loc["prov-final", "checkpoint"] == f"checkpoints/{run_id}.pt"
    spec = run_spec(results, run_id[:8])  # the stored run's RunSpec
    model = build_initialized_model(spec, torch.Generator())
    model.load_state_dict(torch.load(checkpoint_path(results, spec.run_id)))
    assert spec.run_id == run_id
    model = model.eval().to(memory_format=memory_format_for(spec, CPU))
    _, splits = splits_for(spec, CPU)
    stored_row = runs.loc["prov-final"]
    assert correct(model, splits.test_x, splits.test_y) == round(stored_row.test_acc * stored_row.n_test)
    # load_model does the same
    again = load_model(results, run_id)
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), model.state_dict().values()))


def test_the_best_checkpoint_holds_the_best_validation_epoch(stored):
    base, _, runs = stored
    row = runs.loc["prov-best"]
    shown = invoke("show", row.run_id, "--results", str(base / "res"), "-f", "json")
    assert shown.exit_code == 0, shown.output
    epochs = pd.DataFrame(json.loads(shown.stdout)["epochs"])
    best_epoch = int(epochs.epoch[epochs.val_acc.idxmax()])  # the first epoch of the highest accuracy
    assert row.checkpoint_epoch == best_epoch and row.best_val_acc == epochs.val_acc.max()
    spec = run_spec(base / "res", row.run_id)
    model = load_model(base / "res", row.run_id).to(memory_format=memory_format_for(spec, CPU))
    _, splits = splits_for(spec, CPU)
    assert correct(model, splits.val_x, splits.val_y) == round(row.best_val_acc * row.n_val)


MESSAGE = "this init is only\na test"  # stored on one line: "this init is only a test"


@pytest.fixture
def warning_init():
    """An initializer that warns each time it is applied (registered by the test alone)."""
    def init(t, p, g, gen):
        warnings.warn(MESSAGE, UserWarning)
        return inits.variance_scaling_(t, scale=1.0, mode="fan_in", distribution="normal", generator=gen)

    entry = inits.Initializer("warning_normal", init, "LeCun normal, with a warning (a test entry).",
                              "w ~ N(0, 1/fan_in)", lambda shape, p, g: (0.0, 1.0 / inits.fans(shape)[0]))
    inits._register(entry)
    yield entry
    del inits._REGISTRY[entry.name]


def test_a_runs_warnings_are_stored_and_shown(tmp_path, warning_init):
    config = write(tmp_path / "c.yaml", "warns", {"depth": [1, 2]}, model={"init": "warning_normal"})
    run(config, tmp_path / "res")
    runs = load_results(tmp_path / "res")
    line = next(i for i, text in enumerate(Path(__file__).read_text().splitlines(), 1)
                if "warnings.warn(MESSAGE" in text)
    # each run its own, though the second raised it from the same line in the same process;
    # once per run, though each layer's init raised it
    expected = f"UserWarning: this init is only a test (test_provenance.py:{line})"
    assert list(runs.warnings) == [expected] * 2
    shown = invoke("show", runs.run_id[0], "--results", str(tmp_path / "res"))
    assert shown.exit_code == 0 and f"warnings:\n{expected}" in shown.stdout


def test_a_failed_run_stores_its_full_traceback(tmp_path):
    """A real failure (as tests/test_run.py makes one): MNIST files that cannot be read."""
    raw = tmp_path / "data" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for stem in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (raw / stem).write_bytes(b"\x00\x00\x08\x03\x00\x00\x00\x05")
    config = write(tmp_path / "c.yaml", "fails", {"depth": [1]}, data={"dataset": "mnist", "root": str(tmp_path / "data")})
    result = invoke("run", str(config), "--results", str(tmp_path / "res"), "--device", "cpu", "-q")
    assert result.exit_code == 1, result.output
    (row,) = load_results(tmp_path / "res").itertuples()
    assert row.status == "failed" and row.error.startswith("DataError: ")
    trace = row.traceback.splitlines()
    assert trace[0] == "Traceback (most recent call last):"
    frames = [line.rsplit(" in ", 1)[1] for line in trace if line.lstrip().startswith('File "')]
    assert frames[:3] == ["run_safely", "run", "splits_for"]  # the chain from the run to the failure
    assert trace[-1].endswith(row.error.split(": ", 1)[1].rsplit(" (at ", 1)[0])  # the last line is the error
    shown = invoke("show", row.run_id, "--results", str(tmp_path / "res"))
    assert shown.exit_code == 0 and "traceback:\nTraceback (most recent call last):" in shown.stdout
    assert "in splits_for" in shown.stdout


@pytest.mark.parametrize("how", [["--workers", "2"], ["--workers", "1", "--vmap", "on"]], ids=["pool", "vmapped"])
def test_weights_come_back_from_pool_workers_and_vmapped_groups(tmp_path, how):
    """The process that owns the results folder writes the checkpoints: from a worker process's
    result (pickled through its pipe), and from each model of a vmapped group. Recomputed in
    this process with a plain model, so within tests/tolerances.py's images."""
    config = write(tmp_path / "c.yaml", "paths", {"init": ["he", "orthogonal"]}, {"save": "final"})
    result = invoke("run", str(config), "--results", str(tmp_path / "res"), "--device", "cpu", "--threads", "1",
                    "-q", *how)
    assert result.exit_code == 0, result.output
    runs = load_results(tmp_path / "res")
    assert len(runs) == 2 and list(runs.checkpoint) == [f"checkpoints/{r}.pt" for r in runs.run_id]
    assert set(runs.batched) == {int("--vmap" in how)}
    weights = []
    for row in runs.itertuples():
        spec = run_spec(tmp_path / "res", row.run_id)
        model = load_model(tmp_path / "res", row.run_id).to(memory_format=memory_format_for(spec, CPU))
        _, splits = splits_for(spec, CPU)
        assert abs(correct(model, splits.test_x, splits.test_y) - round(row.test_acc * row.n_test)) <= IMAGES
        weights.append(next(iter(model.state_dict().values())))
    assert not torch.equal(*weights)  # each run its own weights


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_cuda_run_records_its_gpu_and_saves_cpu_weights(tmp_path):
    config = write(tmp_path / "c.yaml", "gpu", {"depth": [1]}, {"save": "final"})
    result = invoke("run", str(config), "--results", str(tmp_path / "res"), "--device", "cuda", "-q")
    assert result.exit_code == 0, result.output
    (row,) = load_results(tmp_path / "res").itertuples()
    assert row.gpu_name == torch.cuda.get_device_name(0) and row.cuda_version == torch.version.cuda
    assert row.cudnn_version == str(torch.backends.cudnn.version())
    weights = torch.load(checkpoint_path(tmp_path / "res", row.run_id))
    assert {t.device.type for t in weights.values()} == {"cpu"}  # loadable without a GPU
