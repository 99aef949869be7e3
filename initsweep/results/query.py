"""The ``--where`` language: a safe boolean filter over run columns, parsed, never ``eval``ed.

``depth >= 8 and activation == "relu"``: comparisons, ``in``, ``and``/``or``/``not``; the
names are run columns or the friendly ``init``/``activation``/``bias`` (their labels).
``tags contains "baseline"``: a list column (comma-joined names) holds that name.
"""

from __future__ import annotations

import ast
import functools
import operator
import re
from typing import Any

import pandas as pd

from ..errors import OptionError
from ..registry import did_you_mean

# Columns whose text is a comma-joined list of names (the store's tags), for ``contains``.
LIST_COLUMNS = ("tags",)
# ``contains`` is not Python: it is read as ``@`` (a BinOp, which nothing else may use), so
# ``ast`` still parses the whole expression; quoted strings are kept as they are.
_CONTAINS = re.compile(r"""("(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')|\bcontains\b""")


def _shown(node: ast.AST) -> str:
    """An expression as the user wrote it (``contains``, not the ``@`` it is parsed as)."""
    return ast.unparse(node).replace(" @ ", " contains ")


class _Where:
    """Evaluates a validated ``--where`` expression over a frame, without ``eval``.

    Allowed: column names, numbers, strings, True/False/None, lists/tuples of those (after
    ``in``/``not in``), comparisons (chains too), ``and``/``or``/``not`` (and ``&``/``|``/``~``).
    Anything else (calls, attributes, arithmetic, subscripts) is refused, so an expression
    can read columns and nothing more.
    """

    _COMPARE = {ast.Eq: operator.eq, ast.NotEq: operator.ne, ast.Lt: operator.lt, ast.LtE: operator.le,
                ast.Gt: operator.gt, ast.GtE: operator.ge}

    def __init__(self, df: pd.DataFrame):
        self.df = df

    def fail(self, why: str) -> OptionError:
        return OptionError("where", None, why, repeat_value=False)

    def mask(self, node: ast.AST) -> pd.Series:
        if isinstance(node, ast.BoolOp):
            combine = operator.and_ if isinstance(node.op, ast.And) else operator.or_
            return functools.reduce(combine, (self.mask(v) for v in node.values))
        if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.BitAnd, ast.BitOr)):
            combine = operator.and_ if isinstance(node.op, ast.BitAnd) else operator.or_
            return combine(self.mask(node.left), self.mask(node.right))
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.Not, ast.Invert)):
            return ~self.mask(node.operand)
        if isinstance(node, ast.Compare):
            return self.compare(node)
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.MatMult):
            return self.contains(node.left, node.right)
        raise self.fail(f"expected a comparison such as depth >= 8, got {_shown(node)!r}")

    def contains(self, left: ast.AST, right: ast.AST) -> pd.Series:
        """``tags contains "x"``: the rows whose list holds the name ``x`` (a whole name, not a part)."""
        column = self.column(left)
        if left.id not in LIST_COLUMNS:
            raise self.fail(f"contains works on {', '.join(LIST_COLUMNS)}; {left.id!r} is a single value "
                            "(use == or in)")
        value = self.constant(right)
        if not isinstance(value, str):
            raise self.fail(f"{left.id!r} holds names; write contains with a quoted name, not {value!r}")
        return column.map(lambda text: isinstance(text, str) and value in text.split(",")).astype(bool)

    def compare(self, node: ast.Compare) -> pd.Series:
        out = pd.Series(True, index=self.df.index)
        left = node.left
        for op, right in zip(node.ops, node.comparators):
            out &= self.one(left, op, right)
            left = right
        return out

    def one(self, left: ast.AST, op: ast.cmpop, right: ast.AST) -> pd.Series:
        if isinstance(op, (ast.In, ast.NotIn)):
            column, values = self.column(left), self.values(right)
            hit = column.isin([v for v in values if v is not None])
            for value in values:
                self.check_type(left, column, value)
                if value is None:
                    hit |= column.isna()
            return ~hit if isinstance(op, ast.NotIn) else hit
        if type(op) not in self._COMPARE:
            raise self.fail(f"unsupported comparison {ast.unparse(op)!r} (use ==, !=, <, <=, >, >=, in, not in)")
        if not isinstance(left, ast.Name) and isinstance(right, ast.Name):
            flipped = {ast.Lt: ast.Gt, ast.Gt: ast.Lt, ast.LtE: ast.GtE, ast.GtE: ast.LtE}.get(type(op), type(op))
            return self.one(right, flipped(), left)
        column = self.column(left)
        if isinstance(right, ast.Name):
            return self._COMPARE[type(op)](column, self.column(right)).fillna(False).astype(bool)
        value = self.constant(right)
        if value is None and isinstance(op, (ast.Eq, ast.NotEq)):
            return column.isna() if isinstance(op, ast.Eq) else column.notna()
        self.check_type(left, column, value)
        try:
            result = self._COMPARE[type(op)](column, value)
        except TypeError:
            raise self.fail(f"cannot compare {left.id!r} with {value!r}") from None
        return result.fillna(False).astype(bool)

    def column(self, node: ast.AST) -> pd.Series:
        if not isinstance(node, ast.Name):
            raise self.fail(f"expected a column name, got {_shown(node)!r}")
        if node.id not in self.df:
            raise self.fail(f"unknown column {node.id!r}{did_you_mean(node.id, self.df.columns)}")
        return self.df[node.id]

    def constant(self, node: ast.AST) -> Any:
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            value = self.constant(node.operand)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return -value if isinstance(node.op, ast.USub) else value
        elif isinstance(node, ast.Constant) and isinstance(node.value, (str, int, float, bool, type(None))):
            return node.value
        raise self.fail(f"only column names, numbers, strings and lists of them are allowed, "
                        f"got {_shown(node)!r}")

    def values(self, node: ast.AST) -> list[Any]:
        if isinstance(node, (ast.List, ast.Tuple, ast.Set)):
            return [self.constant(e) for e in node.elts]
        return [self.constant(node)]

    def check_type(self, node: ast.Name, column: pd.Series, value: Any) -> None:
        """Refuse ``depth == "8"``: pandas would answer False for every row, silently."""
        if value is None or isinstance(value, bool):
            return
        numeric = pd.api.types.is_numeric_dtype(column) or column.isna().all()
        if numeric and isinstance(value, str):
            raise self.fail(f"{node.id!r} holds numbers; compare it with a number, not {value!r}")
        if not numeric and not isinstance(value, str):
            raise self.fail(f"{node.id!r} holds text; compare it with a quoted string, not {value!r}")


def where_mask(df: pd.DataFrame, expr: str) -> pd.Series:
    """The rows of ``df`` an expression such as ``depth >= 8 and activation == "relu"`` selects."""
    text = expr.strip()
    try:
        tree = ast.parse(_CONTAINS.sub(lambda m: m[1] or "@", text), mode="eval")
    except SyntaxError as exc:
        hint = "; use == to compare" if re.search(r"(?<![=!<>])=(?!=)", text) else ""
        raise OptionError("where", text, f"not a valid expression ({exc.msg}{hint}): {text}",
                          repeat_value=False) from None
    except (RecursionError, MemoryError):
        raise OptionError("where", None, "the expression is nested too deeply", repeat_value=False) from None
    try:
        return _Where(df).mask(tree.body)
    except RecursionError:
        raise OptionError("where", None, "the expression is nested too deeply", repeat_value=False) from None


def filter_runs(df: pd.DataFrame, expr: str | None) -> pd.DataFrame:
    """``df`` restricted to the rows ``expr`` selects (all rows when ``expr`` is empty)."""
    if not expr or not expr.strip():
        return df
    return df[where_mask(df, expr)]
