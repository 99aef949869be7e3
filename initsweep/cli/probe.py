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


def _with_overrides(raw: Any, overrides: dict[str, Any], seeds: list[int] | None, batch_size: int | None) -> Any:
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
    if seeds is not None and isinstance(raw.get("train", {}), dict):
        raw["train"] = {**raw.get("train", {}), "seeds": seeds}
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


def probe_seeds(configured: list[int], n: int) -> list[int]:
    """The seeds each point is probed at: the config's (or ``--seed``), cut or topped up to
    ``n`` with the integers after the largest, so a config's own seeds come first."""
    seeds = list(configured[:n])
    while len(seeds) < n:
        seeds.append(max(seeds) + 1)
    return seeds


def _point_key(spec) -> str:
    """What a point's runs share: every setting but the seed (and so the run id)."""
    import json

    return json.dumps({k: v for k, v in spec.settings().items() if k not in ("seed", "run_id")},
                      sort_keys=True, default=str)


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
    seeds = entry["seeds"]
    shown = f"seed {seeds[0]}" if len(seeds) == 1 else f"seeds {', '.join(map(str, seeds))}"
    return f"{s['init_label']} + {s['activation_label']} · {shape}{bias} · {shown}"


def _fmt(value: Any, spec: str = ".3g") -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return format(value, spec)


def _spread(entry: dict[str, Any], key: str, spec: str = ".3f") -> str:
    """``1.432 [1.401–1.470]``: a number's median over the point's seeds and its range."""
    from ..verdicts import Spread

    low, high = entry[f"{key}_range"]
    return Spread(entry[key], low, high).text(spec)


def _render(entries: list[dict[str, Any]], summary_only: bool) -> None:
    from rich.table import Table

    colour = {"healthy": "green", "vanishing": "yellow", "exploding": "red", "dead": "red", "saturated": "yellow"}
    if not summary_only:
        for e in entries:
            several = len(e["seeds"]) > 1
            table = Table(title=_label(e), title_justify="left",
                          caption="each number: its median over the seeds" if several else None)
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
            console.print(f"verdict: [bold {c}]{e['verdict_label']}[/] — {e['reason']}", highlight=False)
            if several:
                console.print("per seed: " + " · ".join(f"{p['seed']} {p['verdict']}" for p in e["per_seed"]),
                              highlight=False, markup=False)
            console.print(f"end to end: activation std x{_spread(e, 'act_end_to_end', '.3g')} (last block / first), "
                          f"gradient norm x{_spread(e, 'grad_end_to_end', '.3g')} (first block / last)",
                          highlight=False, markup=False)
            console.print(f"per layer: activations' second moment x{_spread(e, 'forward_factor')} "
                          f"(predicted x{_fmt(e['predicted_forward_factor'], '.3f')} mean, "
                          f"x{_fmt(e['predicted_typical_forward_factor'], '.3f')} typical), gradient norm "
                          f"x{_spread(e, 'backward_factor')} (predicted x{_fmt(e['predicted_backward_factor'], '.3f')})",
                          highlight=False, markup=False)
            for note in e["notes"]:
                console.print(f"note: {note}", style="dim", highlight=False)
            console.print()
    if len(entries) > 1 or summary_only:
        several = any(len(e["seeds"]) > 1 for e in entries)
        table = Table(title="Probe summary (factors per layer; pred = mean-field prediction, the average over "
                            "weights; typical = its log-scale value at finite width, dense layers only"
                            + ("; median [range] over the seeds)" if several else ")"), title_justify="left")
        for col in ("point", "verdict", "act x/layer", "pred", "typical", "grad x/layer", "pred", "act last/first",
                    "grad first/last", "max dead", "mean sat"):
            table.add_column(col, justify="left" if col in ("point", "verdict") else "right")
        for e in entries:
            c = colour.get(e["verdict"], "white")
            table.add_row(_label(e), f"[{c}]{e['verdict_label']}[/]", _spread(e, "forward_factor"),
                          _fmt(e["predicted_forward_factor"], ".3f"),
                          _fmt(e["predicted_typical_forward_factor"], ".3f"), _spread(e, "backward_factor"),
                          _fmt(e["predicted_backward_factor"], ".3f"), _spread(e, "act_end_to_end", ".3g"),
                          _spread(e, "grad_end_to_end", ".3g"), _spread(e, "max_dead_frac", ".0%"),
                          _spread(e, "mean_saturated_frac", ".0%"))
        console.print(table)


def _entry(specs: list, results: list, dataset: str, batch_size: int) -> dict[str, Any]:
    """One point's JSON: its verdict over the seeds (``verdicts.over_seeds``), each number's
    median and range, the per-layer medians, and every seed's own probe under ``per_seed``."""
    import numpy as np

    from ..verdicts import end_to_end, over_seeds

    agg = over_seeds([{"layers": r.layers, "verdict": r.verdict, "loss": r.loss} for r in results])
    first = specs[0]
    per_seed = []
    for spec, result in zip(specs, results):
        act, grad = end_to_end(result.layers)
        per_seed.append({"run_id": spec.run_id, "seed": spec.seed,
                         **{k: v for k, v in result.to_dict().items() if k not in ("layers", "notes")},
                         "act_end_to_end": act, "grad_end_to_end": grad,
                         "layers": [{"layer": i, **l} for i, l in enumerate(result.layers)]})
    # an overflowed loss counts as the largest: the median is then inf (JSON null) when most seeds overflowed
    loss = float(np.median([r.loss if r.loss is not None and math.isfinite(r.loss) else math.inf for r in results]))
    spreads = {"forward_factor": agg.forward, "backward_factor": agg.backward,
               "act_end_to_end": agg.act_end_to_end, "grad_end_to_end": agg.grad_end_to_end,
               "max_dead_frac": agg.max_dead, "mean_saturated_frac": agg.mean_saturated}
    return {
        "run_id": first.run_id, "sweep": first.sweep, "seed": first.seed, "seeds": [s.seed for s in specs],
        "point": dict(first.point), "settings": _settings(first), "dataset": dataset, "batch_size": batch_size,
        "verdict": agg.verdict, "verdict_label": agg.label, "agreeing_seeds": agg.agreeing, "reason": agg.reason,
        "forward_factor": agg.forward.median, "backward_factor": agg.backward.median,
        "predicted_forward_factor": results[0].predicted_forward_factor,
        "predicted_backward_factor": results[0].predicted_backward_factor,
        "predicted_typical_forward_factor": results[0].predicted_typical_forward_factor,
        "loss": loss, "notes": results[0].notes,
        "seconds": sum(r.seconds for r in results),
        **{f"{k}_range": [v.low, v.high] for k, v in spreads.items()},
        "act_end_to_end": agg.act_end_to_end.median, "grad_end_to_end": agg.grad_end_to_end.median,
        "max_dead_frac": agg.max_dead.median, "mean_saturated_frac": agg.mean_saturated.median,
        "layers": [{"layer": i, **l} for i, l in enumerate(agg.layers)],
        "per_seed": per_seed,
    }


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
    seed: Annotated[Optional[int], typer.Option(
        "--seed", min=0, help="The first seed to probe, instead of the config's seeds.")] = None,
    seeds: Annotated[int, typer.Option(
        "--seeds", min=1, help="Seeds per point: the config's (or --seed), topped up with the next integers or "
                               "cut to N; the verdict is judged on the median over them.")] = 3,
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
    weights its run would start from, at each of --seeds seeds, and probed on one fixed
    batch of real images. Verdicts: healthy, vanishing, exploding, dead, saturated, judged
    on the median over the seeds (docs/diagnostics.md).
    """
    import torch

    from ..config import MAX_SEEDS, expand, load_yaml
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
    if seeds > MAX_SEEDS:
        raise InitsweepError(f"--seeds {seeds}: at most {MAX_SEEDS} seeds per point")
    # -S first, then the flags (--init, ...), which replace a setting and any axis over it
    raw = apply_overrides(raw, settings)
    cfg = validate_overridden(_with_overrides(raw, overrides, None if seed is None else [seed], batch_size),
                              settings, source=source_name, default_name=name)
    wanted = probe_seeds(list(cfg.train.seeds), seeds)
    if max(wanted) > 2**31 - 1:
        raise InitsweepError(f"--seeds {seeds}: topping up from seed {max(cfg.train.seeds)} passes the largest "
                             "seed, 2^31-1")
    if wanted != list(cfg.train.seeds):
        cfg = validate_overridden(_with_overrides(raw, overrides, wanted, batch_size), settings,
                                  source=source_name, default_name=name)
    # the probe never downloads: missing data falls back to the sample as the config allows
    data = SimpleNamespace(dataset=cfg.data.dataset, root=cfg.data.root, download=False, fallback=cfg.data.fallback)
    source = resolve_source(data)
    if source.fallback_reason:
        err_console.print(f"note: probing on {source.dataset} ({source.fallback_reason})", markup=False,
                          highlight=False)
    plan = expand(cfg, dataset=source.dataset)
    points: dict[str, list] = {}
    for spec in plan.runs:
        points.setdefault(_point_key(spec), []).append(spec)
    batches: dict[str, tuple] = {}  # the data settings are usually one for every run: load them once
    entries = []
    for specs in points.values():
        results = []
        for spec in specs:
            data_key = spec.data.model_dump_json()
            if data_key not in batches:
                _, splits = splits_for(spec, torch.device("cpu"), source)
                batches[data_key] = fixed_batch(splits.train_x, splits.train_y, cfg.diagnostics.batch_size)
            results.append(probe_spec(spec, *batches[data_key]))
        entries.append(_entry(specs, results, source.dataset, len(batches[data_key][0])))
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
