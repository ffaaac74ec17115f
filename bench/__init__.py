"""Benchmark scripts: seed a real database, drive the real app, write the figures."""
