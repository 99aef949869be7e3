"""Shared machinery of the name -> entry registries (initializers, activations).

A registry entry declares its parameters (type, default, allowed values or range) so that
a config is validated *before* anything is built, and so that ``list-inits`` /
``list-activations`` can print what each one accepts. Unknown names raise a
``ValueError`` listing the valid names and suggesting the nearest one.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass
from typing import Any, Iterable, Mapping


@dataclass(frozen=True)
class Param:
    """One parameter of a registry entry.

    ``kind`` is ``float``, ``int``, ``bool`` or ``str``. ``allow_auto`` lets the value be the
    string ``"auto"``, resolved later from the run's activation (e.g. a gain); ``words`` names
    further strings a number may be replaced by (a gain's ``"critical"``).
    """

    name: str
    kind: type
    default: Any
    help: str = ""
    choices: tuple[Any, ...] | None = None
    low: float | None = None
    high: float | None = None
    allow_auto: bool = False
    words: tuple[str, ...] = ()

    def check(self, value: Any) -> Any:
        """Return ``value`` coerced to this parameter's type, or raise ``ValueError``."""
        if self.allow_auto and value == "auto":
            return "auto"
        if value in self.words:
            return value
        if self.kind is bool:
            if not isinstance(value, bool):
                raise ValueError(f"must be true or false, got {value!r}")
            return value
        if self.kind in (int, float):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                words = ("auto",) * self.allow_auto + self.words
                expected = "a number" + "".join(f" or '{w}'" for w in words)
                raise ValueError(f"must be {expected}, got {value!r}")
            if self.kind is int and not float(value).is_integer():
                raise ValueError(f"must be an integer, got {value!r}")
            value = self.kind(value)
            if not math.isfinite(value):
                raise ValueError(f"must be finite, got {value!r}")
            if self.low is not None and value < self.low:
                raise ValueError(f"must be >= {self.low}, got {value!r}")
            if self.high is not None and value > self.high:
                raise ValueError(f"must be <= {self.high}, got {value!r}")
        if self.kind is str and not isinstance(value, str):
            raise ValueError(f"must be a string, got {value!r}")
        if self.choices is not None and value not in self.choices:
            raise ValueError(
                f"must be one of {', '.join(map(str, self.choices))}, got {value!r}"
                + did_you_mean(str(value), [str(c) for c in self.choices])
            )
        return value

    def describe(self) -> str:
        """Short human description: ``mode=fan_in (fan_in|fan_out)``."""
        allowed = ""
        if self.choices:
            allowed = " (" + "|".join(map(str, self.choices)) + ")"
        elif self.allow_auto or self.words:
            allowed = " (" + "|".join(("number",) + ("auto",) * self.allow_auto + self.words) + ")"
        return f"{self.name}={self.default}{allowed}"


def did_you_mean(word: str, options: Iterable[str]) -> str:
    """`` — did you mean 'x'?`` for the closest option, or an empty string."""
    close = difflib.get_close_matches(word, list(options), n=1, cutoff=0.6)
    return f" — did you mean '{close[0]}'?" if close else ""


def unknown_name_error(kind: str, name: Any, valid: Iterable[str]) -> ValueError:
    """The ``ValueError`` every registry raises for an unknown name."""
    valid = sorted(valid)
    hint = did_you_mean(str(name), valid)
    if hint:
        return ValueError(f"unknown {kind} {name!r}{hint}")
    return ValueError(f"unknown {kind} {name!r} (valid: {', '.join(valid)})")


def check_params(
    kind: str, name: str, declared: tuple[Param, ...], given: Mapping[str, Any]
) -> dict[str, Any]:
    """Validate ``given`` against ``declared``; return every parameter, defaults filled in.

    Raises ``ValueError`` whose message starts with the offending parameter name, so the
    config layer can append it to the key path.
    """
    by_name = {p.name: p for p in declared}
    for key in given:
        if key not in by_name:
            if not by_name:
                raise ValueError(f"{key}: {kind} '{name}' takes no parameters")
            raise ValueError(
                f"{key}: unknown parameter of {kind} '{name}'"
                + (did_you_mean(key, by_name) or f" (valid: {', '.join(by_name)})")
            )
    resolved = {}
    for p in declared:
        value = given.get(p.name, p.default)
        try:
            resolved[p.name] = p.check(value)
        except ValueError as exc:
            raise ValueError(f"{p.name}: {exc}") from None
    return resolved
