"""The relay: publishes committed outbox rows to the broker."""
