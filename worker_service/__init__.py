"""The worker: Dramatiq actors that claim tasks under a lease and run the scan."""
