"""Domain errors and the exit codes they become at the CLI boundary.

The library raises these; only ``cli.py`` turns them into one line on stderr and an exit
code, so a notebook user gets an exception and a shell user gets a clean message.
"""

from __future__ import annotations

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
