"""The studies' archived data and the tables their pages print, rebuilt from it.

    .venv/bin/python docs/studies/build.py --results results/studies   # archive, then rebuild the tables
    .venv/bin/python docs/studies/build.py                             # rebuild the tables from the archive
    .venv/bin/python docs/studies/build.py --check                     # exit 1 if a page's table is stale

``make studies`` trains every study (``initsweep run configs/<study>.yaml --results
results/studies/<study>``) and then runs the first form: each study's finished runs are
exported to ``docs/studies/data/<study>.csv`` (the columns the tables use, sorted by run id,
floats written exactly), and every table of the pages is rendered from those files alone,
between its markers::

    <!-- table: NAME -->
    ...
    <!-- end table -->

Nothing between the markers is written by hand: ``tests/test_studies.py`` rebuilds every table
from the archive and compares it with the page, and checks that each archive holds exactly the
runs its config plans. The prose around the tables quotes them; the statistics are the
tool's own (``initsweep.report.stats.summarize``: Student-t intervals over seeds, and
``initsweep.report.compare.compare_runs``: differences paired by seed, paired t-tests, Holm
over groups), so a page and ``initsweep report``/``compare`` on the same runs agree.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import subprocess
import sys
from functools import lru_cache
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
from scipy import stats

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # run as a script from a checkout: this checkout's initsweep

from initsweep import load_results, theory  # noqa: E402
from initsweep.errors import InitsweepError  # noqa: E402
from initsweep.results.read import read_layers  # noqa: E402
from initsweep.report.compare import compare_runs  # noqa: E402
from initsweep.report.formats import markdown_table  # noqa: E402
from initsweep.report.stats import FINISHED, summarize  # noqa: E402

DATA = ROOT / "docs" / "studies" / "data"
STUDIES = ("tutorial", "he2015", "glorot2010", "edge_of_chaos")
# Not archived: data_fallback (the reason, with this machine's cache paths: dataset_requested
# against dataset says the same), data_location, host, and the spec's JSON (the columns hold it).
ARCHIVE_COLUMNS = [
    "run_id", "row_id", "sweep", "status", "seed", "init", "init_params", "init_label", "activation",
    "activation_params", "activation_label", "bias", "bias_params", "bias_label", "arch", "depth", "width",
    "optimizer", "lr", "momentum", "batch_size", "epochs", "precision", "dataset", "dataset_requested", "n_train", "n_val", "n_test", "test_acc", "test_loss", "best_val_acc", "final_train_loss",
    "final_val_acc", "steps", "diverged_step", "verdict", "train_seconds", "wall_seconds", "cpu_model",
    "git_commit", "initsweep_version", "torch_version",
]
# Studies whose page also tables per-layer statistics: those columns of the ``layers`` table
# are archived too, as ``<study>_layers.csv`` (keyed by run id).
LAYER_COLUMNS = {"tutorial": ["run_id", "phase", "layer", "kind", "dead_frac", "saturated_frac"]}
# The probe at init each page tables (``initsweep probe CONFIG ARGS -f json``), archived as
# ``<study>_probe.json`` with the fields the tables use.
PROBES = {"tutorial": ["-S", "grid.zip=null", "--seed", "0", "--seeds", "1"],
          "he2015": ["-S", "grid.lr=null", "--seed", "0", "--seeds", "2"],
          "glorot2010": ["--seed", "0", "--seeds", "1"]}
PROBE_FIELDS = ["verdict", "forward_factor", "predicted_forward_factor", "backward_factor", "predicted_backward_factor"]
CHANCE = 0.1
TRAINED = 0.5  # a net "trains" when its mean test accuracy reaches this (chance 0.1, trained ~0.9)
MARKER = re.compile(r"(<!-- table: (?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- end table -->)", re.S)


# ----------------------------------------------------------------------------- the archive

def archive(results: Path, study: str) -> pd.DataFrame:
    """Write ``docs/studies/data/<study>.csv`` from a study's results folder: its sweep's
    finished runs (the latest attempt of each run id), the archive's columns, sorted."""
    runs = load_results(results / study, sweep=study)
    runs = runs[runs["status"].isin(FINISHED)].sort_values("row_id").drop_duplicates("run_id", keep="last")
    runs = runs[ARCHIVE_COLUMNS].sort_values("run_id").reset_index(drop=True)
    DATA.mkdir(parents=True, exist_ok=True)
    runs.to_csv(DATA / f"{study}.csv", index=False, float_format="%.17g")
    if study in LAYER_COLUMNS:
        layers = read_layers(results / study, [int(r) for r in runs["row_id"]])
        layers = layers[LAYER_COLUMNS[study]]
        layers.sort_values(["run_id", "phase", "layer"]).to_csv(DATA / f"{study}_layers.csv", index=False,
                                                                float_format="%.17g")
    return runs


def archive_probe(study: str) -> None:
    """Probe the study's config at init (no training) and archive what its page tables."""
    command = [sys.executable, "-m", "initsweep", "probe", str(ROOT / "configs" / f"{study}.yaml"), *PROBES[study],
               "--threads", "1", "-f", "json"]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    if done.returncode != 0:
        raise SystemExit(f"error: {' '.join(command[2:])} failed ({done.returncode}): {done.stderr.strip()[-500:]}")
    points = [{"point": p["point"], **{k: p[k] for k in PROBE_FIELDS + ["max_dead_frac", "mean_saturated_frac"]},
               "per_seed": [{"seed": s["seed"], **{k: s[k] for k in PROBE_FIELDS}} for s in p["per_seed"]]}
              for p in json.loads(done.stdout)]
    (DATA / f"{study}_probe.json").write_text(json.dumps(points, indent=1) + "\n", encoding="utf-8")


def load_probe(study: str) -> list[dict]:
    return json.loads((DATA / f"{study}_probe.json").read_text(encoding="utf-8"))


def factor(x: float) -> str:
    """A per-layer factor as the probe pages print it: four significant digits, at most three decimals."""
    return f"{x:.1f}" if x >= 100 else f"{x:.2f}" if x >= 10 else f"{x:.3f}"


def probe_rows(points: list[dict], name: Callable[[dict], str], per_seed: bool = False) -> list[dict]:
    """One row per probed point (or per point and seed): verdict, measured and predicted factors."""
    rows = []
    for p in points:
        for entry in (p["per_seed"] if per_seed else [p]):
            rows.append({**name(p), **({"seed": entry["seed"]} if per_seed else {}), "verdict": entry["verdict"],
                         "act. x/layer": factor(entry["forward_factor"]),
                         "predicted (act.)": factor(entry["predicted_forward_factor"]),
                         "grad. x/layer": factor(entry["backward_factor"]),
                         "predicted (grad.)": factor(entry["predicted_backward_factor"])})
    return rows


def percent(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.0f}%"


def probe_table(rows: list[dict]) -> str:
    return table(rows, list(rows[0]), {c for c in rows[0] if "x/layer" in c or "predicted" in c or c in
                                       ("max dead", "mean sat.", "seed")})


def load_archive(study: str) -> pd.DataFrame:
    """The archived runs of ``study``, read as ``initsweep report --results FILE`` reads them."""
    return load_results(DATA / f"{study}.csv")


def load_layers(study: str) -> pd.DataFrame:
    """The archived per-layer statistics of ``study``'s runs, with the runs' settings."""
    layers = pd.read_csv(DATA / f"{study}_layers.csv", dtype={"run_id": str})
    return layers.merge(load_archive(study), on="run_id")


# ----------------------------------------------------------------------------- cells

def fmt(value: float, digits: int = 3) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def mean_pm(row: pd.Series, digits: int = 3) -> str:
    """``0.968 ± 0.004``: the mean and the half-width of its 95% Student-t interval."""
    if math.isnan(row["ci_high"]):
        return fmt(row["mean"], digits)
    return f"{fmt(row['mean'], digits)} ± {fmt((row['ci_high'] - row['ci_low']) / 2, digits)}"


def p_text(p: float) -> str:
    if math.isnan(p):
        return "–"
    return "< 0.001" if p < 0.001 else f"{p:.3g}"


def table(rows: list[dict], columns: list[str], right: set[str] = frozenset()) -> str:
    """Rows of cells through the report's own markdown writer (``right``: right-aligned columns)."""
    return markdown_table(pd.DataFrame(rows, columns=columns), right)


def comparison_rows(runs: pd.DataFrame, a: str, b: str, metric: str = "test_acc",
                    hide: tuple[str, ...] = ()) -> tuple[list[dict], bool]:
    """One row per group of ``compare_runs(a, b)``: means, the paired difference with its
    95% interval, and the paired t-test's p (Holm-adjusted over the groups when there are
    several, which the second value says). ``hide``: group settings left out of the labels
    (ones another setting of the label decides, such as the lr of each optimizer)."""
    result = compare_runs(runs, a, b, metric)
    rows = []
    for group in result.groups:
        p = group["p_value_holm"] if result.holm else group["p_value"]
        label = " ".join(f"{k}={v}" for k, v in group["group"].items() if k not in hide) or "all runs"
        interval = ("–" if math.isnan(group["ci_low"]) else
                    f"{group['mean_diff']:+.3f} [{group['ci_low']:+.3f}, {group['ci_high']:+.3f}]")
        rows.append({"group": label, "pairs": group["n_pairs"], "A": fmt(group["mean_a"]), "B": fmt(group["mean_b"]),
                     "A − B [95% CI]": interval, "p": p_text(p),
                     "verdict": verdict(group["ci_low"], p) if group["n_pairs"] >= 2 else "too few pairs"})
    return rows, result.holm


def verdict(low: float, p: float) -> str:
    """What a reader may say of a difference: a tie unless the (adjusted) test rejects at 5%."""
    if math.isnan(p) or p >= 0.05:
        return "tie (within noise)"
    return "A better" if low > 0 else "B better"


COMPARE_COLUMNS = ["group", "pairs", "A", "B", "A − B [95% CI]", "p", "verdict"]


def compare_table(runs: pd.DataFrame, a: str, b: str, hide: tuple[str, ...] = ()) -> str:
    """A comparison as the page prints it: the table, then what A and B are and what p is."""
    rows, holm = comparison_rows(runs, a, b, hide=hide)
    what = (f"A: `{a}`; B: `{b}`; test accuracy, runs paired by seed. p: paired t-test"
            + (f", Holm-adjusted over the {len(rows)} groups (the intervals are not)." if holm else "."))
    return table(rows, COMPARE_COLUMNS, {"pairs", "A", "B", "p"}) + "\n\n" + what


def accuracy_pivot(runs: pd.DataFrame, rows: str, cols: str, row_order: list[str], col_order: list[str],
                   metric: str = "test_acc") -> str:
    """``rows`` x ``cols`` in the configs' order: mean ± 95% half-width over seeds, ``★``/``≈``
    as ``initsweep report`` marks them within the table, diverged runs, the init-time verdict."""
    summary = summarize(runs, metric, [rows, cols])
    cells = {(r[rows], r[cols]): r for _, r in summary.iterrows()}
    assert set(cells) == {(r, c) for r in row_order for c in col_order}, sorted(cells)
    out = []
    for r in row_order:
        line = {rows: r}
        for c in col_order:
            cell = cells[(r, c)]
            mark = f" {cell['mark']}" if isinstance(cell["mark"], str) and cell["mark"] else ""
            diverged = f" ({int(cell['diverged'])} diverged)" if cell["diverged"] else ""
            verdict_text = f" · {cell['verdict']}" if isinstance(cell["verdict"], str) else ""
            line[c] = f"{mean_pm(cell)}{mark}{diverged}{verdict_text}"
        out.append(line)
    n = sorted(set(summary["n"]))
    note = (f"\n\nn = {', '.join(map(str, n))} seeds per cell; ± is the 95% Student-t half-width; "
            "★ the best cell when a paired t-test by seed (5%) separates it from every other, else ≈ on "
            "the cells that test cannot tell from the best; after the dot, the probe's verdict at init.")
    return table(out, [rows, *col_order], set(col_order)) + note


# ----------------------------------------------------------------------------- tutorial

def tutorial_tables(runs: pd.DataFrame) -> dict[str, Callable[[], str]]:
    adam, sgd = runs[runs["optimizer"] == "adam"], runs[runs["optimizer"] == "sgd"]
    inits = ["uniform_inv_sqrt_n", "std_normal", "gaussian_inv_sqrt_n", "he", "he_as_written"]
    activations = ["sigmoid", "relu", "tanh", "leaky_relu"]
    both = 'optimizer == "adam"', 'optimizer == "sgd"'
    per_optimizer = ("lr", "momentum")  # each optimizer has its own
    return {
        "tutorial-adam": lambda: accuracy_pivot(adam, "init", "activation", inits, activations),
        "tutorial-sgd": lambda: accuracy_pivot(sgd, "init", "activation", inits, activations),
        "tutorial-adam-vs-sgd": lambda: compare_table(runs, *both, per_optimizer),
        "tutorial-he-vs-misprint": lambda: compare_table(
            runs, 'init == "he"', 'init == "he_as_written"', per_optimizer),
        "tutorial-std-normal": lambda: compare_table(
            runs, 'init == "gaussian_inv_sqrt_n"', 'init == "std_normal"', per_optimizer),
        "tutorial-leaky-vs-relu": lambda: compare_table(
            runs, 'activation == "leaky_relu"', 'activation == "relu"', per_optimizer),
        "tutorial-he-vs-lecun": lambda: compare_table(
            runs, 'init == "he"', 'init == "gaussian_inv_sqrt_n"', per_optimizer),
        "tutorial-dead-units": lambda: dead_units(load_layers("tutorial")),
        "tutorial-probe": lambda: tutorial_probe(load_probe("tutorial")),
        "tutorial-tanh-vs-sigmoid": lambda: compare_table(
            runs, 'activation == "tanh"', 'activation == "sigmoid"', per_optimizer),
    }


def tutorial_probe(points: list[dict]) -> str:
    """The probe table with the largest share of dead units and the mean share of saturated ones."""
    rows = probe_rows(points, lambda p: {"point": f"{p['point']['init']} + {p['point']['activation']}"})
    return probe_table([{**row, "max dead": percent(p["max_dead_frac"]), "mean sat.": percent(p["mean_saturated_frac"])}
                        for p, row in zip(points, rows)])


def dead_units(layers: pd.DataFrame) -> str:
    """Share of each layer's units dead (inactive on every probe image), at init and after
    training: mean and range over the runs of the fan-in-scaled inits, per activation and optimizer."""
    fan_in = layers[layers["init"].isin(["uniform_inv_sqrt_n", "gaussian_inv_sqrt_n", "he"])
                    & layers["activation"].isin(["relu", "leaky_relu"])]
    rows = []
    for (activation, optimizer, phase), part in fan_in.groupby(["activation", "optimizer", "phase"], sort=False):
        row = {"activation": activation, "optimizer": optimizer, "when": "at init" if phase == "init" else "trained",
               "runs": part["run_id"].nunique()}
        for (layer, kind), cell in part.groupby(["layer", "kind"]):
            dead = 100 * cell["dead_frac"]
            row[f"layer {layer} ({kind})"] = f"{dead.mean():.0f}% ({dead.min():.0f}–{dead.max():.0f})"
        rows.append(row)
    rows.sort(key=lambda r: (r["activation"] != "relu", r["optimizer"], r["when"] != "at init"))
    return table(rows, list(rows[0]), set(list(rows[0])[3:])) + (
        "\n\nmean (min–max) over the runs of `uniform_inv_sqrt_n`, `gaussian_inv_sqrt_n` and `he` (5 seeds each); "
        "a unit is dead when it is inactive on every one of the probe's 128 training images.")


# ----------------------------------------------------------------------------- He 2015

def he_tuned(runs: pd.DataFrame) -> dict[str, float]:
    """Each init's learning rate: the one with the best mean validation accuracy over seeds."""
    val = runs.groupby(["init_label", "lr"])["best_val_acc"].mean()
    return {init: float(val[init].idxmax()) for init in val.index.get_level_values(0).unique()}


def he_tables(runs: pd.DataFrame) -> dict[str, Callable[[], str]]:
    def lr_table() -> str:
        val = summarize(runs, "best_val_acc", ["init", "lr"])
        test = summarize(runs, "test_acc", ["init", "lr"])
        tuned = he_tuned(runs)
        rows = []
        for (_, v), (_, t) in zip(val.iterrows(), test.iterrows()):
            group = runs[(runs["init_label"] == v["init"]) & (runs["lr"] == v["lr"])]
            rows.append({"init": v["init"], "lr": f"{v['lr']:g}" + (" (chosen)" if tuned[v["init"]] == v["lr"] else ""),
                         "best val. acc.": mean_pm(v), "test acc.": mean_pm(t),
                         "test acc. min–max": f"{t['min']:.3f}–{t['max']:.3f}",
                         "seeds above chance": f"{int((group['test_acc'] > CHANCE + 0.05).sum())} of {len(group)}",
                         "final train loss": fmt(group["final_train_loss"].mean()), "_key": (v["init"] != "he", v["lr"])})
        rows.sort(key=lambda r: r.pop("_key"))
        return table(rows, list(rows[0]), set(list(rows[0])[2:]))

    def tuned_table() -> str:
        tuned = he_tuned(runs)
        a = f'init == "he" and lr == {tuned["he"]}'
        b = f'init == "xavier_normal" and lr == {tuned["xavier_normal"]}'
        return compare_table(runs, a, b)

    return {"he2015-lr": lr_table, "he2015-tuned": tuned_table,
            "he2015-probe": lambda: probe_table(probe_rows(load_probe("he2015"), lambda p: {"init": p["point"]["init"]},
                                                           per_seed=True))}


# ----------------------------------------------------------------------------- Glorot 2010

GLOROT_PUBLISHED = {("sigmoid", "uniform_inv_sqrt_n"): 2.21, ("tanh", "uniform_inv_sqrt_n"): 1.76,
                    ("tanh", "xavier_uniform"): 1.64, ("softsign", "uniform_inv_sqrt_n"): 1.64,
                    ("softsign", "xavier_uniform"): 1.72}


def glorot_tables(runs: pd.DataFrame) -> dict[str, Callable[[], str]]:
    def error_table() -> str:
        errors = runs.assign(test_err=100 * (1 - runs["test_acc"]))
        summary = summarize(errors, "test_err", ["activation", "init"])
        rows = [{"activation": r["activation"], "init": r["init"], "test error % (here)": mean_pm(r, 2),
                 "Glorot & Bengio (Table 1)": GLOROT_PUBLISHED.get((r["activation"], r["init"]), "–"),
                 "verdict at init": r["verdict"] if isinstance(r["verdict"], str) else "–"}
                for _, r in summary.iterrows()]
        activations, inits = ["sigmoid", "tanh", "softsign"], ["uniform_inv_sqrt_n", "xavier_uniform"]
        rows.sort(key=lambda r: (activations.index(r["activation"]), inits.index(r["init"])))
        return table(rows, list(rows[0]), {"test error % (here)", "Glorot & Bengio (Table 1)"})

    names = {"uniform_inv_sqrt_n": "standard", "xavier_uniform": "normalized"}
    return {"glorot2010-errors": error_table,
            "glorot2010-probe": lambda: probe_table(probe_rows(load_probe("glorot2010"), lambda p: {
                "init + activation": f"{names[p['point']['init']]} + {p['point']['activation']}"})),
            "glorot2010-compare": lambda: compare_table(
                runs, 'init == "xavier_uniform"', 'init == "uniform_inv_sqrt_n"')}


# ----------------------------------------------------------------------------- edge of chaos

def sigma_w2(runs: pd.DataFrame) -> pd.Series:
    """sigma_w^2 of each run: ``variance_scaling``'s scale (1.0 when left at its default)."""
    return runs["init_params"].map(lambda s: float(json.loads(s).get("scale", 1.0)))


def sigma_b2(runs: pd.DataFrame) -> pd.Series:
    return runs["bias_params"].map(lambda s: round(float(json.loads(s)["std"]) ** 2, 4))


def eoc_frame(runs: pd.DataFrame) -> pd.DataFrame:
    return runs.assign(sigma_w2=sigma_w2(runs), sigma_b2=sigma_b2(runs))


def trainable_depth(depths: np.ndarray, accuracy: np.ndarray) -> tuple[float, str]:
    """The depth where mean accuracy falls through ``TRAINED``, interpolated linearly in
    log-depth between the last depth above it and the next one; censored ends say so:
    (``depths[-1]``, ">=") when every depth trains, (``depths[0]``, "<") when none does."""
    above = accuracy >= TRAINED
    if above.all():
        return float(depths[-1]), ">="
    if not above[0]:
        return float(depths[0]), "<"
    i = int(np.argmin(above)) - 1  # the last depth that trains before the first that does not
    x0, x1 = math.log(depths[i]), math.log(depths[i + 1])
    y0, y1 = accuracy[i], accuracy[i + 1]
    return float(math.exp(x0 + (TRAINED - y0) * (x1 - x0) / (y1 - y0))), "="


def bootstrap_depth(frame: pd.DataFrame, reps: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95% percentile interval of the trainable depth, resampling seeds with replacement
    (the same resampled seeds at every depth: a seed is one initialization and data order)."""
    table_ = frame.pivot_table(index="seed", columns="depth", values="test_acc")
    depths, values = table_.columns.to_numpy(float), table_.to_numpy(float)
    rng = np.random.default_rng(seed)
    draws = [trainable_depth(depths, values[rng.integers(0, len(values), len(values))].mean(axis=0))[0]
             for _ in range(reps)]
    return float(np.percentile(draws, 2.5)), float(np.percentile(draws, 97.5))


@lru_cache(maxsize=None)
def theory_row(s_w2: float, s_b2: float) -> dict[str, float]:
    """The mean-field numbers of one point (tanh): q*, chi_1, c*, chi_c, xi_c (seconds each
    in the chaotic phase, hence the cache)."""
    c_star, chi_c = theory.correlation_fixed_point("tanh", s_w2, s_b2)
    return {"q*": theory.fixed_point("tanh", {}, s_w2, s_b2), "chi_1": theory.chi1("tanh", {}, s_w2, s_b2),
            "c*": c_star, "chi_c": chi_c, "xi_c": math.inf if chi_c >= 1 else -1.0 / math.log(chi_c)}


def xi_c(s_w2: float, s_b2: float) -> float:
    return theory_row(float(s_w2), float(s_b2))["xi_c"]


def eoc_depths(runs: pd.DataFrame) -> pd.DataFrame:
    """Per (sigma_b^2, sigma_w^2): the trainable depth, its bootstrap interval, xi_c."""
    frame = eoc_frame(runs)
    rows = []
    for (s_b2, s_w2), group in frame.groupby(["sigma_b2", "sigma_w2"], sort=True):
        mean = group.groupby("depth")["test_acc"].mean()
        depth, censor = trainable_depth(mean.index.to_numpy(float), mean.to_numpy(float))
        low, high = bootstrap_depth(group)
        rows.append({"sigma_b2": s_b2, "sigma_w2": s_w2, "depth": depth, "censor": censor,
                     "low": low, "high": high, "xi_c": xi_c(s_w2, s_b2)})
    return pd.DataFrame(rows)


def testable(depths: pd.DataFrame, deepest: float) -> pd.DataFrame:
    """The points where the theory puts the trainable boundary inside the grid: 6 xi_c at
    most the deepest depth tried (elsewhere it predicts that every depth trains)."""
    return depths[6 * depths["xi_c"] <= deepest]


def ratio_fit(depths: pd.DataFrame) -> dict[str, float]:
    """Fit trainable depth = a * xi_c over the uncensored points with a finite xi_c: log a is
    the mean of log(depth / xi_c), with its Student-t interval; and how well log xi_c orders
    the depths (Pearson r of the logs, its p)."""
    fit = depths[(depths["censor"] == "=") & np.isfinite(depths["xi_c"])]
    logs = np.log(fit["depth"] / fit["xi_c"]).to_numpy()
    n = len(logs)
    out = {"n": n, "a": math.nan, "low": math.nan, "high": math.nan, "r": math.nan, "p": math.nan}
    if n >= 2:
        half = stats.t.ppf(0.975, n - 1) * logs.std(ddof=1) / math.sqrt(n)
        out.update(a=math.exp(logs.mean()), low=math.exp(logs.mean() - half), high=math.exp(logs.mean() + half))
    if n >= 3:
        r = stats.pearsonr(np.log(fit["xi_c"]), np.log(fit["depth"]))
        out.update(r=float(r.statistic), p=float(r.pvalue))
    return out


def eoc_tables(runs: pd.DataFrame) -> dict[str, Callable[[], str]]:
    frame = eoc_frame(runs)
    depths = eoc_depths(runs)

    def accuracy(s_b2: float) -> str:
        part = frame[frame["sigma_b2"] == s_b2]
        mean = part.pivot_table(index="sigma_w2", columns="depth", values="test_acc", aggfunc="mean")
        std = part.pivot_table(index="sigma_w2", columns="depth", values="test_acc", aggfunc="std")
        crit = theory.critical_sigma_w2("tanh", s_b2)
        rows = [{"sigma_w^2 \\ depth": f"{s:g}" + (" ←" if abs(s - crit) == min(abs(mean.index - crit)) else ""),
                 **{str(d): fmt(mean.loc[s, d]) for d in mean.columns}} for s in mean.index]
        n = int(part.groupby(["sigma_w2", "depth"]).size().min())
        half = float((std * stats.t.ppf(0.975, n - 1) / math.sqrt(n)).max().max())
        note = (f"\n\nMean test accuracy over {n} seeds (chance {CHANCE:g}); ← marks the grid's sigma_w^2 nearest "
                f"the critical {crit:.3f}. The widest 95% half-width of any cell: ±{half:.3f}.")
        return table(rows, list(rows[0]), set(list(rows[0])[1:])) + note

    def depth_table(s_b2: float) -> str:
        part = depths[depths["sigma_b2"] == s_b2]
        rows = []
        for _, r in part.iterrows():
            shown = {"=": f"{r['depth']:.1f}", ">=": f"≥ {r['depth']:.0f}", "<": f"< {r['depth']:.0f}"}[r["censor"]]
            finite = math.isfinite(r["xi_c"])
            rows.append({"sigma_w^2": f"{r['sigma_w2']:g}", "chi_1": fmt(theory_row(r["sigma_w2"], s_b2)["chi_1"]),
                         "trainable depth": shown, "95% interval (bootstrap)": f"{r['low']:.1f} – {r['high']:.1f}",
                         "xi_c": f"{r['xi_c']:,.1f}" if finite else "∞",
                         "6 xi_c": f"{6 * r['xi_c']:,.0f}" if finite else "∞",
                         "depth / xi_c": f"{r['depth'] / r['xi_c']:.2f}" if finite and r["censor"] == "=" else "–"})
        return table(rows, list(rows[0]), set(list(rows[0])[1:]))

    def fit_table() -> str:
        """The fit over the points where the theory puts the boundary inside the grid (6 xi_c
        at most the deepest depth), per sigma_b^2, per phase, and all of them."""
        inside = testable(depths, float(frame["depth"].max()))
        chi1 = inside.apply(lambda r: theory_row(r["sigma_w2"], r["sigma_b2"])["chi_1"], axis=1)
        parts = [*((f"sigma_b^2 = {s:g}", inside[inside["sigma_b2"] == s]) for s in sorted(depths["sigma_b2"].unique())),
                 ("ordered phase (chi_1 < 1), both", inside[chi1 < 1]),
                 ("chaotic phase (chi_1 > 1), both", inside[chi1 > 1]), ("all", inside)]
        rows = []
        for label, part in parts:
            fit = ratio_fit(part)
            rows.append({"points": label, "n": fit["n"],
                         "a in depth = a xi_c [95% CI]": f"{fit['a']:.2f} [{fit['low']:.2f}, {fit['high']:.2f}]",
                         "r (log depth, log xi_c)": fmt(fit["r"], 2), "p": p_text(fit["p"])})
        return table(rows, list(rows[0]), {"n", "r (log depth, log xi_c)", "p"})

    def theory_table(s_b2: float) -> str:
        rows = []
        for s_w2 in sorted(frame["sigma_w2"].unique()):
            t = theory_row(float(s_w2), float(s_b2))
            finite = math.isfinite(t["xi_c"])
            rows.append({"sigma_w^2": f"{s_w2:g}", "q*": f"{t['q*']:.3f}", "chi_1": f"{t['chi_1']:.3f}",
                         "c*": f"{t['c*']:.3f}", "chi_c": f"{t['chi_c']:.3f}",
                         "xi_c": f"{t['xi_c']:,.1f}" if finite else "∞",
                         "6 xi_c": f"{6 * t['xi_c']:,.0f}" if finite else "∞"})
        return table(rows, list(rows[0]), set(list(rows[0])[1:]))

    out: dict[str, Callable[[], str]] = {"eoc-fit": fit_table}
    for s_b2 in sorted(frame["sigma_b2"].unique()):
        key = f"{s_b2:g}".replace(".", "")
        out[f"eoc-theory-{key}"] = lambda s=s_b2: theory_table(s)
        out[f"eoc-accuracy-{key}"] = lambda s=s_b2: accuracy(s)
        out[f"eoc-depth-{key}"] = lambda s=s_b2: depth_table(s)
    return out


def eoc_figure(runs: pd.DataFrame, path: Path) -> None:
    """The phase diagram: mean accuracy over (sigma_w^2, depth) per sigma_b^2, the measured
    trainable depth with its interval, 6 xi_c and the fitted a xi_c."""
    import matplotlib
    from matplotlib.figure import Figure

    matplotlib.rcParams["svg.hashsalt"] = "initsweep"
    frame, depths = eoc_frame(runs), eoc_depths(runs)
    fit = ratio_fit(testable(depths, float(frame["depth"].max())))
    panels = sorted(frame["sigma_b2"].unique())
    fig = Figure(figsize=(5.2 * len(panels), 4.2), layout="constrained")
    axes = fig.subplots(1, len(panels), sharey=True, squeeze=False)[0]
    for ax, s_b2 in zip(axes, panels):
        part = frame[frame["sigma_b2"] == s_b2]
        mean = part.pivot_table(index="depth", columns="sigma_w2", values="test_acc", aggfunc="mean")
        mesh = ax.pcolormesh(mean.columns, mean.index, mean.to_numpy(), shading="nearest", cmap="viridis",
                             vmin=CHANCE, vmax=1.0)
        crit = theory.critical_sigma_w2("tanh", s_b2)
        grid = np.unique(np.concatenate([np.linspace(mean.columns.min(), mean.columns.max(), 25),
                                         crit + np.array([-0.1, -0.04, -0.015, 0.015, 0.04, 0.1])]))
        xi = np.array([xi_c(round(float(s), 4), s_b2) for s in grid])
        ax.plot(grid, 6 * xi, color="white", lw=1.5, label="6 ξ_c (Schoenholz et al.)")
        if math.isfinite(fit["a"]):
            ax.plot(grid, fit["a"] * xi, color="orange", lw=1.5, ls="--",
                    label=f"{fit['a']:.2f} ξ_c (fitted where 6 ξ_c ≤ {frame['depth'].max()})")
        d = depths[(depths["sigma_b2"] == s_b2) & (depths["censor"] == "=")]
        ax.errorbar(d["sigma_w2"], d["depth"], yerr=[d["depth"] - d["low"], d["high"] - d["depth"]],
                    fmt="o", color="red", ms=4, capsize=2, label=f"trainable depth (mean acc ≥ {TRAINED:g})")
        c = depths[(depths["sigma_b2"] == s_b2) & (depths["censor"] == ">=")]
        ax.plot(c["sigma_w2"], c["depth"], "^", color="red", ms=6, label="trains at every depth")
        ax.axvline(theory.critical_sigma_w2("tanh", s_b2), color="white", ls=":", lw=1)
        ax.set_yscale("log")
        ax.set_ylim(mean.index.min() / 1.2, mean.index.max() * 1.2)
        ax.set_xlabel("σ_w²")
        ax.set_title(f"σ_b² = {s_b2:g} (critical σ_w² = {theory.critical_sigma_w2('tanh', s_b2):.3f})")
    axes[0].set_ylabel("depth")
    axes[0].legend(loc="upper right", fontsize=7)
    fig.colorbar(mesh, ax=list(axes), label="mean test accuracy")
    fig.savefig(path, dpi=90, metadata={"Software": None})


# ----------------------------------------------------------------------------- pages

PAGES = {
    "tutorial": (ROOT / "docs" / "tutorial-claims.md", tutorial_tables),
    "he2015": (ROOT / "docs" / "studies" / "he2015.md", he_tables),
    "glorot2010": (ROOT / "docs" / "studies" / "glorot2010.md", glorot_tables),
    "edge_of_chaos": (ROOT / "docs" / "studies" / "edge_of_chaos.md", eoc_tables),
}


def tables_of(study: str, runs: pd.DataFrame | None = None) -> dict[str, str]:
    """Every table of a study's page, rendered from its archive (or ``runs``)."""
    runs = load_archive(study) if runs is None else runs
    return {name: make() for name, make in PAGES[study][1](runs).items()}


def render(text: str, tables: dict[str, str], page: Path) -> str:
    """``text`` with the body of every marked table replaced; a marker without a table, or a
    table without a marker, is an error (a renamed table must not leave a stale copy)."""
    seen = set()

    def replace(match: re.Match) -> str:
        name = match.group("name")
        if name not in tables:
            raise SystemExit(f"error: {page.relative_to(ROOT)}: marker 'table: {name}' names no table of its study")
        seen.add(name)
        return f"{match.group(1)}{tables[name]}\n{match.group(4)}"

    out = MARKER.sub(replace, text)
    missing = sorted(set(tables) - seen)
    if missing:
        raise SystemExit(f"error: {page.relative_to(ROOT)}: no marker for table(s) {', '.join(missing)}")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", type=Path, help="archive each study's runs from RESULTS/<study> first")
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if a page is stale")
    parser.add_argument("studies", nargs="*", metavar="STUDY", help=f"some of {', '.join(STUDIES)} (default: all)")
    args = parser.parse_args(argv)
    unknown = [s for s in args.studies if s not in STUDIES]
    if unknown:
        parser.error(f"unknown study {unknown[0]!r}: use {', '.join(STUDIES)}")
    stale = []
    for study in args.studies or STUDIES:
        if args.results:
            archive(args.results, study)
            if study in PROBES:
                archive_probe(study)
        runs = load_archive(study)  # what the test rebuilds from: the archive, never the store
        page, _ = PAGES[study]
        text = page.read_text(encoding="utf-8")
        new = render(text, tables_of(study, runs), page)
        if study == "edge_of_chaos" and not args.check:
            eoc_figure(runs, ROOT / "docs" / "studies" / "edge_of_chaos.png")
        if new != text:
            stale.append(str(page.relative_to(ROOT)))
            if not args.check:
                page.write_text(new, encoding="utf-8")
    if args.check and stale:
        print(f"stale tables in: {', '.join(stale)} (run docs/studies/build.py)", file=sys.stderr)
        return 1
    print(("up to date" if not stale else f"rebuilt: {', '.join(stale)}") if not args.check else "up to date")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except InitsweepError as exc:  # a missing or damaged results folder: one line, exit 2
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
