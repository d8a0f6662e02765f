"""Errors that are the user's to fix (a bad value, a missing input, a stage to run first).

The CLI prints one of these as a single line naming the problem and exits non-zero; anything else
is a bug or an infrastructure failure and reaches the console whole, traceback included.
"""
from __future__ import annotations


class UserError(Exception):
    """A problem in what the user asked for, not in phi4ray; its message names the fix."""


class MissingInput(UserError):
    """A stage's input does not exist: a file the config names, or a stage that has not run."""


class ConfigError(UserError, ValueError):
    """A config value that cannot work; the message names the field."""
