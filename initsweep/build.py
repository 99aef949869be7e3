"""Model + init from a ``RunSpec``: the weights a run starts from.

Its own module because both training (``train.py``, ``batched.py``) and the probe
(``probe.py``, which probes a spec at init without training it) need it; living in
``train.py`` it made ``train`` and ``probe`` import each other.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .config import RunSpec
from .inits import initialize
from .models import build_model
from .theory import critical_sigma_w2_of


def seed_streams(seed: int) -> tuple[int, int]:
    """Independent seeds for the initial weights and for the data order."""
    init_seed, data_seed = np.random.SeedSequence(seed).generate_state(2, dtype=np.uint64)
    return int(init_seed) & (2**63 - 1), int(data_seed) & (2**63 - 1)


def build_initialized_model(spec: RunSpec, generator: torch.Generator) -> nn.Module:
    """The spec's model with its init applied (on the CPU: same weights on every device)."""
    m = spec.model
    act = m.activation.entry  # the registry entries the config was validated against
    model = build_model(m.arch, depth=m.depth, width=m.width, norm=m.norm, padding=m.padding, head=m.head,
                        activation=lambda: act.build(m.activation.params))
    return initialize(model, init=m.init.entry, init_params=m.init.params,
                      auto_gain=act.gain(m.activation.params), bias=m.bias.entry,
                      bias_params=m.bias.params, generator=generator,
                      critical_sigma_w2=critical_sigma_w2_of(m.activation.name, m.activation.params, m.bias.entry,
                                                             m.bias.params))
