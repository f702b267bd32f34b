"""Benchmarks: each prints JSON with a baseline measured in the same run."""
