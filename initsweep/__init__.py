"""initsweep: what weight initialization and activation choice do to a network as it deepens.

The notebook API (imported lazily, so ``import initsweep`` stays cheap):

* ``load_results(results_dir, sweep=None, where=None)`` -> pandas DataFrame, one row per run
  (a results folder or an ``initsweep export`` file);
* ``summarize(df, metric, by, ci=0.95)`` -> seed statistics per group (mean, std, t interval, best-cell mark);
* ``run_sweep(config, results_dir=..., device=...)`` -> ``SweepOutcome``;
* ``load_config(path)``, ``expand(config)`` -> the runs a config plans;
* the registries: ``list_inits()``, ``list_activations()``, ``list_archs()``.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "load_results": "results.read",
    "run_sweep": "sweep.run",
    "summarize": "report.stats",
    "load_config": "config",
    "expand": "config",
    "list_inits": "inits",
    "list_activations": "activations",
    "list_archs": "models",
}
__all__ = ["__version__", *_EXPORTS]


def __dir__() -> list[str]:
    """The lazy exports too, so ``dir(initsweep)`` and tab completion show the API."""
    return sorted({*globals(), *_EXPORTS})


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'initsweep' has no attribute {name!r}")
