"""Typed errors. Every user-facing failure is one of these, with a message naming what is wrong."""


class GatiError(Exception):
    """Base class of all GATI errors."""


class InvalidInput(GatiError, ValueError):
    """A request tensor or image that the model cannot take (shape, dtype, NaN, size)."""


class DatasetError(GatiError):
    """A data set that is missing or laid out differently from what was expected."""


class CheckpointError(GatiError):
    """A checkpoint that does not fit the architecture, or whose hash changed."""


class BundleError(GatiError):
    """A bundle folder that is missing, incomplete or corrupt."""


class Cancelled(GatiError):
    """The request was cancelled between two stages."""


class AddressInUse(GatiError):
    """A service's host:port is taken (another process listens there)."""


class MissingDependency(GatiError, ImportError):
    """An optional package a command needs is not installed; the message names the pip package."""
