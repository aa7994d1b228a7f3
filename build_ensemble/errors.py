"""Errors this package reports to its users (the CLI prints them as one line)."""


class RecsysError(Exception):
    """Base class of every error that is the user's to fix."""


class ConfigError(RecsysError):
    """An option or configuration file is invalid."""


class DataError(RecsysError):
    """Input data is unreadable or does not have the expected shape.

    Messages name the file and the column at fault.
    """


class ArtifactNotFoundError(RecsysError):
    """A build output that a later stage needs is missing."""


class ServerError(RecsysError):
    """The Triton server could not be started, reached or stopped."""


class IntegrityError(RecsysError):
    """A model repository's files differ from the checksums the build recorded."""
