"""``initsweep run`` ends its summary with its wall time and where it went (issue 18): the
shares of training and evaluation recomputed here from the stored timings of the runs it
trained, and everything else the rest."""

from __future__ import annotations

import re

import pandas as pd
import pytest
from test_ci import invoke, write_config

from initsweep import load_results
from initsweep.report.timing import time_shares

LINE = re.compile(r"^time: ([\d.]+) s wall, (\d+) worker\(s\): training (\d+)%, evaluation (\d+)%, "
                  r"everything else (\d+)% \(start-up, set-up, probes, store\)$", re.M)


@pytest.mark.parametrize("vmap", ["off", "on"])
def test_run_prints_its_wall_time_and_the_shares_of_training_and_evaluation(tmp_path, vmap):
    config = write_config(tmp_path / "c.yaml", {"init": ["he", "xavier_uniform"]},
                          train={"epochs": 1, "batch_size": 64, "seeds": [0, 1]})
    args = ("run", str(config), "--results", str(tmp_path / "res"), "--device", "cpu", "--workers", "1",
            "--quiet", "--vmap", vmap)
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    (wall, workers, training, evaluation, other), = LINE.findall(result.output)
    runs = load_results(tmp_path / "res")
    assert len(runs) == 4 and int(workers) == 1
    # one vmapped group of four shares one training time: counted once, not four times
    groups = runs.drop_duplicates(["train_seconds", "eval_seconds"]) if vmap == "on" else runs
    assert len(groups) == (1 if vmap == "on" else 4)
    # the printed wall is rounded to 0.1 s, the shares to 1%: recomputed within those roundings
    for printed, seconds in ((training, groups.train_seconds.sum()), (evaluation, groups.eval_seconds.sum())):
        low, high = 100 * seconds / (float(wall) + 0.05), 100 * seconds / (float(wall) - 0.05)
        assert low - 0.5 <= int(printed) <= high + 0.5
    assert abs(int(training) + int(evaluation) + int(other) - 100) <= 1
    # the wall covers every run (each run's own wall time) and more: the start-up at least
    assert float(wall) > runs.wall_seconds.sum() / (4 if vmap == "on" else 1)
    # nothing trained: no time line (the runs are finished)
    assert not LINE.search(invoke(*args).output)


def test_time_shares_count_each_worker_once():
    frame = pd.DataFrame({"worker": ["1", "2", "1"], "train_seconds": [3.0, 4.0, 1.0], "eval_seconds": [1.0, 0.5, 0.5],
                          "batched": [0, 0, 0]})
    shares = time_shares(frame, wall=10.0, workers=2)
    assert (shares.training, shares.evaluation) == (8.0 / 20.0, 2.0 / 20.0)
    assert shares.other == pytest.approx(0.5)
