"""Settings given on the command line over a config's own (``initsweep run/plan/probe -S KEY=VALUE``).

An override is applied to the config's raw YAML data before validation, so it is checked
exactly like the file and changes run ids as the same line in the file would. KEY is a
dotted path into the config (``train.lr``, ``model.width``, ``name``); ``grid.AXIS`` names
one axis, the rest of the key with its dots (``grid.train.lr``), in every grid of a list of
grids. VALUE is YAML, read as the file is (safe, ``1e-3`` a number); an axis also takes
``a,b`` (split at the commas outside brackets and quotes), and ``null`` removes it.

A problem an override caused names it, so the user sees it came from the command line and
not from the file: ``set_='train.lrr=0.1': unknown key 'lrr' — did you mean 'lr'?`` from
Python, ``--set train.lrr=0.1: ...`` at the CLI; a problem of the two together says both
(``grid.yaml with --set model.width=4096: model: ...``). Pure functions over plain data.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import yaml

from .config import SweepConfig, load_config, load_yaml, parse_yaml, validate
from .errors import ConfigError, OptionError, flag
from .registry import did_you_mean

# The parameter overrides go by: set_=[...] from Python, --set (-S) at the CLI.
PARAM = "set_"


@dataclass(frozen=True)
class Override:
    """One ``KEY=VALUE`` as typed, its key path and its value (``None`` on an axis removes it)."""

    text: str
    key: str  # the dotted key as typed
    path: tuple[str, ...]  # ('train', 'lr'); a grid axis is ('grid', 'train.lr')
    value: Any


def parse_override(text: str) -> Override:
    """``"train.lr=1e-3"`` -> ``Override``; a malformed one is an ``OptionError`` naming it."""
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep:
        raise OptionError(PARAM, text, "expected KEY=VALUE, e.g. train.lr=0.01")
    if not key:
        raise OptionError(PARAM, text, "empty key: expected KEY=VALUE, e.g. train.lr=0.01")
    parts = key.split(".")
    if "" in parts:
        raise OptionError(PARAM, text, f"empty part in the key '{key}' (a dotted path such as train.lr)")
    is_axis = parts[0] == "grid" and len(parts) > 1
    try:
        parsed = _axis_values(value) if is_axis else parse_yaml(value)
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise OptionError(PARAM, text, f"the value is not valid YAML: {problem}") from None
    return Override(text, key, ("grid", ".".join(parts[1:])) if is_axis else tuple(parts), parsed)


def parse_overrides(texts: Sequence[str]) -> list[Override]:
    return [parse_override(text) for text in texts]


def _axis_values(text: str) -> list[Any] | None:
    """An axis's values: a YAML list (``[a, b]``), ``a,b``, or one value; ``None`` (``null``)
    removes the axis."""
    parts = _split_commas(text)
    if len(parts) > 1:
        return [parse_yaml(part) for part in parts]
    value = parse_yaml(text)
    return value if value is None or isinstance(value, list) else [value]


def _split_commas(text: str) -> list[str]:
    """``he,{name: elu, alpha: 0.5}`` -> its two values: commas inside brackets or quotes stay."""
    parts, depth, quote, start = [], 0, None, 0
    for i, ch in enumerate(text):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    return parts + [text[start:]]


def apply_overrides(raw: Any, overrides: Sequence[Override]) -> Any:
    """A config's YAML data with each override applied in order (``raw`` is left as it was).
    Data that is not a mapping comes back as it is, for validation to refuse."""
    if not overrides or not isinstance(raw, dict):
        return raw
    raw = copy.deepcopy(raw)
    for override in overrides:
        if override.path[0] == "grid" and len(override.path) == 2:
            _set_axis(raw, override)
        else:
            _set_key(raw, override)
    return raw


def _set_key(raw: dict, override: Override) -> None:
    node = raw
    for i, key in enumerate(override.path[:-1]):
        child = node.get(key)
        if child is None:
            child = node[key] = {}
        elif not isinstance(child, dict):
            where = ".".join(override.path[:i + 1])
            raise OptionError(PARAM, override.text, f"'{where}' is not a mapping in the config, so it has no "
                                                    f"'{override.path[i + 1]}' (set '{where}' itself)")
        node = child
    node[override.path[-1]] = override.value


def _set_axis(raw: dict, override: Override) -> None:
    """Set (or with ``null`` remove) an axis in the grid, or in every grid of a list."""
    axis = override.path[1]
    if raw.get("grid") is None:
        raw["grid"] = {}
    grids = raw["grid"] if isinstance(raw["grid"], list) else [raw["grid"]]
    mappings = [grid for grid in grids if isinstance(grid, dict)]
    if override.value is not None:
        for grid in mappings:
            grid[axis] = override.value
        return
    holding = [grid for grid in mappings if axis in grid]
    if not holding:
        axes = list(dict.fromkeys(key for grid in mappings for key in grid))
        hint = did_you_mean(axis, axes) or f" (axes: {', '.join(axes) or 'none'})"
        raise OptionError(PARAM, override.text, f"no grid axis '{axis}' to remove{hint}")
    for grid in holding:
        del grid[axis]


class OverrideError(ConfigError):
    """A config's problems, each said where it came from: the file, an override, or both."""

    def __init__(self, problems: list[tuple[str | None, bool, str]], source: str | None):
        # (override text or None, whether the problem lies inside what it set, the problem)
        self.attributed = problems
        super().__init__([_said(p, source, cli=False) for p in problems])
        self.source = source

    def cli_lines(self) -> list[str]:
        return [_said(p, self.source, cli=True) for p in self.attributed]


def _said(problem: tuple[str | None, bool, str], source: str | None, cli: bool) -> str:
    text, inside, line = problem
    file = f"{source}: " if source else ""
    if text is None:
        return file + line
    named = f"{flag(PARAM)} {text}" if cli else f"{PARAM}={text!r}"
    if inside:
        return f"{named}: {line}"
    return f"{source} with {named}: {line}" if source else f"with {named}: {line}"


def _attribute(problem: str, overrides: Sequence[Override]) -> tuple[str | None, bool, str]:
    """Which override a problem line (``key.path: message``) comes from: the last one whose
    key holds the path (``train.lr`` for ``train.lr``; ``grid.lr`` for ``grid[1].lr[0]``),
    else the last one inside the path's scope (``model.width`` for ``model: ...``) or that
    removed the axis an ``exclude`` rule names, else none."""
    path, sep, message = problem.partition(": ")
    where = re.sub(r"^grid\[\d+\]", "grid", path) if sep else ""
    for override in reversed(overrides):
        if where == override.key:
            return override.text, True, message
        if where.startswith((override.key + ".", override.key + "[")):
            return override.text, True, problem
    for override in reversed(overrides):
        if where and override.key.startswith((where + ".", where + "[")):
            return override.text, False, problem
    rule = re.fullmatch(r"exclude\[\d+\]\.(.+)", where)
    for override in reversed(overrides):  # an exclude rule over an axis the command line removed
        if rule and override.path == ("grid", rule[1]) and override.value is None:
            return override.text, False, problem
    return None, False, problem


def validate_overridden(raw: Any, overrides: Sequence[Override], source: str | None = None,
                        default_name: str | None = None) -> SweepConfig:
    """``config.validate`` of data the overrides were applied to; each problem an override
    caused names it (:class:`OverrideError`)."""
    try:
        return validate(raw, source, default_name)
    except ConfigError as exc:
        if not overrides:
            raise
        raise OverrideError([_attribute(p, overrides) for p in exc.problems], source) from None


def load_config_with(path: str | Path, set_: Sequence[str] = ()) -> SweepConfig:
    """``config.load_config`` with ``KEY=VALUE`` overrides applied before validation."""
    if not set_:
        return load_config(path)
    overrides = parse_overrides(set_)
    path = Path(path)
    return validate_overridden(apply_overrides(load_yaml(path), overrides), overrides, str(path), path.stem)
