"""Benchmarks, side by side with the baselines users have today: run as ``python -m benchmarks.NAME``."""
