"""The sweep benchmark in its tiny mode: its counting, not its speed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_bench_sweep_tiny_counts_the_same_work_in_every_mode():
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks/bench_sweep.py"), "--tiny", "--json"],
                         capture_output=True, text=True, check=True, cwd=ROOT)
    rows = json.loads(out.stdout.strip().splitlines()[-1])
    modes, info = rows[:-1], rows[-1]
    assert [m["mode"] for m in modes] == ["naive loop", "shell loop", "initsweep run"]
    # tiny: 1 init x 2 activations x 1 seed, 256 training images, 1 epoch, no validation split
    for m in modes:
        assert m["runs"] == 2 and m["samples"] == 2 * 256
        assert m["samples_per_s"] == m["samples"] / m["wall"]
        assert 0 < m["ceiling_pct"] < 100 and m["peak_mb"] > 50
    assert modes[0]["vs_naive"] == 1.0 and modes[1]["vs_shell"] == 1.0
    assert modes[2]["vs_naive"] == modes[0]["wall"] / modes[2]["wall"]
    # the tutorial CNN: 2,794,240 forward MACs -> 6 FLOPs per MAC per training sample
    assert info["flops_per_sample"] == 6 * 2_794_240 and info["gemm_gflops"] > 0
