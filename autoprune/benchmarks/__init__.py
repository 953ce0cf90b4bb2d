"""Benchmarks: commands that measure and write reports under ``results/``."""
