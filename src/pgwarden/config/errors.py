"""The error every configuration problem is reported as; it imports nothing of ours, so any
config module (schema, validate, load) can raise it without importing another."""

from __future__ import annotations


class ConfigError(Exception):
    """The configuration cannot be used; the message says what to change."""
