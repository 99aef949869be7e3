"""Comparing runs: ``stats.py`` (seed statistics, pivots, baselines), ``check.py`` (the CI
regression gate), ``formats.py`` (tables as markdown, csv, json, html), ``ci.py`` (JUnit XML
and the CI Markdown summary) and ``plots.py``/``plots_probe.py`` (figures)."""
