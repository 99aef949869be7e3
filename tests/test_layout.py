"""The package's shape: no import cycle among its modules, and run ids that never move.

Both guard refactors: a cycle makes import order matter (a module half-initialized when
the other asks for its names), and a changed run id orphans every stored run of a spec.
"""

from __future__ import annotations

import ast
import hashlib
import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

import initsweep
from initsweep.cli import app

PACKAGE = Path(initsweep.__file__).parent
ROOT = PACKAGE.parent


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """initsweep module -> the initsweep modules it imports, at any depth of its code
    (function-level and ``TYPE_CHECKING`` imports included: a cycle there is still a cycle
    of the design, only a deferred one)."""
    paths = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in paths.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                edges |= {a.name for a in node.names if a.name.split(".")[0] == "initsweep"}
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[:len(package.split(".")) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                if target.split(".")[0] != "initsweep":
                    continue
                # ``from . import train`` imports the module train, ``from . import __version__`` the package
                submodules = {f"{target}.{a.name}" for a in node.names} & paths.keys()
                edges |= submodules or {target}
        graph[name] = {e for e in edges if e in paths and e != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path ``[a, b, ..., a]``, or ``None`` (depth-first search)."""
    state: dict[str, str] = {}  # "open" while on the stack, "done" after
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_no_import_cycle():
    graph = import_graph()
    # the graph really is read: training imports the model builder, the probe too
    assert {"initsweep.build", "initsweep.probe"} <= graph["initsweep.train"]
    assert "initsweep.build" in graph["initsweep.probe"]
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_finder_finds_a_function_level_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


# Run ids are hashes of ``RunSpec.identity()``; stores made by earlier versions rely on them.
SMOKE_IDS = ["35e5d7166d42790a", "b872de619d7d46e7", "fc0ee068bdadd228", "1aabe4850e4b9a46",
             "319a6929311126a2", "dce15a48e00adc56", "8fb1df69345a96c6"]


@pytest.mark.parametrize("config, data, n_runs, first, digest", [
    ("smoke.yaml", {}, 7, SMOKE_IDS, "30db47721df282ea"),  # the shipped sample: nothing to download
    # with download off and no MNIST in INITSWEEP_DATA the grid falls back to mnist-sample,
    # which its ids name: the same ids on a machine with or without network
    ("grid.yaml", {"download": False}, 144, ["7169cd80169e41e8", "91de1d9ecfe09f5b", "a93bb6be45f3ee55"],
     "e3c6817f28c0e164"),
])
def test_run_ids_are_pinned(tmp_path, config, data, n_runs, first, digest):
    spec = yaml.safe_load((ROOT / "configs" / config).read_text())
    spec["data"].update(data)
    path = tmp_path / config
    path.write_text(yaml.safe_dump(spec, sort_keys=False))  # the axes in their order: the runs too
    result = CliRunner().invoke(app, ["plan", str(path), "-f", "json"], env={"INITSWEEP_DATA": str(tmp_path / "data")})
    assert result.exit_code == 0, result.output
    ids = [r["run_id"] for r in json.loads(result.stdout)["runs"]]
    assert len(ids) == n_runs and ids[:len(first)] == first
    assert hashlib.sha256(" ".join(ids).encode()).hexdigest()[:16] == digest


# The folders in the order they may import each other: each may import the core and the
# folders before it, never one after it (docs/architecture.md draws the same arrows).
LAYERS = ("core", "results", "sweep", "report", "cli")


def layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in LAYERS else "core"


def test_imports_point_down_the_layers():
    graph = import_graph()
    upward = sorted(f"{a} imports {b}" for a, edges in graph.items() for b in edges
                    if a not in ("initsweep", "initsweep.__main__")  # the package's lazy API and `python -m`
                    and LAYERS.index(layer(b)) > LAYERS.index(layer(a)))
    assert upward == []


def test_no_module_imports_another_modules_private_names():
    private = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("initsweep")):
                private += [f"{module_name(path)}: {a.name}" for a in node.names
                            if a.name.startswith("_") and not a.name.startswith("__")]
    assert private == []


def test_the_layer_check_sees_an_upward_import():
    """The checks above read real edges: the CLI imports the sweep, and layer() ranks them."""
    graph = import_graph()
    assert any(e.startswith("initsweep.sweep.") for e in graph["initsweep.cli.sweep"])
    assert LAYERS.index(layer("initsweep.cli.sweep")) > LAYERS.index(layer("initsweep.results.store"))
    assert layer("initsweep.train") == "core"


def test_only_the_ledger_writes_runs():
    """Executors train and never touch the store: claims, results and interruptions all go
    through ``sweep/ledger.py``, so every executor leaves the same rows behind."""
    graph = import_graph()
    executors = {m for m in graph if m.startswith("initsweep.sweep.executors")}
    assert {"initsweep.sweep.executors.local", "initsweep.sweep.executors.pool",
            "initsweep.sweep.executors.ray"} <= executors
    assert sorted(f"{m} imports {e}" for m in executors for e in graph[m] if e.startswith("initsweep.results")) == []
    writers = set()
    for path in (PACKAGE / "sweep").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                    and node.func.attr in ("claim", "finish", "mark_interrupted", "mark_own_interrupted", "reuse"):
                receiver = node.func.value  # store.finish(...) or self.store.finish(...)
                if getattr(receiver, "id", None) == "store" or getattr(receiver, "attr", None) == "store":
                    writers.add(module_name(path))
    assert writers == {"initsweep.sweep.ledger"}
