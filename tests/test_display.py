"""What `initsweep run` shows while it works and when it ends: every finished run's line on a
real 80-column terminal (replayed from the bytes the display wrote, cursor movements and
all), and the end-of-run summary naming its settings."""

from __future__ import annotations

import fcntl
import io
import os
import re
import select
import struct
import subprocess
import sys
import termios
import threading
import time
from collections import Counter
from pathlib import Path

import yaml
from rich.console import Console
from typer.testing import CliRunner

from initsweep.cli import app
from initsweep.config import expand, validate
from initsweep.cli.render import SweepDisplay
from initsweep.train import RunResult

REPO = Path(__file__).resolve().parents[1]
TINY = {"dataset": "mnist-sample", "train_limit": 256, "test_limit": 256, "val_fraction": 0.1}
# Long labels (leaky_relu(negative_slope=0.2)) make bars and result lines wrap at 80 columns.
GRID = {"init": ["he", "std_normal", "lecun_normal"], "activation": ["relu", {"name": "leaky_relu",
                                                                             "negative_slope": 0.2}],
        "depth": [1, 2]}
runner = CliRunner()
_CSI = re.compile(r"\x1b\[(\??)([0-9;]*)([A-Za-z])")


class Terminal:
    """Just enough of a VT100 to replay what rich's live display writes: text with autowrap at
    the right margin, CR, LF (as a tty's ``onlcr`` delivers it: to the next line's start,
    scrolling the top row into the scrollback), cursor up (stopped at the screen's top row,
    as a real terminal stops it), erase line, and colour and cursor-visibility codes, which
    leave the page as it is. Any other sequence fails the test rather than go unreplayed."""

    def __init__(self, cols: int, rows: int):
        self.cols, self.rows = cols, rows
        self.lines: list[list[str]] = [[]]  # scrollback, then the screen's rows
        self.row = self.col = 0

    def feed(self, text: str) -> "Terminal":
        i = 0
        while i < len(text):
            if text[i] == "\x1b":
                match = _CSI.match(text, i)
                assert match, f"unexpected escape sequence {text[i:i + 12]!r}"
                self._control(*match.groups())
                i = match.end()
                continue
            if text[i] == "\r":
                self.col = 0
            elif text[i] == "\n":
                self._line_feed()
            else:
                if self.col == self.cols:  # the pending wrap of a full line
                    self._line_feed()
                line = self.lines[self.row]
                line.extend(" " * (self.col + 1 - len(line)))
                line[self.col] = text[i]
                self.col += 1
            i += 1
        return self

    def _line_feed(self) -> None:
        self.row, self.col = self.row + 1, 0
        if self.row == len(self.lines):
            self.lines.append([])

    def _control(self, private: str, params: str, final: str) -> None:
        if final == "m" or (private and params == "25" and final in "hl"):
            return
        if final == "A" and not private:
            self.row = max(len(self.lines) - self.rows, 0, self.row - int(params or 1))
        elif final == "K" and params == "2":
            self.lines[self.row] = []
        else:
            raise AssertionError(f"unexpected control sequence ESC[{private}{params}{final}")

    def text(self) -> str:
        """Scrollback and screen, as a person scrolling back would read them."""
        return "\n".join("".join(line).rstrip() for line in self.lines)


def assert_each_run_once(text: str, n: int) -> None:
    seen = Counter(re.findall(rf"^\[(\d+)/{n}\] ", text, flags=re.M))
    assert {k: seen[str(k)] for k in range(1, n + 1) if seen[str(k)] != 1} == {}, text
    assert not [line for line in text.splitlines() if re.match(r"sweep +\S*[━╸╺]", line)], text  # bars erased


class ThreadsSeen(io.StringIO):
    """A console's file that remembers which threads wrote to it."""

    def __init__(self):
        super().__init__()
        self.writers: set[str] = set()

    def write(self, text: str) -> int:
        self.writers.add(threading.current_thread().name)
        return super().write(text)


def test_live_display_at_80_columns_keeps_every_finished_run_and_draws_from_one_thread(monkeypatch):
    """Four runs in flight, bars updated, runs finishing (a bar removed just before each result
    line): the pattern that lost a line when rich's refresh thread drew between the two."""
    monkeypatch.setenv("TERM", "xterm-256color")
    specs = expand(validate({"name": "grid", "data": TINY, "model": {"width": 4},
                             "train": {"epochs": 2, "seeds": [0, 1, 2, 3]}, "grid": GRID})).runs
    screen = ThreadsSeen()
    console = Console(file=screen, width=80, height=24, force_terminal=True, color_system="standard")
    display = SweepDisplay(console, console)
    display.sweep_started("grid", len(specs), len(specs), 0)
    waiting, running = list(specs), {}
    statuses = ["ok", "diverged", "failed"]
    try:
        while waiting or running:
            while waiting and len(running) < 4:
                spec = waiting.pop(0)
                display.run_started(spec)
                running[spec.run_id] = [spec, 0]
            for entry in list(running.values()):
                spec, step = entry[0], entry[1] + 1 + len(running) % 3
                entry[1] = step
                display.run_progress(spec, 1 + min(step, 19) // 10, min(step, 19) % 10 + 1, 10)
                if step >= 20:
                    del running[spec.run_id]
                    k = display.done
                    display.run_finished(spec, RunResult(spec.run_id, statuses[k % 3], test_acc=0.5,
                                                         diverged_step=7 if k % 3 == 1 else None,
                                                         error="RuntimeError: boom" if k % 3 == 2 else None,
                                                         wall_seconds=1.0))
            time.sleep(0.003)  # long enough in all for a 10 Hz refresh thread to draw many times
    finally:
        display.close()
    assert screen.writers == {threading.main_thread().name}
    text = Terminal(80, 24).feed(screen.getvalue()).text()
    assert text.startswith(f"grid: {len(specs)} runs planned, 0 already finished, {len(specs)} to run\n")
    assert_each_run_once(text, len(specs))
    assert len(specs) == 48 and len(re.findall(r"^\[\d+/48\] failed ", text, flags=re.M)) == 16


def run_on_a_terminal(args: list[str], cols: int = 80, rows: int = 24, timeout: float = 300) -> tuple[int, str]:
    """``python -m initsweep ARGS`` on a pseudo-terminal of that size: its exit code and every
    byte it wrote (stdout and stderr share the terminal, as in a shell)."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
    env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": str(cols), "LINES": str(rows)}
    proc = subprocess.Popen([sys.executable, "-m", "initsweep", *args], stdin=slave, stdout=slave, stderr=slave,
                            cwd=REPO, env=env)
    os.close(slave)
    out = bytearray()
    try:
        while True:
            ready, _, _ = select.select([master], [], [], timeout)
            assert ready, f"no output for {timeout} s: {bytes(out[-2000:])!r}"
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the process and its workers closed the terminal
                break
            if not chunk:
                break
            out += chunk
        return proc.wait(timeout), out.decode("utf-8")
    finally:
        proc.kill()
        os.close(master)


def test_run_on_an_80_column_terminal_shows_each_finished_run_exactly_once(tmp_path):
    config = tmp_path / "grid.yaml"
    config.write_text(yaml.safe_dump({"name": "grid", "data": TINY, "model": {"arch": "plain", "width": 4},
                                      "train": {"epochs": 1, "batch_size": 64, "seeds": [0]},
                                      "diagnostics": {"enabled": False}, "grid": GRID}))
    code, out = run_on_a_terminal(["run", str(config), "--results", str(tmp_path / "res"), "--device", "cpu"])
    text = Terminal(80, 24).feed(out).text()
    assert code == 0, text
    assert_each_run_once(text, 12)
    assert "this run: 12 ok; skipped 0" in text


def test_end_of_run_summary_names_the_settings_that_vary(tmp_path):
    """``init=he width=6``, not ``he 6``: only what varies (not the activation), as written."""
    config = tmp_path / "grid.yaml"
    config.write_text(yaml.safe_dump({"name": "named", "data": TINY, "model": {"arch": "plain", "activation": "relu"},
                                      "train": {"epochs": 1, "batch_size": 64, "seeds": [0]},
                                      "diagnostics": {"enabled": False},
                                      "grid": {"init": ["he", "std_normal"], "width": [4, 6], "depth": [1, 2]}}))
    out = runner.invoke(app, ["run", str(config), "--results", str(tmp_path / "res"), "--device", "cpu", "-q"],
                        env={"NO_COLOR": "1", "COLUMNS": "160"})
    assert out.exit_code == 0, out.output
    rows = [line.split("│")[1:3] for line in out.stdout.splitlines() if re.match(r"^│ +[12] │", line)]
    assert [depth.strip() for depth, _ in rows] == ["1", "2"]
    for _, setting in rows:
        assert re.fullmatch(r"init=(he|std_normal) width=(4|6)", setting.strip()), setting
