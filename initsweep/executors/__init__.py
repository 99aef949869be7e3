"""Executors: how a list of claimed runs gets trained (in-process, worker pool, Ray).

Each executor trains runs with ``train.run_safely`` somewhere and hands every result back
to the process that owns the store, which records it the moment it arrives.
"""
