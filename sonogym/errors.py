"""Exceptions that SonoGym raises for bad input.

Every error names the problem and the fix; the command-line interface prints the message of a
:class:`SonoGymError` without a traceback.
"""


class SonoGymError(Exception):
    """Base class of all errors SonoGym raises on purpose."""


class DataError(SonoGymError, ValueError):
    """A volume, label map or patient is missing, corrupt or inconsistent."""


class FetchError(SonoGymError, RuntimeError):
    """Patient data could not be fetched from the package registry."""


class MissingDependencyError(SonoGymError, ImportError):
    """An optional dependency is needed but not installed."""
