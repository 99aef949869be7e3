"""Config parsing, validation and grid expansion; run_id stability and sensitivity."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
import textwrap

import pytest

from initsweep.activations import get_activation
from initsweep.config import MAX_RUNS, ModelConfig, SweepConfig, expand, load_config, validate
from initsweep.errors import ConfigError
from initsweep.inits import get_bias_init, get_init

BASE = {"name": "t", "data": {"dataset": "mnist-sample"}, "model": {"arch": "plain", "width": 8}}


def plan_of(**overrides):
    return expand(validate({**BASE, **overrides}))


def test_product_times_seeds():
    plan = plan_of(grid={"init": ["he", "std_normal", "orthogonal"], "activation": ["relu", "tanh"],
                         "depth": [2, 4, 8, 16]}, train={"seeds": [0, 1, 2]})
    assert len(plan.runs) == 3 * 2 * 4 * 3 == plan.n_points
    assert len({r.run_id for r in plan.runs}) == len(plan.runs)
    assert plan.n_excluded == 0


def test_exclusions_partial_points_and_lists():
    plan = plan_of(
        grid={"init": ["he", "std_normal"], "activation": ["relu", "tanh", {"name": "leaky_relu", "negative_slope": 0.2}],
              "depth": [2, 8, 16]},
        train={"seeds": [0, 1]},
        exclude=[{"activation": "tanh", "depth": 16},               # 2 inits x 1 x 1
                 {"init": "std_normal", "depth": [8, 16]},          # 1 x 3 acts x 2 depths, one overlaps
                 {"activation": {"name": "leaky_relu", "negative_slope": 0.2}, "init": "he", "depth": 2}])
    # points: 2*3*3 = 18. Excluded: {he,std}x tanh x 16 (2) ; std x {relu,tanh,leaky} x {8,16} (6, 1 shared) ;
    # he x leaky x 2 (1) -> 2 + 6 - 1 + 1 = 8 points removed
    assert len(plan.runs) == (18 - 8) * 2
    assert plan.n_excluded == 8 * 2
    points = {dict(r.point)["init"] + "/" + dict(r.point)["activation"] + "/" + str(dict(r.point)["depth"]) for r in plan.runs}
    assert "std_normal/relu/8" not in points and "he/tanh/16" not in points and "he/tanh/8" in points
    assert "he/leaky_relu(negative_slope=0.2)/2" not in points


def test_a_bare_name_excludes_every_parameterization():
    plan = plan_of(grid={"activation": [{"name": "leaky_relu", "negative_slope": 0.1},
                                        {"name": "leaky_relu", "negative_slope": 0.3}, "relu"]},
                   exclude=[{"activation": "leaky_relu"}])
    assert [dict(r.point)["activation"] for r in plan.runs] == ["relu"]


def test_extra_scalar_axes_lr_width_batch_size():
    plan = plan_of(grid={"lr": [1e-3, 1e-2], "width": [4, 8, 16], "batch_size": [32, 64], "train.epochs": [1, 2]})
    assert len(plan.runs) == 2 * 3 * 2 * 2
    assert {r.train.lr for r in plan.runs} == {1e-3, 1e-2}
    assert {r.model.width for r in plan.runs} == {4, 8, 16}
    assert {r.train.epochs for r in plan.runs} == {1, 2}


def test_exclude_matching_nothing_is_noted():
    plan = plan_of(grid={"depth": [2, 4]}, exclude=[{"depth": 8}])
    assert len(plan.runs) == 2
    assert any("exclude[0] matches no point" in n for n in plan.notes)


def test_tutorial_arch_ignores_depth_and_merges_duplicates():
    plan = plan_of(model={"arch": "tutorial"}, grid={"depth": [2, 8, 20], "init": ["he", "std_normal"]})
    assert len(plan.runs) == 2
    assert plan.n_duplicates == 4
    assert any("arch tutorial does not use depth" in n for n in plan.notes)


def test_run_id_is_stable_across_processes():
    spec = plan_of(grid={"init": [{"name": "kaiming_normal", "mode": "fan_out"}], "lr": [0.003]}).runs[0]
    code = textwrap.dedent("""
        from initsweep.config import expand, validate
        cfg = validate({"name": "t", "data": {"dataset": "mnist-sample"}, "model": {"arch": "plain", "width": 8},
                        "grid": {"lr": [3e-3], "init": [{"mode": "fan_out", "name": "kaiming_normal"}]}})
        print(expand(cfg).runs[0].run_id)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"PYTHONHASHSEED": "123", "PATH": ""})
    assert out.stdout.strip() == spec.run_id


def _one_id(**overrides) -> str:
    return plan_of(**overrides).runs[0].run_id


def test_run_id_changes_with_every_setting_that_affects_results():
    base = _one_id()
    changed = [
        _one_id(model={"arch": "plain", "width": 16}),
        _one_id(model={"arch": "plain", "width": 8, "depth": 5}),
        _one_id(model={"arch": "plain", "width": 8, "padding": "circular"}),
        _one_id(model={"arch": "plain", "width": 8, "init": {"name": "kaiming_normal", "mode": "fan_out"}}),
        _one_id(model={"arch": "plain", "width": 8, "activation": {"name": "leaky_relu", "negative_slope": 0.02}}),
        _one_id(model={"arch": "plain", "width": 8, "bias": 0.1}),
        _one_id(train={"lr": 2e-3}),
        _one_id(train={"seeds": [1]}),
        _one_id(train={"batch_size": 64}),
        _one_id(train={"optimizer": "sgd", "momentum": 0.9}),
        _one_id(data={"dataset": "mnist-sample", "val_fraction": 0.2}),
        _one_id(data={"dataset": "mnist-sample", "train_limit": 100}),
        _one_id(data={"dataset": "mnist"}),
    ]
    assert base not in changed
    assert len(set(changed)) == len(changed)


def test_run_id_ignores_what_cannot_change_a_result():
    base = _one_id()
    assert _one_id(name="other-name") == base
    assert _one_id(data={"dataset": "mnist-sample", "root": "/elsewhere", "download": False, "fallback": "none"}) == base
    assert _one_id(description="words") == base
    # the same values written differently
    assert _one_id(train={"lr": 0.001}) == _one_id(train={"lr": "1e-3"}) == _one_id(train={"lr": 1.0e-3})
    assert _one_id(model={"arch": "plain", "width": 8, "init": "he"}) == _one_id(model={"arch": "plain", "width": 8, "init": {"name": "he"}})


def test_expand_with_the_effective_dataset_changes_ids():
    cfg = validate({**BASE, "data": {"dataset": "mnist"}})
    asked, fell_back = expand(cfg).runs[0], expand(cfg, dataset="mnist-sample").runs[0]
    assert fell_back.data.dataset == "mnist-sample" and asked.run_id != fell_back.run_id


def test_name_defaults_to_the_file_stem(tmp_path):
    path = tmp_path / "my study.yaml"
    path.write_text("grid: {depth: [2]}\n")
    assert load_config(path).name == "my-study"


def test_yaml_scientific_notation_is_a_number(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("name: x\ntrain: {lr: 1e-3, weight_decay: 5E-4}\n")
    cfg = load_config(path)
    assert cfg.train.lr == 0.001 and cfg.train.weight_decay == 0.0005


def test_too_many_runs_are_refused_before_expansion():
    big = {"width": list(range(1, 101)), "depth": list(range(1, 101)), "lr": [0.1 * (i + 1) for i in range(20)]}
    with pytest.raises(ConfigError, match=f"more than the limit of {MAX_RUNS:,}"):
        validate({**BASE, "grid": big})


def test_a_resolved_choice_carries_its_registry_entry_through_expand_and_pickle():
    plan = plan_of(model={"width": 8, "bias": 0.1},
                   grid={"init": ["he", {"name": "xavier_normal", "gain": "auto"}],
                         "activation": [{"name": "leaky_relu", "negative_slope": 0.2}]})
    for spec in plan.runs:
        m = spec.model
        assert m.init.entry is get_init(m.init.name)
        assert m.activation.entry is get_activation("leaky_relu")
        assert m.bias.entry is get_bias_init("constant")
        # a pool worker gets its spec by pickle: same id, same entries
        back = pickle.loads(pickle.dumps(spec))
        assert back.run_id == spec.run_id and back == spec
        assert back.model.init.entry is m.init.entry and back.model.bias.entry is m.bias.entry
    assert ModelConfig().init.entry is get_init("kaiming_normal")  # the defaults too
    assert "entry" not in json.dumps(plan.runs[0].identity())  # not part of the run id
    assert [p[1] for p in plan.runs[1].point] == ["xavier_normal(gain=auto)", "leaky_relu(negative_slope=0.2)"]


def test_expand_of_a_config_that_skipped_validate_still_checks_the_grid():
    # validate() resolves the grid once and expand() reuses it; a config built another
    # way (or model_copy'd) is resolved by expand itself, with the same messages
    raw = {**BASE, "grid": {"init": ["he", "kaiming_nromal"], "depth": [2, 3]}}
    with pytest.raises(ConfigError) as validated:
        validate(raw)
    with pytest.raises(ConfigError) as expanded:
        expand(SweepConfig.model_validate(raw))
    assert expanded.value.problems == validated.value.problems == [
        "grid.init[1]: unknown initializer 'kaiming_nromal' — did you mean 'kaiming_normal'?"]
    good = {**BASE, "grid": {"init": ["he", "orthogonal"], "depth": [2, 3]}, "exclude": [{"init": "he", "depth": 3}]}
    cfg = validate(good)
    ids = [r.run_id for r in expand(cfg).runs]
    assert [r.run_id for r in expand(SweepConfig.model_validate(good)).runs] == ids == \
        [r.run_id for r in expand(cfg.model_copy(update={"description": "x"})).runs]
    assert len(ids) == 3
    # a copy with a changed section expands what it says, not what was validated before
    deeper = cfg.model_copy(update={"model": cfg.model.model_copy(update={"width": 4})})
    assert set(r.run_id for r in expand(deeper).runs).isdisjoint(ids)
