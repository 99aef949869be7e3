"""bf16 autocast on the CPU (issue 18): allowed where the CPU has AVX512-BF16 or AMX, refused
elsewhere with one line and exit code 2.

The detection is a pure function of the text of ``/proc/cpuinfo``, so both of its answers are
tested on any machine; the sweeps through the real CLI run only on a CPU that has the flags
(the refusal on another CPU is tested through the library function that decides, never by
faking this machine's CPU in the CLI).
"""

from __future__ import annotations

import math
import sqlite3
from pathlib import Path

import numpy as np
import pytest
import torch
from test_ci import invoke, write_config

from initsweep import load_results
from initsweep.batched import Stacked
from initsweep.build import build_initialized_model
from initsweep.config import expand, validate
from initsweep.errors import EXIT_USAGE, InitsweepError
from initsweep.provenance import bf16_cpu_flags, cpu_flags, cpuinfo_text
from initsweep.train import Single, autocast_for, check_precision

CPU = torch.device("cpu")
# two processors' worth of the kernel's text, cut down: an AMD Zen 4 (avx512_bf16) and an
# older Xeon (AVX-512 without bf16); only the first processor's flags are read
ZEN4 = ("processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 9654\n"
        "flags\t\t: fpu sse2 avx2 avx512f avx512_bf16 avx512_vnni\n\nprocessor\t: 1\nflags\t\t: fpu\n")
SAPPHIRE = "model name\t: Intel Xeon Platinum 8480+\nflags\t\t: avx512f avx512_bf16 amx_bf16 amx_tile amx_int8\n"
SKYLAKE = "model name\t: Intel Xeon Gold 6148\nflags\t\t: fpu sse2 avx2 avx512f avx512bw avx512vl\n"
HAS_BF16 = bool(bf16_cpu_flags(cpuinfo_text()))
needs_bf16_cpu = pytest.mark.skipif(not HAS_BF16, reason="this CPU has neither avx512_bf16 nor amx_bf16")
ARGS = ("--device", "cpu", "--precision", "bf16", "--quiet")


def test_the_bf16_flags_are_read_from_the_first_processor_of_the_cpuinfo_text():
    assert bf16_cpu_flags(ZEN4) == ["avx512_bf16"]
    assert bf16_cpu_flags(SAPPHIRE) == ["avx512_bf16", "amx_bf16"]
    assert bf16_cpu_flags(SKYLAKE) == []
    assert bf16_cpu_flags("") == [] and cpu_flags("") == set()
    assert "avx512_bf16" not in cpu_flags(ZEN4.split("\n\n")[1])  # the second processor's line is not read
    assert cpu_flags("Features\t: fp asimd bf16\n") == {"fp", "asimd", "bf16"}  # ARM names the line Features


def test_bf16_is_refused_on_a_cpu_without_the_flags_with_one_line_and_exit_code_2():
    with pytest.raises(InitsweepError) as info:
        check_precision("bf16", CPU, SKYLAKE)
    assert info.value.cli_lines() == ["precision bf16 needs a CUDA device or a CPU with AVX512-BF16 or AMX "
                                      "(this CPU's flags in /proc/cpuinfo have neither avx512_bf16 nor amx_bf16)"]
    assert info.value.exit_code == EXIT_USAGE == 2
    with pytest.raises(InitsweepError, match=r"^precision bf16 needs .* \(running on mps\)$"):
        check_precision("bf16", torch.device("mps"), ZEN4)
    # allowed: fp32 anywhere, bf16 on a CPU with either flag and on CUDA whatever the CPU
    for precision, device, cpuinfo in [("fp32", CPU, SKYLAKE), ("bf16", CPU, ZEN4), ("bf16", CPU, SAPPHIRE),
                                       ("bf16", torch.device("cuda"), SKYLAKE)]:
        assert check_precision(precision, device, cpuinfo) is None


@pytest.mark.skipif(HAS_BF16, reason="this CPU has bf16: the refusal is tested through check_precision above")
def test_the_cli_refuses_bf16_on_this_cpu_with_one_line(tmp_path):
    config = write_config(tmp_path / "c.yaml", {"init": ["he"]})
    result = invoke("run", str(config), "--results", str(tmp_path / "res"), *ARGS)
    assert result.exit_code == 2 and result.output.startswith("error: precision bf16 needs a CUDA device")
    assert not (tmp_path / "res" / "initsweep.db").exists()


def tiny_specs(precision: str, seeds=(0, 1)):
    return expand(validate({"name": "b", "data": {"dataset": "mnist-sample", "train_limit": 64, "test_limit": 64},
                            "model": {"arch": "plain", "width": 4, "head": "flatten"},
                            "train": {"epochs": 1, "batch_size": 32, "seeds": list(seeds), "precision": precision},
                            "grid": {"init": ["he"], "depth": [2]}, "diagnostics": {"enabled": False}})).runs


def test_bf16_runs_have_ids_of_their_own_and_evaluation_is_autocast_on_both_paths():
    bf16, fp32 = tiny_specs("bf16"), tiny_specs("fp32")
    assert not {s.run_id for s in bf16} & {s.run_id for s in fp32}
    x = torch.randn(8, 1, 28, 28)
    modules = [build_initialized_model(s, torch.Generator().manual_seed(s.seed)) for s in bf16]
    logits = {}
    for spec in (bf16[0], fp32[0]):
        single = Single(modules[0], modules[0], autocast_for(spec, CPU), CPU)
        stacked = Stacked(modules, CPU, autocast_for(spec, CPU))
        logits[spec.train.precision] = [out.detach().float() for out in (
            single.train_logits(x), single.eval_logits(x), stacked.train_logits(torch.stack([x, x])),
            stacked.eval_logits(x))]
    # each path computed in bf16: its 8-bit mantissa shows as a relative error far above fp32's
    # rounding across kernels (1e-6) and within bf16's (1e-2). Not the output's dtype: vmap's
    # batched linear may add the fp32 bias after the bf16 product and hand back fp32
    for low, full in zip(logits["bf16"], logits["fp32"]):
        assert 1e-4 < float((low - full).abs().max() / full.abs().max()) < 5e-2


def bf16_rows(tmp: Path, *extra: str):
    """A two-run bf16 sweep (he x seeds 0, 1 on 256 images) through the CLI, and its rows."""
    config = write_config(tmp / "c.yaml", {"init": ["he"]}, train={"epochs": 1, "batch_size": 64, "seeds": [0, 1]})
    result = invoke("run", str(config), "--results", str(tmp / "res"), *ARGS, *extra)
    assert result.exit_code == 0, result.output
    return load_results(tmp / "res")


@needs_bf16_cpu
@pytest.mark.parametrize("path", [("--workers", "1", "--threads", "1"), ("--workers", "1", "--vmap", "on"),
                                  ("--workers", "2", "--threads", "1")], ids=["single", "vmapped", "workers"])
def test_a_bf16_sweep_on_this_cpu_trains_and_records_its_precision(tmp_path, path):
    runs = bf16_rows(tmp_path, *path)
    assert len(runs) == 2 and set(runs["status"]) == {"ok"} and set(runs["precision"]) == {"bf16"}
    assert set(runs["batched"]) == {int("on" in path)}
    if "2" in path:  # trained in two worker processes, not in this one
        assert runs["worker"].nunique() == 2 and set(runs["threads"]) == {1}
    assert all(0.0 <= a <= 1.0 for a in runs["test_acc"]) and all(map(math.isfinite, runs["test_loss"]))
    assert all(map(math.isfinite, runs["final_train_loss"]))
    # the stored accuracy is the count of the stored bf16 predictions that hit (exact: a count)
    conn = sqlite3.connect(tmp_path / "res" / "initsweep.db")
    stored = dict(conn.execute("SELECT r.run_id, p.predicted FROM predictions p JOIN runs r USING (row_id)"))
    target = np.frombuffer(conn.execute("SELECT target FROM predictions").fetchone()[0], np.uint8)
    conn.close()
    for run in runs.itertuples():
        assert (np.frombuffer(stored[run.run_id], np.uint8) == target).sum() / 256 == run.test_acc
