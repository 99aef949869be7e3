"""What a pool worker imports before its first run (issue 18): its entry point
(``sweep/executors/pool.py``) reaches training without the store, the ledger or pandas,
which would add 0.3 s to every worker's start-up (``python -X importtime``)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_a_worker_entry_point_imports_neither_the_store_nor_pandas():
    code = ("import sys, initsweep.sweep.executors.pool, initsweep.batched; "
            "print(sorted(m for m in ('pandas', 'initsweep.results.store', 'initsweep.sweep.run', "
            "'initsweep.sweep.ledger') if m in sys.modules))")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env, cwd=ROOT)
    assert out.stdout.strip() == "[]"
    # the package's public names still come from run.py, on first use
    from initsweep import sweep
    from initsweep.sweep.run import run_sweep

    assert sweep.run_sweep is run_sweep and sweep.__all__ == ["Observer", "SweepOutcome", "plan_execution", "run_sweep"]


def test_the_cli_and_the_pool_import_no_torch_so_that_workers_start_before_the_parent_imports_it():
    """``initsweep run`` starts its CPU workers (``pool.start_early``) before its own ``import
    torch``: the command's module and the pool's must not import it."""
    code = ("import sys, initsweep.cli, initsweep.sweep.executors.pool; "
            "print(sorted(m for m in ('torch', 'numpy', 'pandas') if m in sys.modules))")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env, cwd=ROOT)
    assert out.stdout.strip() == "[]"


def test_the_cli_freezes_the_heap_at_exit_so_that_the_exit_skips_a_last_collection():
    """``gc.freeze()`` at exit (``cli/app._freeze_at_exit``): a handler registered before the
    command runs after its own and sees every object frozen; a test runner's calls freeze nothing
    while it runs."""
    code = ("import atexit, gc, sys; atexit.register(lambda: print('frozen', gc.get_freeze_count() > 0)); "
            "from initsweep.cli import app; from typer.testing import CliRunner; "
            "[CliRunner().invoke(app, ['list-inits', '-f', 'json']) for _ in range(2)]; "
            "print('before exit', gc.get_freeze_count() == 0); "
            "sys.argv = ['initsweep', 'list-activations', '-f', 'json']; app()")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT)
    lines = out.stdout.strip().splitlines()
    assert out.returncode == 0 and lines[0] == "before exit True" and lines[-1] == "frozen True", out.stdout + out.stderr
