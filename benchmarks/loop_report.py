"""The one JSON line a benchmark loop (``naive_mnist.py``, ``hand_loop.py``) ends with, which
``bench_sweep.py`` reads back."""

from __future__ import annotations

import resource
import time

from initsweep.jsontext import json_text


def print_report(runs: int, samples: int, train_seconds: float, t0: float, accs: list[float]) -> None:
    """Counts, training seconds, the wall since ``t0`` and this process's peak memory (MiB)."""
    print(json_text({"runs": runs, "train_samples": samples, "train_seconds": train_seconds,
                     "wall_seconds": time.perf_counter() - t0, "test_acc": accs,
                     "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}, indent=None), end="")
