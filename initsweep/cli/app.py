"""What every CLI command module shares: the Typer app, consoles, the error boundary, options.

Command modules (``sweep.py``, ``report.py``, ...) register on :data:`app`; only they and
the renderers they call print. :func:`boundary` turns a domain error into one line per
problem on stderr and its exit code (0 ok, 1 runs failed / check regressed, 2 bad usage or
input, 130 Ctrl-C, 143 SIGTERM), so no user mistake ends in a traceback.
"""

from __future__ import annotations

import atexit
import functools
import gc
import os
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Callable, Optional

import typer
from typer.core import TyperGroup
from rich.console import Console
from rich.markup import escape

from .. import __version__
from ..errors import EXIT_TERMINATED, EXIT_USAGE, InitsweepError, interrupt_exit_code
from ..jsontext import json_text

try:  # newer typer carries its own copy of click, whose errors derive from typer.TyperException
    _ClickError: type[Exception] = typer.TyperException
except AttributeError:  # pragma: no cover - older typer uses click itself, a public dependency then
    from click import ClickException as _ClickError


class _Group(TyperGroup):
    """The app's top-level command: click's own usage errors (a bad option value, a missing
    argument, an unknown command) become one line on stderr and exit 2, like every other
    bad input, instead of a multi-line box; bare ``initsweep`` prints the help and exits 2.

    Done here rather than around ``app()`` so that ``main = app`` is the entry point and the
    tests' ``CliRunner`` sees the same lines a shell does.
    """

    def parse_args(self, ctx: typer.Context, args: list[str]) -> list[str]:
        if not args and self.no_args_is_help and not ctx.resilient_parsing:
            # Rich's help formatter prints the help itself and returns "" (then only a newline
            # reaches stderr); a plain formatter returns the text, shown on stderr like click does.
            typer.echo(ctx.get_help(), err=True, color=ctx.color)
            raise typer.Exit(EXIT_USAGE)
        return super().parse_args(ctx, args)

    def main(self, *args: Any, standalone_mode: bool = True, **kwargs: Any) -> Any:
        if not standalone_mode:  # a caller that handles click's exceptions itself
            return super().main(*args, standalone_mode=False, **kwargs)
        _freeze_at_exit()
        try:
            code = super().main(*args, standalone_mode=False, **kwargs)
        except _ClickError as exc:
            if exc.exit_code == EXIT_USAGE:  # a usage error: it names the (sub)command it is about
                ctx = getattr(exc, "ctx", None)
                command = ctx.command_path if ctx is not None else "initsweep"
                err_console.print(f"error: {command}: {exc.format_message().rstrip('.')} (see {command} -h)",
                                  highlight=False, markup=False, soft_wrap=True)
            else:
                err_console.print(f"error: {exc.format_message()}", highlight=False, markup=False, soft_wrap=True)
            sys.exit(exc.exit_code)
        except typer.Abort as exc:  # Ctrl-C (or SIGTERM) outside a command's own boundary
            sys.exit(interrupt_exit_code(exc.__cause__))
        sys.exit(code if isinstance(code, int) else 0)


def _freeze_at_exit() -> None:
    """Let the interpreter's exit skip its last garbage collection, a walk over every object
    torch and pandas made: 0.8 s after ``initsweep run`` here, 0.27 s with ``gc.freeze()``
    (2026-11-30, a 4-run sweep on the quiet box). Run at exit only, once however many
    commands a process runs (a test runner that calls the app keeps collecting meanwhile);
    nothing the command wrote waits for a collection: the store and output files are
    closed, stdout is flushed by the exit itself."""
    atexit.unregister(gc.freeze)
    atexit.register(gc.freeze)


app = typer.Typer(
    cls=_Group,
    name="initsweep",
    help="Sweep weight initializers x activations x depth, store every run, explain the signal.",
    no_args_is_help=True,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


class _Console(Console):
    """A console whose reader may leave early (``initsweep run ... | head -1``).

    Rich's default answer to a closed pipe is ``SystemExit(1)``, which would stop a sweep
    half-way and skip its ``--junit``/``--summary-md`` files. A reader that stopped
    reading is not a failed run: the rest of this console's output is dropped and the
    command finishes its work and exits with its own code.
    """

    def on_broken_pipe(self) -> None:
        self.quiet = True
        # Python flushes the stream again at exit; aimed at /dev/null that flush cannot fail
        # (a failing one prints "Exception ignored ... BrokenPipeError" and exits 120).
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, (sys.stderr if self.stderr else sys.stdout).fileno())
        except (OSError, ValueError):  # not a real file (a test runner's buffer): nothing to redirect
            pass
        finally:
            os.close(devnull)


# Rich draws 80 columns when output is not a terminal (CI logs, pipes); tables need more: the
# flat report table (interval, spread and factor columns) takes about 170.
PIPE_COLUMNS = 200
_PIPE_WIDTH = None if sys.stdout.isatty() else int(os.environ.get("COLUMNS", PIPE_COLUMNS))
console = _Console(width=_PIPE_WIDTH)
err_console = _Console(stderr=True, width=None if sys.stderr.isatty() else int(os.environ.get("COLUMNS", PIPE_COLUMNS)))


class Format(str, Enum):
    table = "table"
    json = "json"


def choices(name: str, *values: str) -> type[Enum]:
    """A str Enum of an option's values: Typer lists them in --help and click refuses any
    other value with a one-line usage error. ``.value`` is the plain string the library takes."""
    return Enum(name, {v: v for v in values}, type=str)


def boundary(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Run a command; a domain error becomes one clean line per problem and an exit code."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except InitsweepError as exc:
            for line in exc.cli_lines():
                err_console.print(f"[bold red]error:[/] {escape(line)}", markup=True, highlight=False, soft_wrap=True)
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt as exc:
            code = interrupt_exit_code(exc)
            err_console.print("terminated (SIGTERM)" if code == EXIT_TERMINATED else "interrupted", highlight=False)
            raise typer.Exit(code) from None

    return wrapper


def print_json(data: Any) -> None:
    """Every JSON a command prints is strict (non-finite numbers as null): see ``jsontext``."""
    sys.stdout.write(json_text(data))


def _version(value: bool) -> None:
    if value:
        import torch

        console.print(f"initsweep {__version__} (torch {torch.__version__})", highlight=False)
        raise typer.Exit()


@app.callback()
def main_callback(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Show the version and exit.")] = False,
) -> None:
    """Sweep weight initializers x activations x depth on MNIST; store, compare and explain every run."""


# INITSWEEP_RESULTS sets every command's default folder (as MLFLOW_TRACKING_URI does); the flag wins.
ResultsOpt = Annotated[Path, typer.Option("--results", "-r", envvar="INITSWEEP_RESULTS", show_envvar=True,
                                          help="Results folder (holds initsweep.db).")]
ConfigArg = Annotated[Path, typer.Argument(help="Sweep config (YAML), e.g. configs/grid.yaml.", show_default=False)]
FormatOpt = Annotated[Format, typer.Option("--format", "-f", help="Output format.")]
SetOpt = Annotated[Optional[list[str]], typer.Option(
    "--set", "-S", metavar="KEY=VALUE",
    help="Override a setting of the config (repeatable): a dotted KEY (train.lr, model.width, name) = a YAML "
         "VALUE; grid.AXIS=\\[a, b] or =a,b sets or adds an axis, grid.AXIS=null removes it.")]


def write_output(path: Path, text: str) -> None:
    """Write a file the user asked for (creating its folder); a failure is one clean line."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise InitsweepError(f"{path}: cannot write: {exc.strerror or exc}") from None
