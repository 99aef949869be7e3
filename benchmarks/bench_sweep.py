"""Sweep throughput, side by side in one run: naive loop, shell loop, hand-tuned ceiling, ``initsweep run``.

    .venv/bin/python benchmarks/bench_sweep.py                 # 24 runs, tutorial CNN, 1 epoch
    .venv/bin/python benchmarks/bench_sweep.py --study configs/grid.yaml   # non-training share
    .venv/bin/python benchmarks/bench_sweep.py --tiny          # seconds; what the tests run

Every mode trains the same grid (init x activation x seed) of the tutorial CNN on the same
MNIST digits (the shipped sample), Adam lr 1e-3, the same batch size and epochs:

1. naive loop — ``naive_mnist.py``: pytorch/examples style (PIL + ToTensor + Normalize
   per item, DataLoader), every run one after another in one process;
2. shell loop — the same script launched once per grid point (a new process per run);
3. hand loop x2 — the hand-tuned ceiling, ``hand_loop.py``: in-memory normalized tensors,
   ``randperm`` batches, channels_last, one thread, started twice at once on the two halves
   of the grid (no store, no diagnostics, no validation split);
4. initsweep run — the real command, as a user runs it;
5. on a CPU with AVX512-BF16 or AMX (or ``--device cuda``): the hand loop and
   ``initsweep run`` again with bf16 autocast (``--precision bf16``).

The first lines say which CPU ran it (its bf16 flags) and the load average before and after:
numbers from a shared or another machine are not comparable.

Columns: wall time (each mode as a whole, process start included), aggregate training
samples per second of wall time, the ratio of the wall times to modes 1, 2 and 3, the share
of the machine's compute ceiling (training FLOPs per sample = 3 x 2 x forward MACs, times
samples/s, over a measured 2048x2048 float32 GEMM rate using every core), and the peak
resident memory of the process that trains (initsweep: the largest worker's), and "trains
at": the training samples/s of one training process over its own training seconds (for
``initsweep run`` each worker's, from the stored ``train_seconds``), which set beside the
hand loop's says how close a worker's inner loop comes to the tight one.

``--study CONFIG`` instead runs ``initsweep run CONFIG`` and reports how much of its wall
time is not training: 1 - (sum of the runs' training seconds / workers) / wall.

``--startup`` measures the start-up instead (issue 18's "one ``import torch`` + 0.5 s"):
``python -X importtime -c 'import torch'`` (its cumulative time, the best of 3) beside how
long after the command started the first run of ``initsweep run`` on the grid began to
train (its ``finished_at`` minus ``wall_seconds`` plus ``setup_seconds``, from the store),
each worker's first run too, and the bare floor: ``first_step.py`` (import torch, the
model, ``torch.optim.Adam``, one step), alone and as many copies at once as the sweep had
workers, each the median of 3.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

from initsweep.provenance import bf16_cpu_flags, cpu_model, cpuinfo_text

ROOT = Path(__file__).resolve().parents[1]
INITS = ["he", "xavier_uniform", "orthogonal", "lecun_normal", "gaussian_inv_sqrt_n", "uniform_inv_sqrt_n"]
ACTIVATIONS = ["relu", "tanh"]


def gemm_flops(seconds: float = 1.0, n: int = 2048, device: str = "cpu") -> float:
    """Sustained float32 GEMM rate (every core, or the GPU): the compute ceiling."""
    if device.startswith("cuda"):
        n = 8192
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    torch.mm(a, b)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    sync()
    reps, t = 0, time.perf_counter()
    while time.perf_counter() - t < seconds:
        torch.mm(a, b)
        reps += 1
        sync()
    return 2 * n**3 * reps / (time.perf_counter() - t)


def _run(cmd: list[str], env: dict | None = None) -> tuple[float, str]:
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})})
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    return wall, proc.stdout


def points(n_seeds: int, n_inits: int) -> list[str]:
    return [f"{i}:{a}:{s}" for i in INITS[:n_inits] for a in ACTIVATIONS for s in range(n_seeds)]


def config_for(args, path: Path) -> Path:
    path.write_text(yaml.safe_dump({
        "name": "bench", "data": {"dataset": "mnist-sample", "val_fraction": 0.0, "train_limit": args.train_limit,
                                  "test_limit": args.test_limit},
        "model": {"arch": "tutorial"},
        "train": {"optimizer": "adam", "lr": 1e-3, "batch_size": args.batch_size, "epochs": args.epochs,
                  "seeds": list(range(args.seeds))},
        "grid": {"init": INITS[:args.inits], "activation": ACTIVATIONS}}))
    return path


def naive(args, pts: list[str], point: int | None = None) -> dict:
    cmd = [sys.executable, str(ROOT / "benchmarks/naive_mnist.py"), "--points", *pts, "--epochs", str(args.epochs),
           "--batch-size", str(args.batch_size), "--train-limit", str(args.train_limit),
           "--test-limit", str(args.test_limit)]
    if point is not None:
        cmd += ["--point", str(point)]
    cmd += ["--device", args.device]
    _, out = _run(cmd)
    return json.loads(out.strip().splitlines()[-1])


def measure(args) -> list[dict]:
    from initsweep.models import measure_shape

    pts = points(args.seeds, args.inits)
    flops_per_sample = 6 * measure_shape("tutorial", depth=None, width=None).macs_per_sample
    ceiling = gemm_flops(device=args.device)
    rows, load_before = [], list(os.getloadavg())
    bf16 = args.device.startswith("cuda") or bool(bf16_cpu_flags(cpuinfo_text()))

    t = time.perf_counter()
    one = naive(args, pts)
    rows.append({"mode": "naive loop", "wall": time.perf_counter() - t, "samples": one["train_samples"],
                 "runs": one["runs"], "peak_mb": one["peak_rss_mb"], "train_rate": one["train_samples"] / one["train_seconds"]})

    t = time.perf_counter()
    shell = [naive(args, pts, i) for i in range(len(pts))]
    rows.append({"mode": "shell loop", "wall": time.perf_counter() - t, "samples": sum(s["train_samples"] for s in shell),
                 "runs": sum(s["runs"] for s in shell), "peak_mb": max(s["peak_rss_mb"] for s in shell),
                 "train_rate": sum(s["train_samples"] for s in shell) / sum(s["train_seconds"] for s in shell)})

    rows.append(hand(args, pts, "fp32"))
    rows.append(initsweep_run(args, "fp32"))
    if bf16:
        rows.append(hand(args, pts, "bf16"))
        rows.append(initsweep_run(args, "bf16"))
    for row in rows:
        row["samples_per_s"] = row["samples"] / row["wall"]
        row["vs_naive"] = rows[0]["wall"] / row["wall"]
        row["vs_shell"] = rows[1]["wall"] / row["wall"]
        row["ceiling_pct"] = 100 * row["samples_per_s"] * flops_per_sample / ceiling
    rows.append({"gemm_gflops": ceiling / 1e9, "flops_per_sample": flops_per_sample, "cpu": cpu_model(),
                 "bf16_flags": bf16_cpu_flags(cpuinfo_text()), "loadavg_before": load_before,
                 "loadavg_after": list(os.getloadavg())})
    return rows


def hand(args, pts: list[str], precision: str) -> dict:
    """The hand-tuned ceiling: ``hand_loop.py`` twice at once, one thread each, each on half of
    the grid (the layout ``bench_workers.py`` measured fastest on 2 cores)."""
    halves = [pts[: len(pts) // 2], pts[len(pts) // 2:]]
    cmd = [sys.executable, str(ROOT / "benchmarks/hand_loop.py"), "--epochs", str(args.epochs),
           "--batch-size", str(args.batch_size), "--train-limit", str(args.train_limit),
           "--test-limit", str(args.test_limit), "--threads", "1", "--precision", precision, "--device", args.device]
    t = time.perf_counter()
    procs = [subprocess.Popen([*cmd, "--points", *half], stdout=subprocess.PIPE, text=True) for half in halves if half]
    outs = [json.loads(proc.communicate()[0].strip().splitlines()[-1]) for proc in procs]
    wall = time.perf_counter() - t
    if any(proc.returncode for proc in procs):
        raise SystemExit(f"hand_loop.py failed: {[proc.returncode for proc in procs]}")
    return {"mode": f"hand loop x2 {precision}", "wall": wall, "samples": sum(o["train_samples"] for o in outs),
            "runs": sum(o["runs"] for o in outs), "peak_mb": max(o["peak_rss_mb"] for o in outs),
            # each process's own training rate, averaged: what one thread sustains in a tight loop
            "train_rate": sum(o["train_samples"] / o["train_seconds"] for o in outs) / len(outs)}


def initsweep_run(args, precision: str) -> dict:
    """``initsweep run`` as a user runs it, on the same grid; its rate per worker from the
    stored timings (samples over training seconds, each worker's runs together)."""
    from initsweep.results.read import load_results

    with tempfile.TemporaryDirectory() as tmp:
        config = config_for(args, Path(tmp) / "bench.yaml")
        cmd = [sys.executable, "-m", "initsweep", "run", str(config), "--results", str(Path(tmp) / "res"),
               "--device", args.device, "--precision", precision, "--quiet"]
        if args.workers:
            cmd += ["--workers", str(args.workers)]
        wall, _ = _run(cmd)
        df = load_results(Path(tmp) / "res")
    ok = df[df.status.isin(["ok", "diverged"])].assign(samples=lambda d: d.n_train * d.epochs)
    per_worker = ok.groupby("worker")[["samples", "train_seconds"]].sum()
    return {"mode": "initsweep run" + (" bf16" if precision == "bf16" else ""), "wall": wall,
            "samples": int(ok.samples.sum()), "runs": len(df), "peak_mb": float(df.peak_rss_mb.max()),
            "train_rate": float((per_worker.samples / per_worker.train_seconds).mean())}


def study(args) -> dict:
    from initsweep.results.read import load_results

    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "initsweep", "run", args.study, "--results", str(Path(tmp) / "res"),
               "--device", args.device, "--quiet"]
        if args.workers:
            cmd += ["--workers", str(args.workers)]
        wall, _ = _run(cmd)
        df = load_results(Path(tmp) / "res")
    workers = df.worker.nunique()
    # a batched group shares one training time among its runs: count it once
    trained = df.drop_duplicates(["worker", "train_seconds"]) if df.batched.any() else df
    per_worker = {column: trained[column].sum() / workers for column in ("train_seconds", "eval_seconds", "wall_seconds")}
    training = per_worker["train_seconds"]
    return {"config": args.study, "runs": len(df), "workers": workers, "wall": wall,
            "samples_per_s": float((df.n_train * df.epochs).sum() / wall),
            "training_per_worker": training, "non_training_pct": 100 * (1 - training / wall),
            # where the rest goes: evaluation; the rest of each run (model build, probe, data
            # order); outside any run (start-up, data load, store, summary, idle workers)
            "eval_pct": 100 * per_worker["eval_seconds"] / wall,
            "in_run_other_pct": 100 * (per_worker["wall_seconds"] - training - per_worker["eval_seconds"]) / wall,
            "outside_runs_pct": 100 * (1 - per_worker["wall_seconds"] / wall),
            "peak_mb": float(df.peak_rss_mb.max())}


def torch_import_seconds(tries: int = 3) -> float:
    """``import torch``'s cumulative time from ``python -X importtime``, the best of ``tries``."""
    best = float("inf")
    for _ in range(tries):
        out = subprocess.run([sys.executable, "-X", "importtime", "-c", "import torch"], capture_output=True,
                             text=True, check=True).stderr
        line = next(l for l in reversed(out.splitlines()) if l.rstrip().endswith("| torch"))
        best = min(best, int(line.split("|")[1]) / 1e6)
    return best


def first_step_seconds(processes: int) -> float:
    """Seconds from starting ``processes`` copies of ``first_step.py`` at once to the last one's
    first training step: the floor under any tool's start-up with that many trainers."""
    t0 = time.time()
    procs = [subprocess.Popen([sys.executable, str(ROOT / "benchmarks/first_step.py")], stdout=subprocess.PIPE,
                              text=True) for _ in range(processes)]
    ends = [float(p.communicate()[0].split()[-1]) for p in procs]
    if any(p.returncode for p in procs):
        raise SystemExit("benchmarks/first_step.py failed")
    return max(ends) - t0


def startup(args) -> dict:
    """Seconds from the command's start to the first run's training start (and each worker's),
    beside ``import torch``'s own cost and the bare floor (``first_step.py``: one process, and
    as many at once as the sweep has workers; the median of 3 each)."""
    from datetime import datetime
    from statistics import median

    from initsweep.results.read import load_results

    load_before = list(os.getloadavg())
    torch_s = torch_import_seconds()
    floor_one = median(first_step_seconds(1) for _ in range(3))
    with tempfile.TemporaryDirectory() as tmp:
        config = config_for(args, Path(tmp) / "bench.yaml")
        cmd = [sys.executable, "-m", "initsweep", "run", str(config), "--results", str(Path(tmp) / "res"),
               "--device", args.device, "--quiet"]
        if args.workers:
            cmd += ["--workers", str(args.workers)]
        t0 = time.time()
        wall, _ = _run(cmd)
        df = load_results(Path(tmp) / "res")
    finished = df.finished_at.map(lambda s: datetime.fromisoformat(s).timestamp())
    trains_from = finished - df.wall_seconds + df.setup_seconds - t0  # seconds after the command started
    first_claim = df.claimed_at.map(lambda s: datetime.fromisoformat(s).timestamp()).min() - t0
    per_worker = trains_from.groupby(df.worker).min().sort_values()
    floor_workers = median(first_step_seconds(len(per_worker)) for _ in range(3))
    return {"cpu": cpu_model(), "loadavg_before": load_before, "loadavg_after": list(os.getloadavg()),
            "runs": len(df), "workers": len(per_worker), "wall": wall, "import_torch": torch_s,
            "first_claim": float(first_claim), "first_trains": float(per_worker.iloc[0]),
            "workers_first_train": [float(x) for x in per_worker],
            "over_import_torch": float(per_worker.iloc[0]) - torch_s,
            "bare_first_step": floor_one, "bare_first_step_all_workers": floor_workers}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--inits", type=int, default=6, help="how many of the 6 inits (x 2 activations x seeds)")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--train-limit", type=int, default=4000)
    parser.add_argument("--test-limit", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=None, help="initsweep run --workers (default: its own)")
    parser.add_argument("--tiny", action="store_true", help="2 runs on 256 images: checks the counting, not speed")
    parser.add_argument("--study", default=None, help="report the non-training share of this config's sweep")
    parser.add_argument("--startup", action="store_true",
                        help="seconds before the first run trains, beside import torch's")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (every mode)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.tiny:
        args.seeds, args.inits, args.train_limit, args.test_limit = 1, 1, 256, 256
    result = study(args) if args.study else startup(args) if args.startup else measure(args)
    if args.json:
        from initsweep.jsontext import json_text

        print(json_text(result, indent=None), end="")
        return
    if args.startup:
        print(f"CPU: {result['cpu']}; load average before: {' '.join(f'{x:.2f}' for x in result['loadavg_before'])}, "
              f"after: {' '.join(f'{x:.2f}' for x in result['loadavg_after'])}")
        print(f"import torch {result['import_torch']:.2f} s; initsweep run ({result['runs']} runs, "
              f"{result['workers']} worker(s), {result['wall']:.1f} s): first claim at {result['first_claim']:.2f} s, "
              f"first run trains at {result['first_trains']:.2f} s "
              f"(import torch + {result['over_import_torch']:.2f} s); each worker's first: "
              + ", ".join(f"{x:.2f} s" for x in result["workers_first_train"]))
        print(f"bare floor (benchmarks/first_step.py: import torch, model, Adam, one step): one process "
              f"{result['bare_first_step']:.2f} s (import torch + {result['bare_first_step'] - result['import_torch']:.2f} s), "
              f"{result['workers']} at once {result['bare_first_step_all_workers']:.2f} s")
        return
    if args.study:
        print(" ".join(f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}" for k, v in result.items()))
        return
    info = result[-1]
    print(f"CPU: {info['cpu']}; bf16 flags: {', '.join(info['bf16_flags']) or 'none'}; "
          f"load average (1, 5, 15 min) before: {' '.join(f'{x:.2f}' for x in info['loadavg_before'])}, "
          f"after: {' '.join(f'{x:.2f}' for x in info['loadavg_after'])}")
    print(f"tutorial CNN, {result[0]['runs']} runs x {args.epochs} epoch(s), batch {args.batch_size}; "
          f"{info['flops_per_sample'] / 1e6:.1f} MFLOP per training sample; GEMM ceiling {info['gemm_gflops']:.1f} GFLOP/s")
    hand_fp32 = next(r for r in result if r["mode"] == "hand loop x2 fp32")
    print(f"{'mode':<22}{'runs':>5}{'wall s':>9}{'samples/s':>11}{'vs naive':>10}{'vs shell':>10}{'vs hand':>9}"
          f"{'% ceiling':>11}{'trains at':>11}{'peak MB':>9}")
    for r in result[:-1]:
        print(f"{r['mode']:<22}{r['runs']:>5}{r['wall']:>9.1f}{r['samples_per_s']:>11.0f}{r['vs_naive']:>9.2f}x"
              f"{r['vs_shell']:>9.2f}x{hand_fp32['wall'] / r['wall']:>8.2f}x{r['ceiling_pct']:>10.1f}%"
              f"{r['train_rate']:>11.0f}{r['peak_mb']:>9.0f}")
    print("trains at: samples/s of one training process (per worker, per hand-loop process) over its own "
          "training seconds; vs hand: the fp32 hand loop's wall over the mode's")


if __name__ == "__main__":
    main()
