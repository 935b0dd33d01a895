"""Benchmarks: `make bench` prints a table and writes BENCHMARKS.md. Every figure is a ratio
measured side by side in one run, on the machine the run names."""
