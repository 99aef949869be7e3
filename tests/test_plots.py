"""Figures of a real sweep: files that are valid images, panels that show the numbers the
report computes, a colour-blind-safe palette, no pyplot, and a clear error without matplotlib."""

from __future__ import annotations

import base64
import io
import math
import re
import sqlite3
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from initsweep.cli import app
from initsweep.results.read import load_results, read_curves
from initsweep.report.stats import summarize

matplotlib = pytest.importorskip("matplotlib")
import matplotlib.text  # noqa: E402
from PIL import Image  # noqa: E402  (matplotlib depends on pillow)

from initsweep.report import plots  # noqa: E402

runner = CliRunner()
STEMS = {"heatmap_test_acc", "test_acc_vs_depth", "learning_curves", "activation_std"}


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    """A 2x2x2 grid, 2 seeds, 2 epochs; its ``layers`` table replaced by known activation stds in
    the shape the diagnostics store them (N(0, 1) grows x3 per layer, He stays flat), so the
    figures can be checked against numbers whether or not the probe ran."""
    from initsweep.sweep.run import run_sweep

    root = tmp_path_factory.mktemp("plots")
    config = root / "grid.yaml"
    config.write_text(yaml.safe_dump({
        "name": "grid", "data": {"dataset": "mnist-sample", "train_limit": 256, "test_limit": 256},
        "model": {"arch": "plain", "width": 4, "head": "flatten"},
        "train": {"epochs": 2, "batch_size": 64, "seeds": [0, 1]},
        "grid": {"init": ["he", "std_normal"], "activation": ["relu", "tanh"], "depth": [2, 3]}}))
    run_sweep(config, results_dir=root / "res", device="cpu")
    with sqlite3.connect(root / "res" / "initsweep.db") as conn:
        conn.execute("DELETE FROM layers")
        runs = conn.execute("SELECT row_id, run_id, init, depth, seed FROM runs").fetchall()
        conn.executemany(
            "INSERT INTO layers (row_id, run_id, phase, layer, kind, act_std) VALUES (?, ?, ?, ?, 'conv', ?)",
            [(row_id, run_id, phase, layer, (3.0 if init == "std_normal" else 1.0) ** layer * (1 + seed / 10))
             for row_id, run_id, init, depth, seed in runs for phase in ("init", "final") for layer in range(depth)])
    return root / "res"


def test_report_plot_writes_valid_png_and_svg(store, tmp_path):
    out = runner.invoke(app, ["report", "--results", str(store), "--plot", str(tmp_path / "plots")])
    assert out.exit_code == 0, out.output
    files = sorted(p.name for p in (tmp_path / "plots").iterdir())
    assert files == sorted(f"{stem}.{ext}" for stem in STEMS for ext in ("png", "svg"))
    for stem in STEMS:
        png = tmp_path / "plots" / f"{stem}.png"
        with Image.open(png) as image:
            image.verify()
        with Image.open(png) as image:
            assert image.format == "PNG" and image.width >= 800 and image.height >= 300
            colours = image.convert("RGB").getcolors(maxcolors=1_000_000)
            assert len(colours) > 50  # drawn content, not a blank canvas
        assert png.stat().st_size > 20_000
        assert ET.parse(tmp_path / "plots" / f"{stem}.svg").getroot().tag.endswith("svg")


def test_heatmap_shows_the_report_means_on_one_scale(store):
    runs = load_results(store)
    fig = plots.heatmap(runs, "test_acc")
    table = summarize(runs, "test_acc", ["init", "activation", "depth"]).set_index(["init", "activation", "depth"])
    panels = [ax for ax in fig.axes if ax.images]
    assert [ax.get_title() for ax in panels] == ["depth 2", "depth 3"]
    for ax, depth in zip(panels, (2, 3)):
        image = ax.images[0]
        shown = image.get_array()
        for y, init in enumerate(("he", "std_normal")):
            for x, act in enumerate(("relu", "tanh")):
                assert shown[y, x] == pytest.approx(table.loc[(init, act, depth), "mean"], rel=1e-12)
        assert image.get_cmap().name == "cividis"
        assert (image.norm.vmin, image.norm.vmax) == (table["mean"].min(), table["mean"].max())
        assert ax.get_xlabel() == "activation"
    # one row of panels sharing the init axis: named and labelled once, at the left
    assert [ax.get_ylabel() for ax in panels] == ["init", ""]
    assert [[t.get_text() for t in ax.get_yticklabels() if t.get_visible()] for ax in panels] == [
        ["he", "std_normal"], []]
    loss = plots.heatmap(runs, "test_loss")
    assert loss.axes[0].images[0].get_cmap().name == "cividis_r"  # brighter = better for a loss too


def test_metric_vs_depth_error_bars_are_the_seed_std(store):
    runs = load_results(store)
    fig = plots.metric_vs_depth(runs, "test_acc")
    table = summarize(runs, "test_acc", ["init", "activation", "depth"])
    relu = fig.axes[0]
    assert relu.get_xlabel() == "depth (conv layers)" and "test accuracy" in relu.get_ylabel()
    for container, init in zip(relu.containers, ("he", "std_normal")):
        line, _, (bars,) = container
        expected = table[(table["init"] == init) & (table["activation"] == "relu")]
        assert list(line.get_ydata()) == pytest.approx(expected["mean"].tolist())
        spans = [seg[1][1] - seg[0][1] for seg in bars.get_segments()]
        assert spans == pytest.approx((2 * expected["std"]).tolist())
        assert line.get_color() in plots.OKABE_ITO


def test_learning_curves_average_seeds_per_epoch(store):
    runs = load_results(store)
    epochs, _ = read_curves(store, runs["row_id"].tolist())
    fig = plots.learning_curves(runs, epochs)
    assert len([ax for ax in fig.axes if ax.get_visible()]) == 2 * 2  # activation x depth
    he_relu_2 = runs[(runs.init == "he") & (runs.activation == "relu") & (runs.depth == 2)]["row_id"]
    expected = epochs[epochs.row_id.isin(he_relu_2)].groupby("epoch")["val_acc"].mean()
    line = fig.axes[0].get_lines()[0]
    assert list(line.get_xdata()) == [1, 2] and list(line.get_ydata()) == pytest.approx(expected.tolist())


def test_activation_std_is_a_log_scale_geometric_mean(store):
    runs = load_results(store)
    _, layers = read_curves(store, runs["row_id"].tolist())
    fig = plots.activation_std(runs, layers)
    ax = fig.axes[0]
    assert ax.get_yscale() == "log" and "depth 3" in fig.get_suptitle()
    he, he_final, normal = ax.get_lines()[:3]
    # seeds 0 and 1 store 1.0x and 1.1x: their geometric mean is sqrt(1.1)
    assert list(he.get_ydata()) == pytest.approx([math.sqrt(1.1)] * 3)
    assert list(normal.get_ydata()) == pytest.approx([math.sqrt(1.1) * 3 ** k for k in range(3)])
    assert he_final.get_linestyle() == "--"
    assert plots.activation_std(runs, layers.iloc[0:0]) is None


def test_figures_never_touch_pyplot_and_slice_extra_axes(store):
    runs = load_results(store)
    mixed = runs.assign(lr=[0.001 if s == 0 else 0.01 for s in runs["seed"]])
    figures = plots.make_figures(mixed, "test_acc")
    assert set(figures) == {f"{stem}_lr={lr}" for stem in ("heatmap_test_acc", "test_acc_vs_depth")
                            for lr in (0.001, 0.01)}
    assert "matplotlib.pyplot" not in sys.modules


def test_cli_import_does_not_import_matplotlib():
    code = "import sys, initsweep.cli; print('matplotlib' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"


def test_without_matplotlib_plot_exits_2_and_html_has_no_plots(store, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    out = runner.invoke(app, ["report", "-r", str(store), "--plot", str(tmp_path / "p")])
    assert out.exit_code == 2 and out.stderr.strip().splitlines() == [
        "error: plots need matplotlib (initsweep's 'plot' extra): pip install matplotlib"]
    page = runner.invoke(app, ["report", "-r", str(store), "-f", "html"])
    assert page.exit_code == 0 and "<table>" in page.stdout and "<img" not in page.stdout
    assert "no plots" in page.stderr


def test_html_is_self_contained_and_escapes_text(store, tmp_path):
    # a label the page prints as stored (a group's verdict is judged anew from its layers rows)
    with sqlite3.connect(store / "initsweep.db") as conn:
        before = conn.execute("SELECT row_id, activation_label FROM runs").fetchall()
        conn.execute("UPDATE runs SET activation_label = '<script>alert(1)</script>' WHERE init = 'he'")
    try:
        page = runner.invoke(app, ["report", "-r", str(store), "-f", "html"]).stdout
    finally:
        with sqlite3.connect(store / "initsweep.db") as conn:
            conn.executemany("UPDATE runs SET activation_label = ? WHERE row_id = ?", [(v, r) for r, v in before])
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "<script" not in page
    assert page.count('<img src="data:image/png;base64,') == len(STEMS)
    assert "http://" not in page and "https://" not in page and "<link" not in page


@pytest.fixture(scope="module")
def mixed(tmp_path_factory) -> Path:
    """Two 1-epoch sweeps of one depth-1 run each in one folder, one leaving ``test_limit``
    unset: in the frame they share, test_limit is 256.0 and NaN."""
    from initsweep.sweep.run import run_sweep

    root = tmp_path_factory.mktemp("mixed")
    for name, data in (("full", {"train_limit": 256}), ("limited", {"train_limit": 256, "test_limit": 256})):
        config = root / f"{name}.yaml"
        config.write_text(yaml.safe_dump({
            "name": name, "data": {"dataset": "mnist-sample", **data},
            "model": {"arch": "plain", "width": 4, "head": "flatten", "depth": 1, "init": "he", "activation": "relu"},
            "train": {"epochs": 1, "batch_size": 64, "seeds": [0]}}))
        run_sweep(config, results_dir=root / "res", device="cpu")
    return root / "res"


def test_one_epoch_and_one_layer_are_ticked_in_whole_numbers(mixed):
    runs = load_results(mixed)
    epochs, layers = read_curves(mixed, runs["row_id"].tolist())
    assert set(epochs["epoch"]) == {1} and set(layers["layer"]) == {0}
    for fig, value in ((plots.learning_curves(runs, epochs), 1), (plots.activation_std(runs, layers), 0)):
        fig.draw_without_rendering()
        for ax in [ax for ax in fig.axes if ax.get_visible() and ax.get_lines()]:
            lo, hi = ax.get_xlim()
            ticks = [float(t) for t in ax.get_xticks()]
            assert ticks and all(t.is_integer() for t in ticks), ticks
            assert [t for t in ticks if lo <= t <= hi] == [value]


def test_figures_of_mixed_sweeps_name_settings_as_the_user_wrote_them(mixed, tmp_path):
    out = runner.invoke(app, ["report", "--results", str(mixed), "--plot", str(tmp_path / "plots")])
    assert out.exit_code == 0, out.output
    stems = [f"{stem}{suffix}" for stem in STEMS for suffix in ("", "_test_limit=256")]
    assert sorted(p.name for p in (tmp_path / "plots").glob("*.png")) == sorted(f"{s}.png" for s in stems)
    page = runner.invoke(app, ["report", "--results", str(mixed), "-f", "html"]).stdout
    captions = re.findall(r"<figcaption>(.*?)</figcaption>", page)
    assert len(captions) == 2 * len(STEMS)
    assert sum(caption.endswith(" · test_limit=256") for caption in captions) == len(STEMS)
    assert not [caption for caption in captions if "nan" in caption or "256.0" in caption]


@pytest.fixture
def wide_store(store, tmp_path) -> Path:
    """The grid's store widened to the default study's shape, 4 activations x 3 depths, by
    storing copies of its runs under two more activation names and a third depth (figures
    read only the labels and the numbers)."""
    res = tmp_path / "wide"
    res.mkdir()
    with sqlite3.connect(store / "initsweep.db") as src, sqlite3.connect(res / "initsweep.db") as dst:
        src.backup(dst)
        cols = [row[1] for row in dst.execute("PRAGMA table_info(runs)") if row[1] != "row_id"]
        for k, (act, depth) in enumerate((("sigmoid", None), ("leaky_relu", None), (None, 20))):
            values = [f"'{act}'" if act and c in ("activation", "activation_label") else
                      str(depth) if depth and c == "depth" else f"run_id || '-{k}'" if c == "run_id" else c
                      for c in cols]
            dst.execute(f"INSERT INTO runs ({', '.join(cols)}) SELECT {', '.join(values)} FROM runs "
                        + ("WHERE activation = 'relu'" if act else ""))
    return res


def test_html_figures_are_shown_at_their_own_size_with_text_of_12_px(wide_store):
    """The page's column (CSS) holds every embedded PNG without scaling it down, so a point
    of text is EMBED_DPI/72 px on screen; the smallest text is then 12 px or more."""
    runs = load_results(wide_store)
    assert runs["activation_label"].nunique() == 4 and runs["depth"].nunique() == 3
    page = runner.invoke(app, ["report", "-r", str(wide_store), "-f", "html"]).stdout
    body = re.search(r"body\{[^}]*max-width:(\d+)px;[^}]*padding:0 1rem", page)
    column = int(body.group(1)) - 2 * 16  # 1rem of padding on each side
    images = re.findall(r'<img src="data:image/png;base64,([^"]+)"', page)
    assert len(images) == len(STEMS)
    for data in images:
        with Image.open(io.BytesIO(base64.b64decode(data))) as image:
            assert 600 <= image.width <= column, image.size
    epochs, layers = read_curves(wide_store, runs["row_id"].tolist())
    for name, fig in plots.make_figures(runs, "test_acc", epochs, layers).items():
        assert fig.get_figwidth() * plots.EMBED_DPI <= column, name
        texts = [t for t in fig.findobj(matplotlib.text.Text) if t.get_visible() and t.get_text().strip()
                 and (t.axes is None or t.axes.get_visible())]
        assert min(t.get_fontsize() for t in texts) * plots.EMBED_DPI / 72 >= 12, name
