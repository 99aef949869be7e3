"""Model builders: layer counts, shapes, the tutorial CNN's exact size, cost counting."""

from __future__ import annotations

import inspect

import pytest
import torch
from torch import nn

import initsweep
from initsweep import models
from initsweep.models import build_model, list_archs, measure_shape

x = torch.randn(3, 1, 28, 28)


def convs(model):
    return [m for m in model.modules() if isinstance(m, nn.Conv2d)]


@pytest.mark.parametrize("depth", [1, 2, 5, 8, 20, 33])
def test_plain_has_depth_convs_and_a_linear_head(depth):
    model = build_model("plain", depth=depth, width=8, activation=nn.ReLU)
    assert len(convs(model)) == depth
    assert len([m for m in model.modules() if isinstance(m, nn.ReLU)]) == depth
    assert model(x).shape == (3, 10)
    assert isinstance(model.head, nn.Linear) and model.head.in_features == 8


@pytest.mark.parametrize("depth,at14,at7", [(1, 1, 0), (2, 1, 1), (8, 2, 6), (20, 5, 15), (30, 7, 23)])
def test_plain_downsampling_schedule(depth, at14, at7):
    """A quarter of the layers at 14x14, the rest at 7x7: what keeps depth 30 affordable."""
    model = build_model("plain", depth=depth, width=4, activation=nn.ReLU)
    sizes = []
    hooks = [c.register_forward_hook(lambda m, i, o: sizes.append(o.shape[-1])) for c in convs(model)]
    model(x)
    for h in hooks:
        h.remove()
    assert sizes.count(14) == at14 and sizes.count(7) == at7


def test_plain_options_norm_and_padding():
    model = build_model("plain", depth=4, width=8, activation=nn.Tanh, norm="batch", padding="circular")
    assert len([m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]) == 4
    assert all(c.padding_mode == "circular" for c in convs(model))
    assert model(x).shape == (3, 10)


def test_tutorial_is_the_keras_cnn_exactly():
    model = build_model("tutorial", depth=None, width=None, activation=nn.Tanh)
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.padding) for c in convs(model)] == [
        (1, 32, (3, 3), (0, 0)), (32, 64, (3, 3), (0, 0)), (64, 64, (3, 3), (0, 0))]
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert [(l.in_features, l.out_features) for l in linears] == [(576, 64), (64, 10)]
    assert len([m for m in model.modules() if isinstance(m, nn.MaxPool2d)]) == 2
    assert len([m for m in model.modules() if isinstance(m, nn.Tanh)]) == 4  # every ReLU replaced
    # Keras' model.summary() for this network reports 93,322 trainable parameters
    assert sum(p.numel() for p in model.parameters()) == 93_322
    assert model(x).shape == (3, 10)


@pytest.mark.parametrize("depth", [1, 3, 5])
def test_mlp(depth):
    model = build_model("mlp", depth=depth, width=16, activation=nn.Sigmoid)
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert len(linears) == depth + 1
    assert linears[0].in_features == 784
    assert model(x).shape == (3, 10)


@pytest.mark.parametrize("arch,depth,width,options", [
    ("plain", 6, 12, {}), ("plain", 1, 8, {"head": "flatten"}), ("plain", 9, 8, {"head": "flatten", "padding": "circular"}),
    ("plain", 5, 8, {"norm": "batch"}), ("tutorial", None, None, {}), ("tutorial", None, None, {"norm": "batch"}),
    ("mlp", 3, 50, {}),
])
def test_measure_shape_counts_without_allocating(arch, depth, width, options):
    """The shape walk (no forward pass) against hooks on a real forward pass."""
    real = build_model(arch, depth=depth, width=width, activation=nn.ReLU, **options)
    shape = measure_shape(arch, depth=depth, width=width, **options)
    assert shape.n_params == sum(p.numel() for p in real.parameters())
    assert shape.n_weight_layers == len([m for m in real.modules() if isinstance(m, (nn.Conv2d, nn.Linear))])
    # MACs counted independently from each layer's output size
    macs = 0
    def hook(m, i, o):
        nonlocal macs
        macs += o[0].numel() * (m.weight[0].numel())
    hs = [m.register_forward_hook(hook) for m in real.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    real(x[:1])
    for h in hs:
        h.remove()
    assert shape.macs_per_sample == macs


def test_tutorial_macs_by_hand():
    # conv1 26*26*32*9, conv2 11*11*64*288, conv3 3*3*64*576, dense 64*576, head 10*64
    by_hand = 26 * 26 * 32 * 9 + 11 * 11 * 64 * 288 + 3 * 3 * 64 * 576 + 64 * 576 + 10 * 64
    assert measure_shape("tutorial", depth=None, width=None).macs_per_sample == by_hand


@pytest.mark.parametrize("depth,features", [(1, 8 * 14 * 14), (2, 8 * 7 * 7), (9, 8 * 7 * 7)])
def test_plain_flatten_head_reads_the_whole_map(depth, features):
    model = build_model("plain", depth=depth, width=8, activation=nn.ReLU, head="flatten")
    assert model.head.in_features == features
    assert model(x).shape == (3, 10)
    assert measure_shape("plain", depth=depth, width=8, head="flatten").n_params == sum(p.numel() for p in model.parameters())


def test_each_arch_entry_states_what_its_builder_takes():
    """``uses`` decides which settings a run's id pins (config) and the probe's titles show:
    it must be exactly the builder's keywords. The shipped facts are pinned (run ids hang on them)."""
    for arch in list_archs():
        assert set(inspect.signature(arch.builder).parameters) == {"activation", *arch.uses}, arch.name
    assert initsweep.list_archs() == list_archs()  # the notebook API's view of the registry
    facts = {a.name: (a.unused, a.channels_last, a.fixed_shape) for a in list_archs()}
    assert facts == {"plain": ((), True, False), "tutorial": (("depth", "width", "padding", "head"), True, True),
                     "mlp": (("padding", "head"), False, False)}
    with pytest.raises(ValueError, match=r"uses unknown settings \['depht'\]"):
        models._register(models.Arch("typo", lambda activation, depht: None, "a typo (a test entry)", ("depht",)))
    assert "typo" not in {a.name for a in list_archs()}
    with pytest.raises(ValueError, match=r"^unknown arch 'mpl' — did you mean 'mlp'\?$"):
        build_model("mpl", depth=2, width=4, activation=nn.ReLU)
