"""The library every scan-outbox service builds on: settings, database, outbox, broker."""
