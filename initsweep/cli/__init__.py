"""The ``initsweep`` command line.

``app.py`` holds the Typer app, the consoles and the error boundary; each command group
registers on that app from its own module (``sweep``: plan, run, list-*; ``report``:
report, export, show; ``ci``: merge, check; ``probe``; ``runs``: tag, rm), and
``render``/``render_report`` draw their output. Only this package prints.
"""

from __future__ import annotations

from . import ci, compare, probe, report, runs, sweep  # noqa: F401  (each registers its commands on the app)
from .app import app

# The console script (``initsweep = "initsweep.cli:main"``) and ``python -m initsweep``: the
# app's own group (``app._Group``) turns click's usage errors into one line, exit 2.
main = app

__all__ = ["app", "main"]
