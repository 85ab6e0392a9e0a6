"""The HTTP API: accepts scans and commits each task with its outbox row."""
