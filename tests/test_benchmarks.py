"""The sweep benchmark in its tiny mode: its counting, not its speed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from initsweep.provenance import bf16_cpu_flags, cpu_model, cpuinfo_text

ROOT = Path(__file__).resolve().parents[1]


def test_bench_sweep_tiny_counts_the_same_work_in_every_mode():
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks/bench_sweep.py"), "--tiny", "--json"],
                         capture_output=True, text=True, check=True, cwd=ROOT)
    rows = json.loads(out.stdout.strip().splitlines()[-1])
    modes, info = rows[:-1], rows[-1]
    bf16 = ["hand loop x2 bf16", "initsweep run bf16"] if bf16_cpu_flags(cpuinfo_text()) else []
    assert [m["mode"] for m in modes] == ["naive loop", "shell loop", "hand loop x2 fp32", "initsweep run", *bf16]
    # tiny: 1 init x 2 activations x 1 seed, 256 training images, 1 epoch, no validation split
    for m in modes:
        assert m["runs"] == 2 and m["samples"] == 2 * 256
        assert m["samples_per_s"] == m["samples"] / m["wall"]
        assert 0 < m["ceiling_pct"] < 100 and m["peak_mb"] > 50
        # one process's training rate over its own training seconds: faster than the whole
        # mode's wall-clock rate (which includes start-up and evaluation) in every mode
        assert m["train_rate"] > m["samples_per_s"] / 2  # two processes at most share the work
    assert modes[0]["vs_naive"] == 1.0 and modes[1]["vs_shell"] == 1.0
    assert modes[3]["vs_naive"] == modes[0]["wall"] / modes[3]["wall"]
    assert info["cpu"] == cpu_model() and info["bf16_flags"] == bf16_cpu_flags(cpuinfo_text())
    assert len(info["loadavg_before"]) == len(info["loadavg_after"]) == 3
    # the tutorial CNN: 2,794,240 forward MACs -> 6 FLOPs per MAC per training sample
    assert info["flops_per_sample"] == 6 * 2_794_240 and info["gemm_gflops"] > 0


def test_bench_sweep_study_accounts_for_the_whole_wall_time(tmp_path):
    config = tmp_path / "tiny.yaml"
    config.write_text("name: tiny\ndata: {dataset: mnist-sample, train_limit: 256, test_limit: 256}\n"
                      "model: {arch: plain, depth: 2, width: 4}\ntrain: {epochs: 1, seeds: [0, 1]}\n")
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks/bench_sweep.py"), "--study", str(config), "--json"],
                         capture_output=True, text=True, check=True, cwd=ROOT)
    study = json.loads(out.stdout.strip().splitlines()[-1])
    assert study["runs"] == 2 and study["workers"] == 1  # a tiny sweep trains in-process
    # each part of the non-training time is a real share: no run counted longer than it ran,
    # and start-up (outside any run) is never free
    assert study["eval_pct"] > 0 and study["in_run_other_pct"] > 0 and study["outside_runs_pct"] > 0
    assert 0 < study["training_per_worker"] < study["wall"]


def test_bench_workers_measures_every_layout():
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks/bench_workers.py"), "--seconds", "0.2", "--cores", "2"],
                         capture_output=True, text=True, check=True, cwd=ROOT)
    lines = out.stdout.strip().splitlines()
    assert lines[0].startswith("tutorial CNN") and len(lines) == 5
    layouts = [line.rsplit(None, 1) for line in lines[1:]]
    assert [name.strip() for name, _ in layouts] == [
        "1 process x 2 threads, NCHW", "1 process x 2 threads, channels_last",
        "1 process x 1 thread, channels_last", "2 processes x 1 thread, channels_last"]
    assert all(float(rate) > 0 for _, rate in layouts)


def test_bench_sweep_startup_times_the_first_run_against_import_torch():
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks/bench_sweep.py"), "--tiny", "--startup", "--json"],
                         capture_output=True, text=True, check=True, cwd=ROOT)
    startup = json.loads(out.stdout.strip().splitlines()[-1])
    assert startup["runs"] == 2 and startup["workers"] == len(startup["workers_first_train"]) >= 1
    assert startup["cpu"] == cpu_model() and len(startup["loadavg_before"]) == 3
    # the plan comes before the first run trains, and both within the command's wall time
    assert 0 < startup["first_claim"] < startup["first_trains"] == startup["workers_first_train"][0] < startup["wall"]
    assert 0 < startup["import_torch"] < startup["wall"]
    assert startup["over_import_torch"] == startup["first_trains"] - startup["import_torch"]


def test_first_step_prints_when_its_training_starts():
    import time

    t0 = time.time()
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks/first_step.py")], capture_output=True, text=True,
                         check=True, cwd=ROOT)
    t1 = time.time()
    trains_from = float(out.stdout.split()[-1])
    assert t0 < trains_from < t1  # a moment inside the process's life, not a duration


def test_bench_tanh_times_both_kernels_in_both_dtypes():
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks/bench_tanh.py"), "--repeats", "2"],
                         capture_output=True, text=True, check=True, cwd=ROOT).stdout.splitlines()
    assert out[0].startswith(f"CPU: {cpu_model()};")
    rows = [line.split() for line in out[2:]]
    assert [(r[0], r[1]) for r in rows] == [("float32", "forward"), ("float32", "forward+backward"),
                                            ("bfloat16", "forward"), ("bfloat16", "forward+backward")]
    for r in rows:
        torch_ms, ours_ms, ratio = float(r[2]), float(r[3]), float(r[4].rstrip("x"))
        assert torch_ms > 0 and ours_ms > 0
        # the speed-up is the ratio of the two times, as far as printing them to 0.01 ms allows
        lowest, highest = (torch_ms - 0.005) / (ours_ms + 0.005), (torch_ms + 0.005) / max(ours_ms - 0.005, 1e-9)
        assert lowest - 0.05 <= ratio <= highest + 0.05
