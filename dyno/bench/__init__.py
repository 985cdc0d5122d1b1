"""Experiments and presentation: benchmarks, the demo, reports, tables, plots and the console.

The top of the house: it may import every part of dyno; nothing but the CLI imports it.
"""
