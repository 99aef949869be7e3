"""Numbers the docs quote that the code can produce, recomputed, so a page cannot drift from them.

docs/tutorial-claims.md, docs/studies/glorot2010.md and docs/diagnostics.md quote where
sigmoid's gradient factor crosses 1; docs/studies/edge_of_chaos.md prints the theory's
table; the tutorial page says the Gaussian schemes leave the same ReLU units dead. The
list-* commands' texts are checked in tests/test_cli_core.py.
"""

from __future__ import annotations

import json
import math
import re
from itertools import takewhile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from initsweep import theory
from initsweep.cli import app

REPO = Path(__file__).resolve().parents[1]
runner = CliRunner()


def test_sigmoid_gradients_shrink_only_below_the_critical_sigma_w2():
    """``chi_1 <= sigma_w^2 / 16`` makes sigmoid's gradients shrink for ``sigma_w^2 < 16`` only;
    ``chi_1 = 1`` at ``sigma_w^2`` = 103 (sigma_b^2 = 0), so N(0, 1) (9 to 576) is chaotic."""
    crit = theory.critical_sigma_w2("sigmoid", 0.0)
    assert crit == pytest.approx(103.0, abs=0.5)  # the docs quote 103
    assert theory.chi1("sigmoid", {}, crit, 0.0) == pytest.approx(1.0, abs=1e-3)
    for s2 in (1 / 3, 1.0, 2.0, 4.0, 16.0):  # the tutorial's fan-in-scaled schemes, and the bound's edge
        assert theory.chi1("sigmoid", {}, s2, 0.0) <= s2 / 16
    assert theory.chi1("sigmoid", {}, 16.0, 0.0) == pytest.approx(0.40, abs=0.005)  # quoted: 0.40
    assert theory.chi1("sigmoid", {}, 288.0, 0.0) > 1  # N(0, 1) at the tutorial's second conv


def _numbers(cell: str) -> tuple[float, float]:
    """A printed number and one unit of its last digit: ``4,912`` -> (4912, 1); ``0.569`` -> (0.569, 0.001)."""
    text = cell.replace(",", "")
    decimals = len(text.split(".")[1]) if "." in text else 0
    return float(text), 10.0**-decimals


def test_edge_of_chaos_theory_tables_are_the_theorys(one_thread):
    """Every row up to sigma_w^2 = 2.0 of the study's two theory tables (sigma_b^2 = 0.05, then
    0.2; beyond, the chaotic rows' correlation fixed point costs seconds each), to one unit of
    its last printed digit; xi_c and 6 xi_c within 1% too (near the critical point they are
    steep in chi_c). Recomputed here from the theory's functions, not through the page's
    generator (docs/studies/build.py)."""
    header = "| sigma_w^2 | q* | chi_1 | c* | chi_c | xi_c | 6 xi_c |"
    text = (REPO / "docs/studies/edge_of_chaos.md").read_text(encoding="utf-8")
    blocks = text.split(header)[1:]
    assert len(blocks) == 2, "the theory tables of docs/studies/edge_of_chaos.md moved: update this test"
    for sigma_b2, block in zip((0.05, 0.2), blocks):
        below = block.splitlines()[2:]  # past the header's own line and the |---| rule
        rows = [[c.strip() for c in line.strip("|").split("|")] for line in takewhile(lambda s: s.startswith("|"), below)]
        checked = 0
        for s2_text, *cells in rows:
            s2 = float(s2_text)
            if s2 > 2.0:
                continue
            c_star, chi_c = theory.correlation_fixed_point("tanh", s2, sigma_b2)
            xi = -1.0 / math.log(chi_c)
            computed = [theory.fixed_point("tanh", {}, s2, sigma_b2), theory.chi1("tanh", {}, s2, sigma_b2), c_star,
                        chi_c, xi, 6 * xi]
            for column, (cell, value) in enumerate(zip(cells, computed)):
                printed, unit = _numbers(cell)
                tol = max(unit, 0.01 * abs(printed)) if column >= 4 else unit
                assert abs(value - printed) <= tol, (sigma_b2, s2, header.split("|")[column + 2], cell, value)
            checked += 1
        assert checked == 5, sigma_b2
    assert theory.critical_sigma_w2("tanh", 0.05) == pytest.approx(1.761, abs=5e-4)  # the page quotes both
    assert theory.critical_sigma_w2("tanh", 0.2) == pytest.approx(2.285, abs=5e-4)


def test_gaussian_schemes_leave_the_same_relu_units_dead(one_thread):
    """The tutorial says He init prevents dead ReLU units. With zero biases a ReLU net is
    positively homogeneous: the four Gaussian schemes, the same normal draws at different
    scales, leave exactly the same units dead, layer by layer and seed by seed (counts of
    units, not float results)."""
    result = runner.invoke(app, [
        "probe", str(REPO / "configs/tutorial.yaml"), "-S", "grid.activation=[relu]", "-S", "grid.zip=null",
        "-S", "grid.init=[std_normal, gaussian_inv_sqrt_n, he, he_as_written]",
        "--seed", "0", "--seeds", "2", "--batch-size", "64", "--format", "json"])
    assert result.exit_code == 0, result.output
    points = json.loads(result.stdout)
    assert [p["point"]["init"] for p in points] == ["std_normal", "gaussian_inv_sqrt_n", "he", "he_as_written"]
    dead = [[[layer["dead_frac"] for layer in seed["layers"]] for seed in p["per_seed"]] for p in points]
    assert all(d == dead[0] for d in dead), dead
    assert max(max(seed) for seed in dead[0]) > 0  # some unit is dead: the equality is not vacuous


def test_docs_name_no_temporary_folder_or_machine_path():
    """A page names commands and files of the project, not where someone ran them."""
    pattern = re.compile(r"(/tmp/|/home/|/work/|/Users/|\b[A-Z]:\\)")
    pages = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
    found = [f"{page.relative_to(REPO)}:{n}: {line.strip()}" for page in pages
             for n, line in enumerate(page.read_text(encoding="utf-8").splitlines(), 1) if pattern.search(line)]
    assert found == []
