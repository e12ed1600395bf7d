"""Benchmarks of celery-durable's hot path (run with ``python -m bench.run``)."""
