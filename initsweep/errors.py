"""Domain errors and the exit codes they become at the CLI boundary.

The library raises these; only ``cli.py`` turns them into one line on stderr and an exit
code, so a notebook user gets an exception and a shell user gets a clean message.
"""

from __future__ import annotations

from typing import Any

EXIT_OK = 0
EXIT_RUNS_FAILED = 1  # some run failed, or a regression check found a regression
EXIT_USAGE = 2  # bad usage, bad config, bad input file, unusable results folder
EXIT_BUDGET = 75  # --time-budget spent with runs left: run again to resume (sysexits' EX_TEMPFAIL)
EXIT_INTERRUPTED = 130  # Ctrl-C / SIGTERM


class InitsweepError(Exception):
    """An error the user can fix; its message is shown as is, without a traceback."""

    exit_code = EXIT_USAGE

    def lines(self) -> list[str]:
        """The message as the lines to print (one problem per line)."""
        return str(self).splitlines() or [type(self).__name__]

    def cli_lines(self) -> list[str]:
        """The lines the CLI prints: the same, unless the error names a parameter (below)."""
        return self.lines()


class OptionError(InitsweepError):
    """A bad value of a named parameter of the library (``run_sweep(vmap=...)``).

    From Python it reads ``vmap='sometimes': use auto, on or off``; the CLI, where the same
    value came from a flag, prints ``--vmap sometimes: ...``, so the message names what the
    user actually typed in either place. ``value`` is the offending value: one entry of a
    list parameter (``devices='cuda:7'``) when only that entry is wrong.
    """

    def __init__(self, param: str, value: Any, problem: str):
        self.param, self.value, self.problem = param, value, problem
        super().__init__(f"{param}={value!r}: {problem}")

    def cli_lines(self) -> list[str]:
        shown = ",".join(map(str, self.value)) if isinstance(self.value, (list, tuple)) else self.value
        return [f"--{self.param.replace('_', '-')} {shown}: {self.problem}"]


class ConfigError(InitsweepError):
    """One or more problems in a config file, each naming the file and the key path."""

    def __init__(self, problems: list[str], source: str | None = None):
        self.problems = list(problems)
        self.source = source
        prefix = f"{source}: " if source else ""
        super().__init__("\n".join(prefix + p for p in self.problems))


class DataError(InitsweepError):
    """A dataset could not be found, read or downloaded."""


class StoreError(InitsweepError):
    """A results folder or database that cannot be used."""
