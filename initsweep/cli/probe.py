"""``initsweep probe``: per-layer diagnostics and the mean-field prediction, without training.

Thin: the points come from ``config.expand`` (a config's grid, flags overriding or
defining single values), the numbers from ``probe.probe_spec``, the figure from
``plots_probe`` (matplotlib is imported only for ``--plot``).
"""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace
from typing import Annotated, Any, Optional

import typer

from .app import Format, FormatOpt, SetOpt, app, boundary, choices, console, err_console, print_json
from ..errors import InitsweepError


# config's padding values, copied: importing them here would load torch for every command
# (tests/test_cli_errors.py::test_cli_choices_are_the_librarys holds them equal). --arch is a
# plain string that config validation checks against models.py's registry, so a registered
# arch needs no edit here.
PaddingChoice = choices("PaddingChoice", "zeros", "circular")


_CHOICE_HELP = "a name, or a YAML mapping such as '{name: variance_scaling, scale: 1.76}'"


def _parse_choice(value: str | None) -> Any:
    """A flag value as YAML (``{name: ..., k: v}``, a number) or a bare name."""
    if value is None:
        return None
    import yaml

    from ..config import parse_yaml

    text = value.strip()
    if text.startswith("{") or _looks_numeric(text):
        try:
            return parse_yaml(text)
        except yaml.YAMLError:
            raise InitsweepError(f"cannot read {value!r}: expected {_CHOICE_HELP}") from None
    return text


def _looks_numeric(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _with_overrides(raw: Any, overrides: dict[str, Any], seed: int | None, batch_size: int | None) -> Any:
    """The config with each given flag replacing that setting and any grid axis over it."""
    if not isinstance(raw, dict):
        return raw
    raw = dict(raw)
    if overrides and isinstance(raw.get("model", {}), dict):
        raw["model"] = {**raw.get("model", {}), **overrides}
    grid = raw.get("grid")
    if overrides and isinstance(grid, (dict, list)):
        gone = set(overrides) | {f"model.{k}" for k in overrides}
        raw["grid"] = [_without_axes(g, gone) for g in grid] if isinstance(grid, list) else _without_axes(grid, gone)
        if isinstance(raw.get("exclude"), list):
            raw["exclude"] = [r for r in raw["exclude"] if not (isinstance(r, dict) and gone & set(r))]
    if seed is not None and isinstance(raw.get("train", {}), dict):
        raw["train"] = {**raw.get("train", {}), "seeds": [seed]}
    if batch_size is not None and isinstance(raw.get("diagnostics", {}), dict):
        raw["diagnostics"] = {**raw.get("diagnostics", {}), "batch_size": batch_size}
    return raw


def _without_axes(grid: Any, gone: set[str]) -> Any:
    """One grid without the axes a flag sets, in its zip entries too (an entry left with
    nothing to vary is dropped, a zip left with no entry too)."""
    if not isinstance(grid, dict):
        return grid
    out = {k: v for k, v in grid.items() if k not in gone}
    if isinstance(out.get("zip"), list):
        kept = [{k: v for k, v in e.items() if k not in gone} if isinstance(e, dict) else e for e in out["zip"]]
        kept = [e for e, was in zip(kept, out["zip"]) if e or not was]
        if kept:
            out["zip"] = kept
        else:
            del out["zip"]
    return out


def _settings(spec) -> dict[str, Any]:
    s = spec.settings()
    keys = ("init_label", "activation_label", "bias_label", "arch", "depth", "width", "norm", "padding", "head")
    return {k: s[k] for k in keys}


def _label(entry: dict[str, Any]) -> str:
    from ..models import get_arch  # torch is loaded by now: the probe built the model

    s = entry["settings"]
    uses = get_arch(s["arch"]).uses
    shape = " ".join([s["arch"], *(f"{k} {s[k]}" for k in ("depth", "width", "padding") if k in uses)])
    bias = "" if s["bias_label"] == "zeros" else f" bias {s['bias_label']}"
    return f"{s['init_label']} + {s['activation_label']} · {shape}{bias} · seed {entry['seed']}"


def _fmt(value: Any, spec: str = ".3g") -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return format(value, spec)


def _render(entries: list[dict[str, Any]], summary_only: bool) -> None:
    from rich.table import Table

    colour = {"healthy": "green", "vanishing": "yellow", "exploding": "red", "dead": "red", "saturated": "yellow"}
    if not summary_only:
        for e in entries:
            table = Table(title=_label(e), title_justify="left")
            for col in ("layer", "kind", "fan_in", "sigma_w^2", "pre m2", "pred", "act std", "pred",
                        "grad norm^2", "pred", "dead", "saturated"):
                table.add_column(col, justify="right")
            for i, l in enumerate(e["layers"]):
                pred_std = math.sqrt(l["predicted_act_var"]) if l["predicted_act_var"] is not None and l["predicted_act_var"] >= 0 else None
                table.add_row(str(i), l["kind"], str(l["fan_in"]), _fmt(l["sigma_w2"]), _fmt(l["pre_m2"]),
                              _fmt(l["predicted_pre_m2"]), _fmt(l["act_std"]), _fmt(pred_std),
                              _fmt(l["act_grad_norm2"]), _fmt(l["predicted_act_grad_norm2"]),
                              _fmt(l["dead_frac"], ".0%"), _fmt(l["saturated_frac"], ".0%"))
            console.print(table)
            c = colour.get(e["verdict"], "white")
            console.print(f"verdict: [bold {c}]{e['verdict']}[/] — {e['reason']}", highlight=False)
            console.print(f"per layer: activations' second moment x{_fmt(e['forward_factor'], '.3f')} "
                          f"(predicted x{_fmt(e['predicted_forward_factor'], '.3f')}), gradient norm "
                          f"x{_fmt(e['backward_factor'], '.3f')} (predicted x{_fmt(e['predicted_backward_factor'], '.3f')})",
                          highlight=False)
            for note in e["notes"]:
                console.print(f"note: {note}", style="dim", highlight=False)
            console.print()
    if len(entries) > 1 or summary_only:
        table = Table(title="Probe summary (factors per layer; pred = mean-field prediction)", title_justify="left")
        for col in ("point", "verdict", "act x/layer", "pred", "grad x/layer", "pred", "max dead", "mean sat"):
            table.add_column(col, justify="left" if col in ("point", "verdict") else "right")
        for e in entries:
            dead = [l["dead_frac"] for l in e["layers"] if l["dead_frac"] is not None]
            sat = [l["saturated_frac"] for l in e["layers"] if l["saturated_frac"] is not None]
            c = colour.get(e["verdict"], "white")
            table.add_row(_label(e), f"[{c}]{e['verdict']}[/]", _fmt(e["forward_factor"], ".3f"),
                          _fmt(e["predicted_forward_factor"], ".3f"), _fmt(e["backward_factor"], ".3f"),
                          _fmt(e["predicted_backward_factor"], ".3f"), _fmt(max(dead) if dead else None, ".0%"),
                          _fmt(sum(sat) / len(sat) if sat else None, ".0%"))
        console.print(table)


@app.command()
@boundary
def probe(
    config: Annotated[Optional[Path], typer.Argument(
        help="Sweep config (YAML); its grid's points are probed. Without it, the flags define one point "
             "on the MNIST sample.", show_default=False)] = None,
    init: Annotated[Optional[str], typer.Option("--init", help=f"Initializer: {_CHOICE_HELP}.")] = None,
    activation: Annotated[Optional[str], typer.Option("--activation", help=f"Activation: {_CHOICE_HELP}.")] = None,
    depth: Annotated[Optional[int], typer.Option("--depth", min=1, max=1000, help="Layers (plain, mlp).")] = None,
    width: Annotated[Optional[int], typer.Option("--width", min=1, max=4096, help="Channels or units.")] = None,
    arch: Annotated[Optional[str], typer.Option(
        "--arch", help="Model family: plain, tutorial, mlp, or any other registered in models.py.")] = None,
    padding: Annotated[Optional[PaddingChoice], typer.Option("--padding", help="plain only.")] = None,
    bias: Annotated[Optional[str], typer.Option("--bias", help="Bias init: zeros, a number, or a YAML mapping "
                                                               "such as '{name: normal, std: 0.2236}'.")] = None,
    seed: Annotated[Optional[int], typer.Option("--seed", min=0, help="Probe this seed only.")] = None,
    batch_size: Annotated[Optional[int], typer.Option(
        "--batch-size", min=1, max=4096, help="Images in the probe's batch [default: diagnostics.batch_size, 64].")] = None,
    threads: Annotated[Optional[int], typer.Option(
        "--threads", min=1, help="CPU threads [default: PyTorch's]; 1 is faster on a busy machine.")] = None,
    summary: Annotated[bool, typer.Option("--summary", help="Only the summary table, not one table per point.")] = False,
    fmt: FormatOpt = Format.table,
    plot: Annotated[Optional[Path], typer.Option(
        "--plot", help="Write the activation-std-per-layer figure(s) (log scale, all pairs) into this folder.")] = None,
    set_: SetOpt = None,
) -> None:
    """Per-layer signal statistics at init beside the mean-field prediction, and a verdict — no training.

    Each point of CONFIG's grid (or the one point the flags define) is built with the
    weights its run would start from and probed on one fixed batch of real images.
    Verdicts: healthy, vanishing, exploding, dead, saturated (docs/diagnostics.md).
    """
    import torch

    from ..config import expand, load_yaml
    from ..data import resolve_source
    from ..overrides import apply_overrides, parse_overrides, validate_overridden
    from ..probe import fixed_batch, probe_spec
    from ..train import splits_for

    if threads is not None:
        torch.set_num_threads(threads)
    overrides = {k: v for k, v in {
        "init": _parse_choice(init), "activation": _parse_choice(activation), "depth": depth, "width": width,
        "arch": arch, "padding": padding.value if padding else None,
        "bias": _parse_choice(bias)}.items() if v is not None}
    settings = parse_overrides(set_ or ())
    if config is not None:
        raw, source_name, name = load_yaml(config), str(config), config.stem
    else:
        raw, source_name, name = {"name": "probe", "data": {"dataset": "mnist-sample"}}, "flags", "probe"
    # -S first, then the flags (--init, ...), which replace a setting and any axis over it
    raw = _with_overrides(apply_overrides(raw, settings), overrides, seed, batch_size)
    cfg = validate_overridden(raw, settings, source=source_name, default_name=name)
    # the probe never downloads: missing data falls back to the sample as the config allows
    data = SimpleNamespace(dataset=cfg.data.dataset, root=cfg.data.root, download=False, fallback=cfg.data.fallback)
    source = resolve_source(data)
    if source.fallback_reason:
        err_console.print(f"note: probing on {source.dataset} ({source.fallback_reason})", markup=False,
                          highlight=False)
    plan = expand(cfg, dataset=source.dataset)
    entries = []
    for spec in plan.runs:
        _, splits = splits_for(spec, torch.device("cpu"), source)
        x, y = fixed_batch(splits.train_x, splits.train_y, cfg.diagnostics.batch_size)
        result = probe_spec(spec, x, y)
        entries.append({
            "run_id": spec.run_id, "sweep": spec.sweep, "seed": spec.seed, "point": dict(spec.point),
            "settings": _settings(spec), "dataset": source.dataset, "batch_size": len(x),
            **{k: v for k, v in result.to_dict().items() if k != "layers"},
            "layers": [{"layer": i, **l} for i, l in enumerate(result.layers)],
        })
    if plot is not None:
        from ..report.plots_probe import save_probe_figures

        try:
            paths = save_probe_figures(entries, plot)
        except OSError as exc:
            raise InitsweepError(f"--plot {plot}: cannot write: {exc.strerror or exc}") from None
        err_console.print(f"plots: {', '.join(str(p) for p in paths)}", markup=False, highlight=False)
    if fmt is Format.json:
        print_json(entries)
        return
    _render(entries, summary)
