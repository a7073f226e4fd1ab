"""Benchmarks of dgkd against straightforward baselines; run ``python -m benchmarks``."""
