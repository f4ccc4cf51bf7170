"""Benchmark suites: each module has DESCRIPTION and run(ctx) -> list[dict]."""
