"""Domain errors and the exit codes they become at the CLI boundary.

The library raises these; only the CLI (``initsweep.cli``) turns them into one line on stderr and an exit
code, so a notebook user gets an exception and a shell user gets a clean message.
"""

from __future__ import annotations

import re
import signal
from typing import Any

EXIT_OK = 0
EXIT_RUNS_FAILED = 1  # some run failed, or a regression check found a regression
EXIT_USAGE = 2  # bad usage, bad config, bad input file, unusable results folder
EXIT_BUDGET = 75  # --time-budget spent with runs left: run again to resume (sysexits' EX_TEMPFAIL)
EXIT_INTERRUPTED = 130  # Ctrl-C: 128 + SIGINT, as a shell reports it
EXIT_TERMINATED = 143  # SIGTERM: 128 + SIGTERM, what schedulers (Slurm, Kubernetes, CI) read as preempted


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
    list parameter (``devices='cuda:7'``) when only that entry is wrong. Where the problem
    quotes the value itself (``unknown column 'dpeth'``), ``repeat_value=False`` names only
    the parameter: ``by: unknown column 'dpeth'``, at the CLI ``--by: ...``. ``see`` names
    another parameter that governs the problem, appended in parentheses in either form
    (``... within 15 s (ray_timeout)``, at the CLI ``(--ray-timeout)``).
    """

    def __init__(self, param: str, value: Any, problem: str, *, repeat_value: bool = True,
                 see: str | None = None):
        self.param, self.value, self.problem, self.repeat_value, self.see = param, value, problem, repeat_value, see
        said = problem + (f" ({see})" if see else "")
        super().__init__(f"{param}={value!r}: {said}" if repeat_value else f"{param}: {said}")

    def cli_lines(self) -> list[str]:
        said = self.problem + (f" ({flag(self.see)})" if self.see else "")
        if not self.repeat_value:
            return [f"{flag(self.param)}: {said}"]
        shown = ",".join(map(str, self.value)) if isinstance(self.value, (list, tuple)) else self.value
        return [f"{flag(self.param)} {shown}: {said}"]


class ParamError(InitsweepError):
    """An error that names several parameters of the library, written once for both readers.

    The message is a template: ``{pivot}`` reads ``pivot`` from Python and ``--pivot`` at
    the CLI, ``{executor=ray}`` reads ``executor='ray'`` and ``--executor ray``. Text put
    into the template must hold no ``{name}`` of its own (fixed words, column names, setting
    values); a user's free text belongs in an :class:`OptionError`, which never reads it.
    """

    def __init__(self, template: str):
        self.template = template
        super().__init__(_name_params(template, cli=False))

    def cli_lines(self) -> list[str]:
        return _name_params(self.template, cli=True).splitlines()


_PARAM_REF = re.compile(r"\{([a-z][a-z0-9_]*)(?:=([^{}\s]+))?\}")


def _name_params(template: str, cli: bool) -> str:
    def one(ref: re.Match) -> str:
        name, value = ref[1], ref[2]
        if cli:
            return flag(name) + (f" {value}" if value is not None else "")
        return name + (f"={value!r}" if value is not None else "")

    return _PARAM_REF.sub(one, template)


def flag(param: str) -> str:
    """The CLI flag of a library parameter: ``time_budget`` -> ``--time-budget``; a trailing
    underscore (``set_``, a name Python keeps for itself) is not part of the flag."""
    return "--" + param.rstrip("_").replace("_", "-")


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where Ctrl-C raises ``KeyboardInterrupt``.

    A subclass, so that every handler of Ctrl-C stops a sweep the same way (runs in flight
    marked ``interrupted``, finished runs kept); only the exit code differs (143, not 130).
    """


# Set by the handler itself: a library may re-raise a signal handler's exception as a bare
# KeyboardInterrupt (Ray's ray.wait does), so the exception's type alone cannot tell.
_sigterm_received = False


def _raise_terminated(signum, frame) -> None:
    global _sigterm_received
    _sigterm_received = True
    raise Terminated


def sigterm_as_interrupt() -> None:
    """Make SIGTERM (a CI cancel, a scheduler's preemption, ``kill``) stop this process
    like Ctrl-C, as :class:`Terminated`. Call it from the main thread."""
    global _sigterm_received
    _sigterm_received = False
    signal.signal(signal.SIGTERM, _raise_terminated)


def terminated(exc: BaseException | None) -> bool:
    """Is this interrupt SIGTERM's rather than Ctrl-C's?"""
    return isinstance(exc, Terminated) or (isinstance(exc, KeyboardInterrupt) and _sigterm_received)


def interrupt_exit_code(exc: BaseException | None) -> int:
    """143 for SIGTERM, else 130 (Ctrl-C)."""
    return EXIT_TERMINATED if terminated(exc) else EXIT_INTERRUPTED


def interrupt_reason(exc: BaseException) -> str:
    """What a run's row says when the sweep stopped while it was in flight."""
    if terminated(exc):
        return "interrupted (SIGTERM)"
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted (Ctrl-C)"
    return f"interrupted ({type(exc).__name__})"


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
