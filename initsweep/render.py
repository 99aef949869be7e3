"""Rich renderings of the library's plain-data results (the CLI's views)."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table


def _si(n: float) -> str:
    for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return f"{n:.0f}"


def render_plan(console: Console, summary: dict[str, Any], limit: int | None = 40) -> None:
    """Print what ``plan_summary`` returns: header, axes, counts, work, then the runs."""
    console.print(f"[bold]{summary['sweep']}[/] on {summary['dataset']}", highlight=False)
    for axis, values in summary["axes"].items():
        console.print(f"  {axis:>12}: {', '.join(map(str, values))}  ({len(values)})", highlight=False)
    console.print(f"  {'seeds':>12}: {', '.join(map(str, summary['seeds']))}", highlight=False)
    console.print(
        f"{summary['n_points']} points x seeds, {summary['n_excluded']} excluded, "
        f"{summary['n_duplicates']} merged -> [bold]{summary['n_runs']} runs[/]", highlight=False)
    work = summary["work"]
    console.print(
        f"work: {_si(work['train_samples'])} training samples, "
        f"~{_si(work['train_gflop'] * 1e9)}FLOP to train; largest model "
        f"{_si(work['largest_params'])} params, {_si(work['largest_macs_per_sample'])} MACs per image",
        highlight=False)
    for note in summary["notes"]:
        console.print(f"[yellow]note:[/] {note}", highlight=False)
    runs = summary["runs"]
    if not runs:
        return
    shown = runs if limit is None else runs[:limit]
    table = Table(show_edge=False, pad_edge=False)
    columns = [c for c in shown[0] if c not in ("macs_per_sample", "train_samples")]
    for col in columns:
        table.add_column(col, justify="right" if isinstance(shown[0][col], (int, float)) else "left")
    for row in shown:
        table.add_row(*(_si(row[c]) if c == "params" else str(row[c]) for c in columns))
    console.print(table)
    if len(shown) < len(runs):
        console.print(f"... and {len(runs) - len(shown)} more (--all lists every run)", highlight=False)
