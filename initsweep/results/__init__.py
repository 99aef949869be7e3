"""Stored results: ``store.py`` (the SQLite file: schema, claims, checks on open),
``read.py`` (runs from a results folder or an export file: ``load_results``, ``find_run``),
``query.py`` (the ``--where`` language) and ``merge.py`` (combining results folders)."""
