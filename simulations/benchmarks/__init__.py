"""Benchmarks: machine-readable JSON in docs/results/ plus a Markdown section in docs/RESULTS.md."""
