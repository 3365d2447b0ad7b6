"""Benchmarks: commands that measure speed goals (not timed tests)."""
