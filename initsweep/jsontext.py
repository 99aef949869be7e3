"""Strict JSON text: the one encoder behind every JSON the tool writes.

Python's ``json`` writes NaN and infinities as the bare tokens ``NaN``/``Infinity``, which
are not JSON: ``jq``, JavaScript's ``JSON.parse`` and most other parsers reject the whole
document. Diagnostics produce such values as a matter of course (an N(0,1) net 100 layers
deep overflows float32), so every writer goes through :func:`json_text`: non-finite
numbers and missing values (``pd.NA``, ``NaT``) become ``null``, numpy/torch scalars and
arrays become Python numbers and lists, and the encoder runs with ``allow_nan=False`` so a
value this module missed raises instead of writing invalid JSON. Leaf module: no pandas
import (``initsweep plan`` and ``probe`` stay fast); pandas values are recognised only when
pandas is already loaded.
"""

from __future__ import annotations

import json
import math
import sys
from typing import Any


def json_value(value: Any) -> Any:
    """``value`` as plain JSON data: NaN/inf/NA/NaT as None, numpy/torch values as Python
    ones, mappings and sequences converted item by item."""
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, float):
        return float(value) if math.isfinite(value) else None  # float(): numpy's float64 too
    if isinstance(value, dict):
        return {_key(k): json_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_value(v) for v in value]
    pd = sys.modules.get("pandas")  # a pandas value can only exist once pandas is imported
    if pd is not None and (value is pd.NA or value is pd.NaT):
        return None
    if hasattr(value, "tolist"):  # numpy scalars and arrays, torch tensors
        return json_value(value.tolist())
    return value  # anything else is left to the encoder's default (str)


def _key(key: Any) -> Any:
    return key if isinstance(key, (str, int, bool)) or key is None else str(key)


def json_text(data: Any, indent: int | None = 2) -> str:
    """``data`` as strict JSON text (RFC 8259: no NaN/Infinity tokens), with a final newline.

    Floats keep Python's shortest round-trip repr, so a number read back is the number
    written. Unknown objects (paths, timestamps) are written as their ``str``.
    """
    return json.dumps(json_value(data), indent=indent, allow_nan=False, default=str) + "\n"
