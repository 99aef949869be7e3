"""What the two benchmark loops (``naive_mnist.py``, ``hand_loop.py``) share: the activation
as plain torch builds it, and the one JSON line they end with, which ``bench_sweep.py`` reads
back."""

from __future__ import annotations

import resource
import time

from torch import nn

from initsweep.jsontext import json_text


def torch_activation(module: nn.Module) -> nn.Module:
    """The registry's activation module as code written without initsweep has it: torch's
    ``nn.Tanh`` for tanh (initsweep's computes its forward with numpy on the CPU,
    ``initsweep/fast_tanh.py``); every other activation is torch's module already."""
    return nn.Tanh() if isinstance(module, nn.Tanh) else module


def print_report(runs: int, samples: int, train_seconds: float, t0: float, accs: list[float]) -> None:
    """Counts, training seconds, the wall since ``t0`` and this process's peak memory (MiB)."""
    print(json_text({"runs": runs, "train_samples": samples, "train_seconds": train_seconds,
                     "wall_seconds": time.perf_counter() - t0, "test_acc": accs,
                     "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}, indent=None), end="")
