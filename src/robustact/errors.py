"""Errors caused by user input.

Every error a user can fix (an unknown name, a value out of range, a missing or corrupt file) is a
:class:`RobustactError`. The command line prints it as one line, without a traceback.
"""

from __future__ import annotations


class RobustactError(Exception):
    """Base class of errors the user can fix; the CLI prints ``error: <message>`` and exits 2."""


class ConfigError(RobustactError, ValueError):
    """A configuration value (name, ratio, shape, ...) is invalid."""


class UnknownNameError(ConfigError):
    """A registry was asked for a name it does not hold."""


class DataError(RobustactError):
    """A dataset is missing, truncated or corrupt."""


class CheckpointError(RobustactError):
    """A checkpoint file is missing, unreadable or does not match the requested model."""


class InputError(RobustactError, ValueError):
    """Data given to an attack or an evaluation is unusable: empty, or not finite (NaN, inf)."""


class BusyError(RobustactError):
    """Another live process holds the work (a training run, a cell, a store migration)."""
