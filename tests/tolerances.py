"""How close two trainings of one run must be when they took different paths.

Why tolerances at all: a float32 sum rounds differently with the CPU's instruction set
(AVX2 on an AMD EPYC, AVX-512/AMX on an Intel Xeon), the thread count (a reduction split
one or two ways) and the kernel (a vmapped batch or a plain model). The difference starts
in the last bit and training amplifies it, so the same spec trained in another process, on
another thread count, batched, or on another CPU agrees with itself to a tolerance, never
to the bit; and an accuracy, a count of images, may move by an image whose logits sit on a
decision boundary. Within one process, one path and one thread count, a run *is* bit-for-bit
reproducible, and the tests that say so compare exactly.

The numbers, measured by ``python benchmarks/path_noise.py`` on an AMD EPYC (1 against 2
threads: the plain CNN, depth 8, width 16, 1,024 MNIST-sample images, 32 Adam steps):

* last-digit noise: test and validation loss differ by up to 4.9e-4 relative; test
  accuracy by 1 image of 256, validation accuracy by 0 of 400. Batched against alone under
  SGD at lr 0.2: 8e-5 here, 1.5e-4 measured earlier; one validation image on an Intel Xeon.
* a real difference: another seed moves the test loss by 8.7e-2 relative, another init
  (He against orthogonal) by 4.5e-2; the smallest seen, two seeds' mean train loss over
  a first epoch of 16 steps still near chance (width 8, depth 3; tests/test_batched.py), 1.2e-2.

So :data:`LOSS_REL` sits 10x above the noise and below every real difference, and
:func:`assert_differ` checks that what a test calls different is further apart than
:func:`assert_same_result` could ever accept.
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd
import pytest

LOSS_REL = 5e-3  # relative; a loss of the same run on another path
IMAGES = 3  # an accuracy of the same run on another path may differ by this many images
REAL_DIFFERENCE = 2 * LOSS_REL  # relative; beyond what two paths of one run can differ by


def _close(x: float | None, y: float | None, rel: float) -> bool:
    if x is None or y is None:
        return x is None and y is None
    if math.isnan(x) or math.isnan(y):
        return math.isnan(x) and math.isnan(y)
    return x == pytest.approx(y, rel=rel, abs=1e-6)


def _images_apart(x: float | None, y: float | None, n: int) -> float:
    """How many of ``n`` images two accuracies differ by (0 when both are missing)."""
    if x is None or y is None or math.isnan(x) or math.isnan(y):
        return 0.0 if (x is None or math.isnan(x)) == (y is None or math.isnan(y)) else math.inf
    return abs(x - y) * n


def assert_same_result(a: Any, b: Any, rel: float = LOSS_REL, images: int = IMAGES) -> None:
    """Two ``RunResult``s of one spec: same status, steps and epochs exactly; losses to
    ``rel``; accuracies to ``images`` images of the set they were measured on."""
    assert (a.status, a.diverged_step, a.steps, len(a.epochs)) == (b.status, b.diverged_step, b.steps, len(b.epochs))
    assert (a.n_train, a.n_val, a.n_test) == (b.n_train, b.n_val, b.n_test)
    for ea, eb in zip(a.epochs, b.epochs):
        assert _close(ea.train_loss, eb.train_loss, rel), (ea, eb)
        assert _close(ea.val_loss, eb.val_loss, rel), (ea, eb)
        assert _images_apart(ea.train_acc, eb.train_acc, a.n_train) <= images, (ea, eb)
        assert _images_apart(ea.val_acc, eb.val_acc, a.n_val) <= images, (ea, eb)
    assert _close(a.test_loss, b.test_loss, rel), (a.test_loss, b.test_loss)
    assert _images_apart(a.test_acc, b.test_acc, a.n_test) <= images, (a.test_acc, b.test_acc)


def assert_same_rows(a: pd.DataFrame, b: pd.DataFrame, rel: float = LOSS_REL, images: int = IMAGES) -> None:
    """Two stores' runs (``load_results`` frames) of the same specs, trained on different
    paths: the same run ids, statuses and steps exactly; losses and accuracies as above."""
    a, b = a.set_index(["sweep", "run_id"]).sort_index(), b.set_index(["sweep", "run_id"]).sort_index()
    assert list(a.index) == list(b.index)
    assert list(a.status) == list(b.status) and list(a.steps) == list(b.steps)
    for key in a.index:
        x, y = a.loc[key], b.loc[key]
        for loss in ("test_loss", "final_train_loss", "final_val_loss"):
            assert _close(x[loss], y[loss], rel), (key, loss, x[loss], y[loss])
        assert _images_apart(x.test_acc, y.test_acc, int(x.n_test)) <= images, (key, x.test_acc, y.test_acc)
        assert _images_apart(x.best_val_acc, y.best_val_acc, int(x.n_val)) <= images, (key, x.best_val_acc,
                                                                                       y.best_val_acc)


def assert_differ(x: float, y: float) -> None:
    """Two losses a test calls different differ by more than any path could explain."""
    assert abs(x - y) > REAL_DIFFERENCE * max(abs(x), abs(y)), (x, y)
