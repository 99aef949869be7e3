"""The probe's prediction where issue 15 extended the theory, through the real CLI on the MNIST
sample: batch norm's backward pass, max-pooling's, the finite-width "typical" factor beside the
mean one, and ``gain: critical``. Each measured number is compared with a prediction that can
fail; the tolerances say what was measured (docs/diagnostics.md)."""

from __future__ import annotations

import json
import math

import pytest
from typer.testing import CliRunner

from initsweep.cli import app

runner = CliRunner()

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


def probe(*args: str) -> dict:
    """One point's JSON entry from ``initsweep probe ... --format json``."""
    out = runner.invoke(app, ["probe", "--format", "json", *args])
    assert out.exit_code == 0, out.output
    (entry,) = json.loads(out.stdout)
    return entry


# ---------------------------------------------------------------- batch norm


@pytest.mark.parametrize("init", ["lecun_normal", "he", "std_normal"])
def test_batch_norm_backward_factor_is_pi_over_pi_minus_one_whatever_the_init(init):
    """MLP depth 10, width 256, ReLU, train-mode batch norm: the gradient grows by
    E[relu'^2] / Var(relu(z)) = pi / (pi - 1) = 1.467 per layer (Yang et al. 2019) whatever the
    init, since batch norm divides out the weights' scale. Before the fix the prediction
    followed the init (0.5, 1, 128). Measured here, 3 seeds, 64 images: 1.49 for each init."""
    e = probe("--arch", "mlp", "--depth", "10", "--width", "256", "--activation", "relu", "--init", init,
              "-S", "model.norm=batch", "--seeds", "3")
    assert e["predicted_backward_factor"] == pytest.approx(math.pi / (math.pi - 1), rel=1e-4)
    assert e["backward_factor"] == pytest.approx(e["predicted_backward_factor"], rel=0.04)
    assert e["predicted_forward_factor"] == pytest.approx(1.0, abs=1e-6)
