"""YAML grid -> validated, frozen :class:`SweepConfig` -> expanded :class:`RunSpec` list.

The flow is parse (``yaml.safe_load`` semantics, duplicate keys refused) -> validate
(pydantic v2; every problem becomes one line naming the file and the key path, e.g.
``grid.init[2]: unknown initializer 'kaiming_nromal' — did you mean 'kaiming_normal'?``)
-> expand (product of the grid axes x seeds, minus ``exclude``). A ``zip`` in a grid is one
axis of partial points whose settings vary together; ``grid`` may be a list of grids, whose
union (merged by run id) is the sweep.

A ``RunSpec``'s ``run_id`` is a hash of every resolved setting that can change a result
(not the sweep's name, the data folder or the device), so the same point gets the same id
on every machine, and a changed setting gets a new one. See ``docs/config.md``.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Iterator, Literal

import yaml
from pydantic import (BaseModel, BeforeValidator, ConfigDict, Field, PrivateAttr, Strict, TypeAdapter,
                      ValidationError, field_validator, model_validator)
from pydantic_core import PydanticCustomError

from .activations import get_activation
from .columns import SETTING_COLUMNS
from .errors import ConfigError
from .inits import get_bias_init, get_init
from .models import get_arch, list_archs, measure_shape
from .registry import did_you_mean, unknown_name_error

# Bumped when the meaning of a setting changes, so old run ids stop matching.
SPEC_VERSION = 1
MAX_RUNS = 100_000
MAX_PARAMS = 200_000_000
MAX_SEEDS = 1_000

# YAML 1.2's float syntax without a dot (1e-3), which PyYAML (YAML 1.1) reads as a string.
_SCIENTIFIC = re.compile(r"^[-+]?(?:[0-9][0-9_]*)?(?:\.[0-9_]*)?[eE][-+]?[0-9]+$")


def _yaml11_float(value: Any) -> Any:
    """``'1e-3'`` -> 0.001: what ``yaml.safe_load`` makes of an unquoted ``1e-3``, so a dict
    loaded that way validates like one from :func:`load_yaml` (which reads it as a number)."""
    return float(value) if isinstance(value, str) and _SCIENTIFIC.match(value) else value


# Numbers and switches are strict: pydantic's lax mode reads YAML's `true` as 1 and "4" as
# 4, so a typo would silently become a different run. A strict float still takes an int
# (`lr: 1`), and 1e-3 in YAML 1.1's string form (above).
Int = Annotated[int, Strict()]
Float = Annotated[float, Strict(), BeforeValidator(_yaml11_float)]
Bool = Annotated[bool, Strict()]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Choice(_Section):
    """A registry entry with its parameters, all defaults filled in (``{name, params}``).

    Validation looks the name up once and keeps the entry (``entry``: an ``inits.Initializer``,
    ``inits.BiasInit`` or ``activations.Activation``), so whatever builds, predicts or prints
    the run uses it without looking the name up again. The entry is a private attribute:
    not dumped, so not part of a run's identity (its name already is).
    """

    name: str
    params: dict[str, Any] = Field(default_factory=dict)
    _entry: Any = PrivateAttr(default=None)

    @property
    def entry(self) -> Any:
        """The registry entry this choice was validated against."""
        if self._entry is None:
            raise ValueError(f"{self.name!r} was not resolved against a registry (validate it through ModelConfig)")
        return self._entry

    def __eq__(self, other: Any) -> bool:
        # the fields only: the entry follows from the name (pydantic would compare it too)
        return isinstance(other, Choice) and (self.name, self.params) == (other.name, other.params)

    def label(self, defaults: dict[str, Any] | None = None) -> str:
        """``leaky_relu(negative_slope=0.2)``: the name and the parameters not at their default
        (the entry's defaults unless ``defaults`` are given)."""
        if defaults is None and self._entry is not None:
            defaults = {p.name: p.default for p in self._entry.params}
        shown = {k: v for k, v in self.params.items() if defaults is None or defaults.get(k) != v}
        if not shown:
            return self.name
        return f"{self.name}(" + ", ".join(f"{k}={v}" for k, v in shown.items()) + ")"


def _choice(value: Any, lookup) -> Choice:
    """Accept ``name`` or ``{name: ..., <params>}``; validate against a registry (``lookup``:
    name -> entry, the one lookup of the name) and keep the entry on the choice."""
    if isinstance(value, Choice):
        return value
    if isinstance(value, str):
        name, params = value, {}
    elif isinstance(value, dict) and set(value) == {"name", "params"} and isinstance(value["params"], dict):
        name, params = value["name"], value["params"]  # the dumped form of a Choice
    elif isinstance(value, dict):
        if "name" not in value:
            raise ValueError("a mapping needs a 'name' key")
        params = {k: v for k, v in value.items() if k != "name"}
        name = value["name"]
        if not isinstance(name, str):
            raise ValueError(f"name must be a string, got {name!r}")
    else:
        raise ValueError(f"must be a name or a mapping with a 'name' key, got {value!r}")
    entry = lookup(name)
    choice = Choice(name=name, params=entry.resolve(params))
    choice._entry = entry
    return choice


class DataConfig(_Section):
    dataset: Literal["mnist", "fashion-mnist", "mnist-sample"] = "mnist"
    root: str | None = None  # None: $INITSWEEP_DATA, else ~/.cache/initsweep
    download: Bool = True
    # sample: the dataset's own shipped sample (mnist only); mnist-sample: MNIST digits for any dataset
    fallback: Literal["sample", "mnist-sample", "none"] = "sample"
    val_fraction: Float = Field(0.1, ge=0.0, le=0.9)
    split_seed: Int = Field(0, ge=0, le=2**31 - 1)
    train_limit: Int | None = Field(None, ge=1, le=10_000_000)
    test_limit: Int | None = Field(None, ge=1, le=10_000_000)


# train.precision's values; run_sweep(precision=...) and the CLI's --precision take the same
PRECISIONS = ("fp32", "bf16")

# log_to's values: where a sweep also logs each finished run (sweep/loggers.py writes them);
# run_sweep(log_to=...) and the CLI's --log-to take the same names
LOGGERS = ("tensorboard",)


def check_logger(name: Any) -> str:
    """A name of :data:`LOGGERS`, or the ``ValueError`` every registry raises (did you mean)."""
    if name not in LOGGERS:
        raise unknown_name_error("logger", name, LOGGERS)
    return name


class ModelConfig(_Section):
    arch: str = "plain"  # a name in models.py's arch registry (checked by _arch)
    depth: Int = Field(4, ge=1, le=1000)
    width: Int = Field(32, ge=1, le=4096)
    norm: Literal["none", "batch"] = "none"
    padding: Literal["zeros", "circular"] = "zeros"
    # gap cannot tell inits apart in a short study (models.py): studies set flatten; the
    # default stays gap because changing it would change stored run ids
    head: Literal["gap", "flatten"] = "gap"
    init: Choice = _choice("kaiming_normal", get_init)
    activation: Choice = _choice("relu", get_activation)
    bias: Choice = _choice("zeros", get_bias_init)

    @field_validator("arch", mode="before")
    @classmethod
    def _arch(cls, v: Any) -> str:
        """Checked against the registry when validated, not when the class was defined, so an
        arch registered later is taken. Refused as pydantic refuses a ``Literal``, so the line
        reads as it always has: ``model.arch: input should be 'plain', 'tutorial' or 'mlp'``."""
        names = [entry.name for entry in list_archs()]
        if not (isinstance(v, str) and v in names):
            quoted = [f"'{name}'" for name in names]
            expected = " or ".join(filter(None, [", ".join(quoted[:-1]), quoted[-1]]))
            raise PydanticCustomError("literal_error", "Input should be {expected}", {"expected": expected})
        return v

    @field_validator("init", mode="before")
    @classmethod
    def _init(cls, v: Any) -> Choice:
        return _choice(v, get_init)

    @field_validator("activation", mode="before")
    @classmethod
    def _activation(cls, v: Any) -> Choice:
        return _choice(v, get_activation)

    @field_validator("bias", mode="before")
    @classmethod
    def _bias(cls, v: Any) -> Choice:
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            v = {"name": "constant", "value": v}
        return _choice(v, get_bias_init)


class TrainConfig(_Section):
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    lr: Float = Field(1e-3, gt=0.0, le=100.0)
    momentum: Float = Field(0.0, ge=0.0, lt=1.0)
    nesterov: Bool = False
    weight_decay: Float = Field(0.0, ge=0.0, le=10.0)
    batch_size: Int = Field(128, ge=1, le=65536)
    epochs: Int = Field(1, ge=1, le=10_000)
    max_steps: Int | None = Field(None, ge=1, le=10**9)
    seeds: list[Int] = Field(default_factory=lambda: [0], min_length=1, max_length=MAX_SEEDS)
    # a training loss above diverge_factor x the first step's loss (or NaN/inf) stops the run as diverged
    diverge_factor: Float = Field(1e3, gt=1.0, le=1e30)
    # bf16 autocast (CUDA, or a CPU with AVX512-BF16 or AMX) changes the numbers, so it is a setting, hashed into the run id
    precision: Literal[PRECISIONS] = "fp32"
    # save the trained weights to <results>/checkpoints/<run_id>.pt: the last epoch's (final)
    # or the first epoch with the best validation accuracy (best). Saving does not change the
    # result, so it is no grid axis and stays out of the run id (see _NOT_AXES)
    save: Literal["none", "final", "best"] = "none"

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, v: list[int]) -> list[int]:
        for s in v:
            if not 0 <= s <= 2**31 - 1:
                raise ValueError(f"seeds must be in [0, 2^31-1], got {s}")
        if len(set(v)) != len(v):
            raise ValueError(f"seeds repeat: {v}")
        return v

    @model_validator(mode="after")
    def _optimizer_options(self) -> "TrainConfig":
        if self.optimizer != "sgd" and (self.momentum or self.nesterov):
            raise ValueError(f"momentum/nesterov are sgd options (optimizer is {self.optimizer})")
        if self.nesterov and self.momentum == 0:
            raise ValueError("nesterov needs momentum > 0")
        return self


class DiagnosticsConfig(_Section):
    """Per-layer diagnostics of every run (``probe.py``); they never change a result."""

    enabled: Bool = True
    batch_size: Int = Field(64, ge=1, le=4096)  # the first N training examples, probed at each phase
    phases: tuple[Literal["init", "final"], ...] = ("init", "final")


def display_value(field_name: str, value: Any) -> Any:
    """A setting as people read it: choices by name plus their non-default parameters."""
    if isinstance(value, Choice):
        return value.label()
    return value


SECTIONS: dict[str, type[_Section]] = {"data": DataConfig, "model": ModelConfig, "train": TrainConfig}
# Settings that never change a result: not grid axes, not part of a run's identity.
_NOT_AXES = {"data": {"root", "download", "fallback"}, "train": {"seeds", "save"}}


def _axis_targets() -> dict[str, tuple[str, str]]:
    """Axis name -> (section, field) for every setting that may be swept."""
    targets = {}
    for section, model in SECTIONS.items():
        for name in model.model_fields:
            if name not in _NOT_AXES.get(section, ()):
                targets[name] = (section, name)
                targets[f"{section}.{name}"] = (section, name)
    return targets


AXIS_TARGETS = _axis_targets()


_SWEEP_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")


class SweepConfig(_Section):
    name: str
    description: str = ""
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    # a mapping of axes (each a list of values; ``zip``: a list of partial points varying
    # together), or a list of such mappings whose union is the sweep; checked by _grid_problems
    grid: Any = Field(default_factory=dict)
    exclude: list[dict[str, Any]] = Field(default_factory=list)
    diagnostics: DiagnosticsConfig = DiagnosticsConfig()
    # where each finished run is also logged (LOGGERS); like diagnostics, never part of a run id
    log_to: list[Annotated[str, BeforeValidator(check_logger)]] = Field(default_factory=list)
    # the loggers also get the training loss of every N-th step (per epoch otherwise)
    log_every_steps: Int | None = Field(None, ge=1, le=10**9)
    # (the field values it was resolved from, grids, exclude rules): set by validate(), so
    # expand() builds runs from the values validated there instead of validating them again
    _resolved: tuple | None = PrivateAttr(default=None)

    def __eq__(self, other: Any) -> bool:
        # the settings only: the resolved grid is derived from them
        return isinstance(other, SweepConfig) and self.__dict__ == other.__dict__

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        # said in words: a raw regex in an error message helps nobody
        if not _SWEEP_NAME.fullmatch(v):
            raise ValueError(f"{v!r} is not a valid sweep name: use letters, digits, '-', '_' and '.', "
                             "starting with a letter or digit (at most 100 characters)")
        return v


@dataclass(frozen=True)
class RunSpec:
    """One fully resolved training run. ``run_id`` hashes everything that affects its result."""

    sweep: str
    data: DataConfig
    model: ModelConfig
    train: TrainConfig
    seed: int
    point: tuple[tuple[str, Any], ...] = ()  # the grid axes' values for this run (for display)
    # how the run is probed; not part of identity(): diagnostics never change a result
    diagnostics: DiagnosticsConfig = field(default_factory=DiagnosticsConfig, compare=False)
    # keep the training loss of every N-th step for the loggers (RunResult.step_losses); no
    # part of identity() either: recording a loss changes nothing
    log_every_steps: int | None = field(default=None, compare=False)
    run_id: str = field(init=False)

    def __post_init__(self) -> None:
        blob = json.dumps(self.identity(), sort_keys=True, separators=(",", ":"))
        object.__setattr__(self, "run_id", hashlib.sha256(blob.encode()).hexdigest()[:16])

    def identity(self) -> dict[str, Any]:
        """The settings that can change this run's result; what ``run_id`` hashes."""
        data = self.data.model_dump(mode="json", exclude=_NOT_AXES["data"])
        train = self.train.model_dump(mode="json", exclude=_NOT_AXES["train"])
        return {"v": SPEC_VERSION, "data": data, "model": self.model.model_dump(mode="json"),
                "train": train, "seed": self.seed}

    @cached_property
    def seedless_id(self) -> str:
        """A hash of ``identity()`` without the seed: the runs that differ only by their seed
        share it (the same data, model shapes and init law; what a per-process cache of the
        mean-field prediction, which never reads the weights, is keyed by). Kept once computed:
        the pool's dispatch reads it for several queued tasks each time it hands one out."""
        blob = json.dumps({**self.identity(), "seed": None}, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def settings(self) -> dict[str, Any]:
        """Flat ``column -> value`` view for tables and the results store.

        One value per ``columns.SETTING_COLUMNS``, found by the rule stated there (the
        config field of the column's name; a choice's name, ``_params`` and ``_label``), so
        a new setting is a config field and its column, and nothing here.
        """
        def field_value(name: str) -> Any:
            section, field_name = AXIS_TARGETS[name]
            return getattr(getattr(self, section), field_name)

        values: dict[str, Any] = {"run_id": self.run_id, "sweep": self.sweep}
        for column in SETTING_COLUMNS:
            choice, _, part = column.rpartition("_")
            if column == "seed":
                values[column] = self.seed
            elif column in AXIS_TARGETS:
                value = field_value(column)
                values[column] = value.name if isinstance(value, Choice) else value
            elif part == "params" and choice in AXIS_TARGETS:
                values[column] = field_value(choice).params
            elif part == "label" and choice in AXIS_TARGETS:
                values[column] = display_value(choice, field_value(choice))
            else:
                raise KeyError(f"settings(): no config field behind the column {column!r} (columns.SETTING_COLUMNS)")
        return values

    def to_json(self) -> str:
        return json.dumps({"sweep": self.sweep, **self.identity()}, sort_keys=True)


@dataclass(frozen=True)
class Plan:
    """The expansion of a config: its runs and what happened on the way."""

    config: SweepConfig
    runs: list[RunSpec]
    axes: dict[str, list[Any]]
    n_points: int  # product of the axes (before exclusions), times seeds
    n_excluded: int
    n_duplicates: int  # points that resolved to an already planned run (e.g. depth for arch tutorial, or an earlier grid's)
    notes: list[str]
    grids: list[dict[str, Any]] = field(default_factory=list)  # each grid's axes, zip entries and counts (plan)


# ---------------------------------------------------------------- YAML loading


class _Loader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses duplicate keys and reads ``1e-3`` as a float."""


def _mapping_no_duplicates(loader: _Loader, node: yaml.MappingNode) -> dict:
    seen = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r} (first at line {seen[key] + 1})", key_node.start_mark)
        seen[key] = key_node.start_mark.line
    return loader.construct_mapping(node, deep=True)


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping_no_duplicates)
# YAML 1.1 (PyYAML) reads 1e-3 as a string; YAML 1.2 and every user reads it as a number.
_Loader.add_implicit_resolver("tag:yaml.org,2002:float", _SCIENTIFIC, list("-+0123456789."))


def parse_yaml(text: str) -> Any:
    """YAML text read as a config file is (safe, no duplicate keys, ``1e-3`` a float), so a
    value given on the command line means what it would mean in the file. Raises
    ``yaml.YAMLError``; :func:`load_yaml` turns that into a ``ConfigError`` naming the file."""
    return yaml.load(text, Loader=_Loader)  # noqa: S506 — _Loader is a SafeLoader


def _yaml_error_line(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    if "could not determine a constructor for the tag" in str(exc):
        tag = str(exc).split("tag", 1)[1].split("\n")[0].strip().replace("tag:yaml.org,2002:", "!!")
        problem = f"YAML tag {tag} is not allowed (safe YAML only: no tags that construct objects)"
    return f"{where}not valid YAML: {problem}"


def load_yaml(path: str | Path) -> Any:
    """Read a YAML file safely; every failure is a one-line ``ConfigError`` naming the file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(["file not found"], source=str(path)) from None
    except IsADirectoryError:
        raise ConfigError(["is a directory, expected a YAML file"], source=str(path)) from None
    except UnicodeDecodeError:
        raise ConfigError(["cannot read: not UTF-8 text"], source=str(path)) from None
    except OSError as exc:
        raise ConfigError([f"cannot read: {exc.strerror or exc}"], source=str(path)) from None
    try:
        return parse_yaml(text)
    except yaml.YAMLError as exc:
        raise ConfigError([_yaml_error_line(exc)], source=str(path)) from None


# ---------------------------------------------------------------- validation


def _path(loc: tuple) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _split_param(message: str, given: Any) -> tuple[str, str]:
    """Registry errors read ``param: problem``; move ``param`` into the key path."""
    head, sep, rest = message.partition(": ")
    if sep and isinstance(given, dict) and head in given and head != "name":
        return f".{head}", rest
    if sep and isinstance(given, dict) and re.fullmatch(r"[a-z_]+", head) and "unknown parameter" in rest:
        return f".{head}", rest
    return "", message


# pydantic's strict type errors, said as what the key takes
_EXPECTED = {"int_type": "an integer", "float_type": "a number", "bool_type": "true or false"}


def _yaml_value(value: Any) -> str:
    """A value as it was written in YAML, and its type when that is the surprise:
    ``true (a boolean)``, ``'4' (a string: write it without quotes)``, ``2.5 (a float)``."""
    if isinstance(value, bool):
        return f"{str(value).lower()} (a boolean)"
    if isinstance(value, str):
        try:
            float(value)
        except ValueError:
            return f"{value!r} (a string)"
        return f"{value!r} (a string: write it without quotes)"
    if isinstance(value, float):
        return f"{value!r} (a float)"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return "null" if value is None else repr(value)


def _pydantic_problems(exc: ValidationError, prefix: tuple = (), model: type[BaseModel] | None = None) -> list[str]:
    problems = []
    for err in exc.errors(include_url=False):
        loc = prefix + tuple(err["loc"])
        kind, given = err["type"], err.get("input")
        if kind == "extra_forbidden":
            owner = _owner_fields(model, err["loc"][:-1]) if model else []
            key = str(err["loc"][-1])
            hint = did_you_mean(key, owner) or (f" (valid: {', '.join(owner)})" if owner else "")
            problems.append(f"{_path(loc)}: unknown key '{key}'{hint}")
            continue
        if kind == "missing":
            problems.append(f"{_path(loc)}: required key is missing")
            continue
        if kind in _EXPECTED:
            problems.append(f"{_path(loc)}: expected {_EXPECTED[kind]}, got {_yaml_value(given)}")
            continue
        message = err["msg"].removeprefix("Value error, ").removeprefix("Assertion failed, ")
        extra_path = ""
        if kind == "value_error":
            extra_path, message = _split_param(message, given)
        elif given is not None and not isinstance(given, (dict, list)):
            message = f"{message[0].lower()}{message[1:]} (got {given!r})"
        problems.append(f"{_path(loc)}{extra_path}: {message}")
    return problems


def _owner_fields(model: type[BaseModel], loc: tuple) -> list[str]:
    """The valid keys at ``loc`` inside ``model`` (for "did you mean" on unknown keys)."""
    for part in loc:
        sub = model.model_fields.get(part) if isinstance(part, str) else None
        ann = getattr(sub, "annotation", None)
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return []
        model = ann
    return list(model.model_fields)


def _validate_setting(section: str, base: _Section, name: str, value: Any, where: str) -> tuple[Any, list[str]]:
    """Validate one swept value in its section; ``(None, problems)`` when it is refused."""
    validated, problems = _validate_settings(section, base, {name: (value, where)}, where)
    return validated.get(name), problems


def _validate_settings(section: str, base: _Section, values: dict[str, tuple[Any, str]],
                       where: str) -> tuple[dict[str, Any], list[str]]:
    """Validate swept values (``field -> (value, key path)``) of one section together in it:
    the section's own rules (e.g. momentum only with sgd) see the values in place, so a zip
    entry's ``{optimizer: sgd, momentum: 0.9}`` is checked as the pair it is. The other
    fields go in as the validated values they are, not dumped: pydantic passes them through,
    and a choice keeps its registry entry. A problem of one value is said at its key path,
    one of the values together at ``where``."""
    cls = SECTIONS[section]
    try:
        validated = cls.model_validate({**dict(base), **{name: v for name, (v, _) in values.items()}})
    except ValidationError as exc:
        problems = []
        for line in _pydantic_problems(exc, model=cls):
            path, _, msg = line.partition(": ")
            name = next((n for n in values if path == n or path.startswith((n + ".", n + "["))), None)
            problems.append(f"{values[name][1]}{path.removeprefix(name)}: {msg}" if name else f"{where}: {msg}")
        return {}, problems
    return {name: getattr(validated, name) for name in values}, []


def _matches(wanted: Any, actual: Any) -> bool:
    if isinstance(actual, Choice):
        if isinstance(wanted, Choice):
            return wanted.name == actual.name and all(actual.params.get(k) == v for k, v in wanted.params.items())
        return wanted == actual.name
    return wanted == actual


# A partial point: axis -> (validated value, as people read it)
_Point = dict[str, tuple[Any, Any]]


@dataclass(frozen=True)
class _Grid:
    """One grid, validated: its factors in the order written, each ``(key, partial points)``.
    A plain axis gives one partial point per value, ``zip`` one per entry (its settings vary
    together); the grid's points are the product of its factors."""

    where: str  # its key path: grid, or grid[1] in a list of grids
    factors: list[tuple[str, list[_Point]]]

    @property
    def n_points(self) -> int:
        return math.prod(len(points) for _, points in self.factors)

    def points(self) -> Iterator[_Point]:
        for combo in itertools.product(*(points for _, points in self.factors)):
            point: _Point = {}
            for part in combo:
                point.update(part)
            yield point

    def structure(self, n_seeds: int, n_runs: int) -> dict[str, Any]:
        """What ``plan`` shows of this grid: its axes, its zip entries, its points x seeds, and
        the runs it adds (not excluded, not planned by an earlier grid)."""
        out: dict[str, Any] = {"where": self.where, "axes": {}}
        for key, points in self.factors:
            shown = [{axis: label for axis, (_, label) in p.items()} for p in points]
            if key == "zip":
                out["zip"] = shown
            else:
                (axis,) = shown[0]
                out["axes"][axis] = [p[axis] for p in shown]
        return {**out, "n_points": self.n_points * n_seeds, "n_runs": n_runs}


@dataclass(frozen=True)
class _Grids:
    """A config's grid (or the list of grids whose union is the sweep), validated."""

    grids: list[_Grid]
    axes: dict[str, tuple[str, str, list[Any]]]  # every swept axis, as first written -> section, field, values
    base: _Point  # axis -> the config's own setting, for a grid that does not sweep that axis

    @property
    def n_points(self) -> int:
        return sum(grid.n_points for grid in self.grids)

    def full(self, point: _Point) -> _Point:
        """A grid's point over every axis of the sweep: the same keys for every run of a union."""
        return {a: point[a] if a in point else self.base[a] for a in self.axes}


_ONE_GRID = TypeAdapter(dict[str, list[Any]])
_ZIP = TypeAdapter(list[dict[str, Any]])


def _grid_shapes(grid: Any) -> tuple[list[tuple[tuple, dict[str, list[Any]]]], list[str]]:
    """``grid`` is a mapping of axes, or a list of them whose union is the sweep: each mapping
    with its location (``grid``, ``grid[1]``), and the problems of shape."""
    listed = isinstance(grid, list)
    if listed and not grid:
        return [], ["grid: empty list (give at least one grid, or leave grid out)"]
    shapes, problems = [], []
    for i, mapping in enumerate(grid if listed else [grid]):
        loc = ("grid", i) if listed else ("grid",)
        try:
            shapes.append((loc, _ONE_GRID.validate_python(mapping)))
        except ValidationError as exc:
            problems += _pydantic_problems(exc, prefix=loc)
    return shapes, problems


def _axis_target(axis: str, where: str) -> tuple[tuple[str, str] | None, list[str]]:
    """The ``(section, field)`` an axis name sweeps, or the problem with the name."""
    target = AXIS_TARGETS.get(axis)
    if target is not None:
        return target, []
    if axis in ("seed", "seeds", "train.seeds"):
        return None, [f"{where}: seeds are not a grid axis; set train.seeds: [0, 1, 2]"]
    hint = did_you_mean(axis, [k for k in AXIS_TARGETS if "." not in k])
    return None, [f"{where}: unknown axis '{axis}'{hint or ' (an axis is a setting of data, model or train, e.g. init, activation, depth, lr)'}"]


def _add_values(axes: dict, axis: str, target: tuple[str, str], values: list[Any]) -> None:
    """Record an axis's values for display and ``exclude``: as written the first time, then
    only the values not seen yet (a zip entry, another grid of a union)."""
    if axis not in axes:
        axes[axis] = (*target, list(values))
    else:
        known = axes[axis][2]
        known += [v for v in values if v not in known]


def _grid_problems(cfg: SweepConfig) -> tuple[_Grids, list[str]]:
    """Validate each grid's axes and zip entries; return the grids resolved and the problems."""
    shapes, problems = _grid_shapes(cfg.grid)
    grids, axes, names = [], {}, {}  # names: (section, field) -> the axis name first written for it
    for loc, mapping in shapes:
        where, factors, taken = _path(loc), [], set()
        for key, values in mapping.items():
            if key == "zip":
                points, used, errs = _zip_points(cfg, values, loc + ("zip",), taken, names, axes)
                problems += errs
                taken |= used
                factors.append((key, points))
                continue
            target, errs = _axis_target(key, f"{where}.{key}")
            if target is None:
                problems += errs
                continue
            section, name = target
            if not values:
                problems.append(f"{where}.{key}: empty axis (give at least one value)")
                continue
            if target in taken:
                problems.append(f"{where}.{key}: '{name}' is already an axis")
                continue
            taken.add(target)
            axis = names.setdefault(target, key)
            resolved = []
            for i, value in enumerate(values):
                v, errs = _validate_setting(section, getattr(cfg, section), name, value, f"{where}.{key}[{i}]")
                problems += errs
                resolved.append(v)
            _add_values(axes, axis, target, resolved)
            factors.append((key, [{axis: (v, display_value(name, v))} for v in resolved]))
        grids.append(_Grid(where, factors))
    base = {}
    for axis, (section, name, _) in axes.items():
        value = getattr(getattr(cfg, section), name)
        base[axis] = (value, display_value(name, value))
    return _Grids(grids, axes, base), problems


def _zip_points(cfg: SweepConfig, entries: Any, loc: tuple, taken: set, names: dict,
                axes: dict) -> tuple[list[_Point], set, list[str]]:
    """A ``zip``'s entries as partial points (settings that vary together), the settings
    they sweep and the problems; an entry's settings of one section are validated together."""
    where = _path(loc)
    try:
        entries = _ZIP.validate_python(entries)
    except ValidationError as exc:
        return [], set(), _pydantic_problems(exc, prefix=loc)
    if not entries:
        return [], set(), [f"{where}: empty zip (give at least one entry)"]
    points, used, problems = [], set(), []
    for i, entry in enumerate(entries):
        at = f"{where}[{i}]"
        if not entry:
            problems.append(f"{at}: empty entry (name the settings that vary together)")
            continue
        sections: dict[str, dict[str, tuple[Any, str]]] = {}
        for key, value in entry.items():
            target, errs = _axis_target(key, f"{at}.{key}")
            if target is None:
                problems += errs
                continue
            section, name = target
            if target in taken or name in sections.get(section, {}):
                problems.append(f"{at}.{key}: '{name}' is already an axis")
                continue
            sections.setdefault(section, {})[name] = (value, f"{at}.{key}")
            names.setdefault(target, key)
        point: _Point = {}
        for section, values in sections.items():
            validated, errs = _validate_settings(section, getattr(cfg, section), values, at)
            problems += errs
            for name, v in validated.items():
                axis = names[(section, name)]
                _add_values(axes, axis, (section, name), [v])
                point[axis] = (v, display_value(name, v))
                used.add((section, name))
        points.append(point)
    return points, used, problems


def _exclude_problems(cfg: SweepConfig, axes: dict) -> tuple[list[dict[str, list[Any]]], list[str]]:
    rules, problems = [], []
    by_field = {name: (axis, section) for axis, (section, name, _) in axes.items()}
    for i, entry in enumerate(cfg.exclude):
        rule = {}
        if not entry:
            problems.append(f"exclude[{i}]: empty rule (it would exclude every run)")
        for key, wanted in entry.items():
            where = f"exclude[{i}].{key}"
            target = AXIS_TARGETS.get(key)
            if target is None or target[1] not in by_field:
                hint = did_you_mean(str(key), list(axes))
                problems.append(f"{where}: unknown axis '{key}'{hint or ' (grid axes: ' + (', '.join(axes) or 'none') + ')'}")
                continue
            axis, section = by_field[target[1]]
            options = wanted if isinstance(wanted, list) else [wanted]
            values = []
            for j, option in enumerate(options):
                sub = f"{where}[{j}]" if isinstance(wanted, list) else where
                v, errs = _validate_setting(section, getattr(cfg, section), target[1], option, sub)
                if isinstance(v, Choice) and isinstance(option, str):
                    v = option  # a bare name excludes every parameterization of it
                elif isinstance(v, Choice):
                    v = Choice(name=v.name, params={k: v.params[k] for k in option if k != "name"})
                values.append(v)
                problems += errs
            rule[axis] = values
        rules.append(rule)
    return rules, problems


def validate(raw: Any, source: str | None = None, default_name: str | None = None) -> SweepConfig:
    """Raw YAML data -> ``SweepConfig``, or a ``ConfigError`` listing every problem found."""
    if raw is None:
        raise ConfigError(["empty file: expected a mapping with name, data, model, train, grid"], source)
    if not isinstance(raw, dict):
        raise ConfigError([f"top level must be a mapping (name, data, model, train, grid), got {type(raw).__name__}"], source)
    if "name" not in raw and default_name:
        raw = {"name": re.sub(r"[^A-Za-z0-9_.-]", "-", default_name)[:100], **raw}
    try:
        cfg = SweepConfig.model_validate(raw)
    except ValidationError as exc:
        problems = _pydantic_problems(exc, model=SweepConfig)
        if "grid" in raw:  # the grid's shape is checked outside pydantic: said in its place among the rest
            after = [i for i, p in enumerate(problems) if _after_grid(re.split(r"[.\[:]", p, maxsplit=1)[0])]
            at = after[0] if after else len(problems)
            problems[at:at] = _grid_shapes(raw["grid"])[1]
        raise ConfigError(problems, source) from None
    problems = []
    grids, grid_errs = _grid_problems(cfg)
    problems += grid_errs
    rules, exclude_errs = _exclude_problems(cfg, grids.axes)
    problems += exclude_errs
    if not problems and rules:
        problems += _all_excluded_problem(grids, rules)
    if not problems:
        n = grids.n_points * len(cfg.train.seeds)
        if n > MAX_RUNS:
            problems.append(f"grid: {n:,} runs (axes x seeds) is more than the limit of {MAX_RUNS:,}")
        else:
            problems += _size_problems(cfg, grids)
    if problems:
        raise ConfigError(problems, source)
    cfg._resolved = (cfg.__dict__, grids, rules)
    return cfg


def _after_grid(key: str) -> bool:
    """Does pydantic report a problem of this top-level key after grid's? The fields after
    it, and unknown keys (reported last)."""
    fields = list(SweepConfig.model_fields)
    return key not in fields or fields.index(key) > fields.index("grid")


def _matching_rules(point: dict[str, Any], rules: list[dict[str, list[Any]]]) -> list[int]:
    """The indices of the ``exclude`` rules that match a grid point."""
    return [k for k, rule in enumerate(rules)
            if all(any(_matches(w, point[a]) for w in ws) for a, ws in rule.items())]


def _all_excluded_problem(grids: _Grids, rules: list[dict[str, list[Any]]]) -> list[str]:
    """A config whose exclusions remove every point can never run anything: say so, and by
    which rules. Stops at the first point that survives (the usual case: the first one)."""
    used = set()
    for grid in grids.grids:
        for point in grid.points():
            matched = _matching_rules({a: v for a, (v, _) in grids.full(point).items()}, rules)
            if not matched:
                return []
            used.update(matched)
    which = ", ".join(f"exclude[{k}]" for k in sorted(used))
    return [f"exclude: the grid expands to 0 runs: every point is excluded by {which}"]


_SHAPE_FIELDS = ("arch", "depth", "width")
_SHAPE_TARGETS = {("model", name) for name in _SHAPE_FIELDS}


def _size_problems(cfg: SweepConfig, grids: _Grids) -> list[str]:
    """Refuse models too large to be a sensible sweep point, before any allocation. Each
    grid's factors are projected on the shape settings, so a large grid costs little."""
    m = cfg.model
    shapes = set()
    for grid in grids.grids:
        projections = [{tuple((grids.axes[a][1], v) for a, (v, _) in p.items() if grids.axes[a][:2] in _SHAPE_TARGETS)
                        for p in points} for _, points in grid.factors]
        for combo in itertools.product(*projections):
            shape = {"arch": m.arch, "depth": m.depth, "width": m.width}
            for part in combo:
                shape.update(part)
            shapes.add(tuple(shape[f] for f in _SHAPE_FIELDS))
    # in the order of the values as written (arch, then depth, then width)
    order = [[v for axis in grids.axes.values() if axis[:2] == ("model", f) for v in axis[2]] for f in _SHAPE_FIELDS]
    problems = []
    for arch, depth, width in sorted(shapes, key=lambda s: tuple(o.index(v) if v in o else -1 for o, v in zip(order, s))):
        if get_arch(arch).fixed_shape:
            continue
        n_params = measure_shape(arch, depth=depth, width=width).n_params
        if n_params > MAX_PARAMS:
            problems.append(f"model: arch {arch} at depth {depth}, width {width} has {n_params:,} parameters, "
                            f"over the limit of {MAX_PARAMS:,}")
    return problems


def load_config(path: str | Path) -> SweepConfig:
    """Read and validate a sweep config file (``name`` defaults to the file's stem)."""
    path = Path(path)
    return validate(load_yaml(path), source=str(path), default_name=path.stem)


# ---------------------------------------------------------------- expansion


def _without_unused(model: ModelConfig) -> ModelConfig:
    """Settings the arch does not use pinned to their defaults, so runs that differ only
    there hash equal."""
    unused = get_arch(model.arch).unused
    return model.model_copy(update={name: ModelConfig.model_fields[name].default for name in unused})


def _resolved_grid(cfg: SweepConfig) -> tuple[_Grids, list]:
    """The grids and exclude rules :func:`validate` resolved for ``cfg``; resolved here only
    for a config that did not come from it (built directly, or a ``model_copy`` of one)."""
    if cfg._resolved is not None and cfg._resolved[0] is cfg.__dict__:
        return cfg._resolved[1], cfg._resolved[2]
    grids, problems = _grid_problems(cfg)
    rules, more = _exclude_problems(cfg, grids.axes)
    if problems or more:
        raise ConfigError(problems + more)
    return grids, rules


def _critical_gain_problem(model: ModelConfig) -> str | None:
    """Why ``gain: critical`` has no value for this point's activation and bias, or None.

    Checked per point, after the grid's axes are combined: whether a critical ``sigma_w^2``
    exists depends on the activation and the bias together (GELU has none at ``sigma_b^2 = 0``).
    The bias variance is taken at ``fan_in = width``; it depends on the fan-in only for
    ``pytorch_default``, whose variance is tiny either way.
    """
    if model.init.params.get("gain") != "critical":
        return None
    from .theory import critical_sigma_w2  # noqa: PLC0415 — only configs that ask for it pay for the theory

    sigma_b2 = model.bias.entry.moments(model.bias.params, model.width)[1]
    try:
        critical_sigma_w2(model.activation.name, sigma_b2, model.activation.params)
    except ValueError as exc:
        return f"model.init.gain: 'critical' has no value for activation {model.activation.label()}: {exc}"
    return None


def expand(cfg: SweepConfig, dataset: str | None = None) -> Plan:
    """The runs of a config: each grid's points (the product of its axes and zips) x seeds,
    minus ``exclude``, deduplicated by run id (a list of grids is their union).

    ``dataset`` replaces ``data.dataset`` when the data actually found differs from the one
    asked for (the offline fallback), so run ids say what was really trained on.
    """
    grids, rules = _resolved_grid(cfg)
    notes = []
    base_data = cfg.data if dataset is None else cfg.data.model_copy(update={"dataset": dataset})
    runs, first_grid, n_excluded, n_same, hits = [], {}, 0, 0, [0] * len(rules)
    critical_problems: list[str] = []
    planned, merged = [0] * len(grids.grids), [0] * len(grids.grids)  # per grid: new runs, runs of earlier grids
    for k, grid in enumerate(grids.grids):
        for own in grid.points():
            full = grids.full(own)
            matched = _matching_rules({a: v for a, (v, _) in full.items()}, rules)
            for i in matched:
                hits[i] += 1
            if matched:
                n_excluded += len(cfg.train.seeds)
                continue
            # only the grid's own axes update the config: the others keep its settings (and
            # data.dataset the one actually found)
            updates: dict[str, dict[str, Any]] = {"data": {}, "model": {}, "train": {}}
            for axis, (value, _) in own.items():
                section, name, _ = grids.axes[axis]
                updates[section][name] = value
            model = _without_unused(cfg.model.model_copy(update=updates["model"]))
            problem = _critical_gain_problem(model)
            if problem:
                critical_problems.append(problem)
                continue
            data = base_data.model_copy(update=updates["data"])
            train = cfg.train.model_copy(update=updates["train"])
            display = tuple((a, shown) for a, (_, shown) in full.items())
            for seed in cfg.train.seeds:
                spec = RunSpec(cfg.name, data, model, train, seed, display, cfg.diagnostics, cfg.log_every_steps)
                if spec.run_id in first_grid:
                    if first_grid[spec.run_id] == k:
                        n_same += 1
                    else:
                        merged[k] += 1
                    continue
                first_grid[spec.run_id] = k
                planned[k] += 1
                runs.append(spec)
    if critical_problems:
        raise ConfigError(list(dict.fromkeys(critical_problems)))
    for i, count in enumerate(hits):
        if count == 0:
            notes.append(f"exclude[{i}] matches no point of the grid")
    if n_same:
        notes.append(f"{n_same} point(s) resolved to an already planned run "
                     "(e.g. depth/width with arch: tutorial, which has a fixed shape) and were merged")
    for grid, count in zip(grids.grids, merged):
        if count:
            notes.append(f"{count} run(s) of {grid.where} were already planned by an earlier grid and were merged")
    swept = {name for _, name, _ in grids.axes.values()}
    for arch in list_archs():
        if any(r.model.arch == arch.name for r in runs) and set(arch.unused) & swept:
            notes.append(f"arch {arch.name} does not use {', '.join(sorted(set(arch.unused) & swept))}")
    display_axes = {a: [display_value(name, v) for v in values] for a, (_, name, values) in grids.axes.items()}
    structure = [grid.structure(len(cfg.train.seeds), n) for grid, n in zip(grids.grids, planned)]
    return Plan(cfg, runs, display_axes, grids.n_points * len(cfg.train.seeds), n_excluded,
                n_same + sum(merged), notes, structure)
