"""Benchmarks: speed measured as ratios in one run (``python -m cimsim.bench``, see :mod:`cimsim.bench.cli`)."""
