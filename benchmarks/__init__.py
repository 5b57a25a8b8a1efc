"""Benchmark scripts (never run as tests)."""
