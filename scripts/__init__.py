"""Helpers for developers, tests and CI; importable, e.g. ``from scripts.services import redis_server``."""
