"""Reliability suites: chaos, fuzz, load and security runs against a real stack.

Each suite module exposes `run(quick: bool = False) -> SuiteResult`; `python -m reliability`
runs them and writes RELIABILITY.md (and the raw figures in RELIABILITY.json) at the root.
"""
