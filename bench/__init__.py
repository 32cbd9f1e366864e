"""Chatsite's benchmark harness (``make bench``, ``python -m bench``); docs/performance.md explains it."""
