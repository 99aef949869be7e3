"""CUDA checks; skipped without a GPU. `benchmarks/bench_gpu.sh` runs them on a lent GPU."""

from __future__ import annotations

import pytest
import torch

from initsweep.batched import run_group
from initsweep.config import expand, validate
from initsweep.train import run

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

DATA = {"dataset": "mnist-sample", "train_limit": 1024, "test_limit": 512}


def specs(train=None, inits=("he", "xavier_uniform", "orthogonal")):
    cfg = validate({"name": "g", "data": DATA, "model": {"arch": "plain", "width": 16, "depth": 4, "head": "flatten"},
                    "train": {"epochs": 2, "batch_size": 64, "seeds": [0, 1], **(train or {})},
                    "grid": {"init": list(inits)}})
    return expand(cfg).runs


def test_cuda_run_matches_the_cpu_run():
    """Same initial weights (drawn on the CPU) and data order: the curves agree to float tolerance."""
    spec = specs()[0]
    cpu, gpu = run(spec, "cpu"), run(spec, "cuda")
    assert gpu.device.startswith("cuda") and gpu.status == cpu.status == "ok"
    assert gpu.epochs[0].train_loss == pytest.approx(cpu.epochs[0].train_loss, rel=1e-3)
    assert gpu.test_loss == pytest.approx(cpu.test_loss, rel=1e-2)


def test_vmapped_group_on_cuda_matches_sequential_on_cuda():
    group = specs()
    batched = run_group(group, "cuda")
    for spec, result in zip(group, batched):
        alone = run(spec, "cuda")
        assert result.batched and result.steps == alone.steps
        assert result.test_loss == pytest.approx(alone.test_loss, rel=1e-3)


def test_divergence_on_cuda_is_found_at_the_same_step_as_on_cpu():
    group = specs({"optimizer": "sgd", "lr": 0.2, "momentum": 0.9}, inits=("he", {"name": "normal", "std": 1.0}))
    cuda = run_group(group, "cuda")
    cpu = [run(s, "cpu") for s in group]
    assert [r.status for r in cuda] == [r.status for r in cpu]
    assert [r.diverged_step for r in cuda] == [r.diverged_step for r in cpu]


def test_bf16_precision_trains_and_is_recorded():
    spec = specs({"precision": "bf16"})[0]
    result = run(spec, "cuda")
    assert result.status == "ok" and result.test_acc > 0.3
    assert spec.settings()["precision"] == "bf16"
