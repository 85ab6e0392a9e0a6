"""Benchmarks of scan-outbox on embedded PostgreSQL and Redis: `python -m bench [SCENARIO ...]`."""
