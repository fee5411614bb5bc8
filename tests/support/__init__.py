"""Shared helpers of the tests (no tests, no fixtures): test modules, fixture modules and
benchmarks import from here, never from each other."""
