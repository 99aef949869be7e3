"""Batched (vmapped) training against plain one-run-at-a-time training, on the CPU."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from initsweep.batched import group_key, group_specs, run_group
from initsweep.config import expand, validate
from initsweep.train import run
from tolerances import LOSS_REL, assert_differ, assert_same_result

DATA = {"dataset": "mnist-sample", "train_limit": 512, "test_limit": 256}
MODEL = {"arch": "plain", "width": 8, "depth": 3, "head": "flatten"}


def specs_for(train: dict, inits: list, model: dict = MODEL, diagnostics: bool = False):
    cfg = validate({"name": "b", "data": DATA, "model": model, "train": {"batch_size": 32, **train},
                    "grid": {"init": inits}, "diagnostics": {"enabled": diagnostics}})
    return expand(cfg).runs


def test_batched_training_matches_sequential_after_several_steps():
    specs = specs_for({"epochs": 2, "seeds": [0, 1]}, ["he", "xavier_uniform", "orthogonal"])
    assert len(group_specs(specs)) == 1
    batched = run_group(specs, "cpu")
    for spec, result in zip(specs, batched):
        alone = run(spec, "cpu")
        assert result.batched and result.steps == 2 * 16
        assert_same_result(result, alone)
    # seeds really differ inside the group (own init, own data order)
    assert_differ(batched[0].epochs[0].train_loss, batched[1].epochs[0].train_loss)


def test_a_diverging_model_is_stopped_without_touching_the_others():
    """SGD lr 0.2, momentum 0.9: N(0, 1) weights diverge at step 2; He and uniform do not."""
    specs = specs_for({"epochs": 2, "optimizer": "sgd", "lr": 0.2, "momentum": 0.9},
                      ["he", {"name": "normal", "std": 1.0}, "uniform_inv_sqrt_n"])
    batched = run_group(specs, "cpu")
    alone = [run(spec, "cpu") for spec in specs]
    assert [r.status for r in batched] == ["ok", "diverged", "ok"]
    assert batched[1].diverged_step == alone[1].diverged_step == 2
    # SGD at lr 0.2 amplifies the last-digit differences of batched kernels (measured 1.5e-4
    # relative on the He model's val loss after 32 steps; one validation image on an Intel
    # Xeon): within the tolerances of any two paths (tests/tolerances.py)
    for result, reference in zip(batched, alone):
        assert_same_result(result, reference)
    # and the healthy models train the same with or without the diverging one in the group
    without = run_group([specs[0], specs[2]], "cpu")
    for result, reference in zip([batched[0], batched[2]], without):
        assert_same_result(result, reference)


def test_max_steps_is_respected():
    specs = specs_for({"epochs": 3, "max_steps": 5}, ["he", "lecun_normal"])
    for result in run_group(specs, "cpu"):
        assert result.steps == 5 and len(result.epochs) == 1


def test_runs_that_differ_beyond_init_and_seed_are_not_grouped():
    specs = specs_for({"epochs": 1, "seeds": [0, 1]}, ["he", "orthogonal"])
    other_lr = specs_for({"epochs": 1, "lr": 0.01}, ["he"])
    deeper = specs_for({"epochs": 1}, ["he"], model={**MODEL, "depth": 4})
    normed = specs_for({"epochs": 1}, ["he"], model={**MODEL, "norm": "batch"})
    groups = group_specs(specs + other_lr + deeper + normed)
    assert [len(g) for g in groups] == [4, 1, 1, 1]
    assert group_key(normed[0]) is None
    with pytest.raises(ValueError, match="share one group_key"):
        run_group(specs + other_lr, "cpu")


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["he", "orthogonal", "lecun_normal"]), st.integers(0, 3),
                          st.sampled_from([2, 3]), st.sampled_from([1e-3, 1e-2])), min_size=1, max_size=30),
       st.integers(1, 7))
def test_group_specs_partitions_exactly(points, max_group):
    specs = []
    for init, seed, depth, lr in points:
        cfg = validate({"name": "p", "data": DATA, "model": {**MODEL, "depth": depth, "init": init},
                        "train": {"lr": lr, "seeds": [seed]}})
        specs.append(expand(cfg).runs[0])
    groups = group_specs(specs, max_group=max_group)
    flat = [s for g in groups for s in g]
    assert sorted(id(s) for s in flat) == sorted(id(s) for s in specs)  # each spec exactly once
    for g in groups:
        assert 1 <= len(g) <= max_group
        assert len({group_key(s) for s in g}) == 1


def test_batched_runs_get_the_same_diagnostics_as_runs_alone():
    specs = specs_for({"epochs": 1, "max_steps": 3}, ["he", "std_normal"], diagnostics=True)
    for result, alone in zip(run_group(specs, "cpu"), [run(s, "cpu") for s in specs]):
        assert result.verdict == alone.verdict
        assert [(l["phase"], l["layer"]) for l in result.layers] == [(l["phase"], l["layer"]) for l in alone.layers]
        for a, b in zip(result.layers, alone.layers):
            # init weights are identical, but the batched forward sums in another order (float32
            # noise, ~1e-6 relative through three layers); trained ones differ like any two paths
            tolerance = 1e-5 if a["phase"] == "init" else LOSS_REL
            assert a["act_std"] == pytest.approx(b["act_std"], rel=tolerance)


def first_epoch(specs, sync_every: int):
    """One epoch of ``specs`` through the shared loop with losses checked every ``sync_every``
    steps (32 on an accelerator), on the CPU; every model sees the same batches."""
    import contextlib

    import torch

    from initsweep.batched import Stacked
    from initsweep.build import build_initialized_model, seed_streams
    from initsweep.data import iterate_batches
    from initsweep.train import Single, TrainState, make_optimizer, splits_for, train_epoch

    cpu, k = torch.device("cpu"), len(specs)
    modules = [build_initialized_model(s, torch.Generator().manual_seed(seed_streams(s.seed)[0])) for s in specs]
    if k == 1:
        model = Single(modules[0], modules[0], contextlib.nullcontext(), cpu)
        opt = make_optimizer(specs[0], modules[0].parameters())
    else:
        model = Stacked(modules, cpu, contextlib.nullcontext())
        opt = make_optimizer(specs[0], model.params.values())
    splits = splits_for(specs[0], cpu)[1]
    state = TrainState.start(k, specs[0], cpu)
    state.sync_every = sync_every
    batches = iterate_batches(splits.train_x, splits.train_y, specs[0].train.batch_size,
                              generator=torch.Generator().manual_seed(0))
    totals = train_epoch(model, ((x if k == 1 else x.expand(k, *x.shape), y) for x, y in batches), opt, state)
    return state, totals


@pytest.mark.parametrize("inits", [[{"name": "normal", "std": 1.0}], ["he", {"name": "normal", "std": 1.0}]])
def test_a_late_divergence_check_finds_the_same_bad_step(inits):
    """An accelerator checks the losses every 32 steps: the bad step is still found exactly,
    and ``steps`` counts the updates applied until the check (SGD lr 0.2 as above)."""
    specs = specs_for({"epochs": 1, "optimizer": "sgd", "lr": 0.2, "momentum": 0.9}, inits)
    every_step, _ = first_epoch(specs, 1)
    late, totals = first_epoch(specs, 32)
    bad = len(inits) - 1  # the N(0, 1) model
    assert every_step.diverged_step[bad] == late.diverged_step[bad] == 2
    assert every_step.stopped_after[bad] == 1  # its bad step's update was never applied
    assert late.stopped_after[bad] == 16  # one epoch of 512 / 32: checked once, at its end
    assert late.active.tolist() == every_step.active.tolist() == [True] * bad + [False]
    assert totals.seen.tolist() == [512] * len(inits)  # every step until the check was counted
