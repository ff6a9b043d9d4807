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


class WorkloadError(GatiError, ValueError):
    """A workload spec, parameter or trace file that cannot make a request stream (names the parameter or line)."""


class GuaranteeError(GatiError, ValueError):
    """A live-agreement or fallback argument out of range, or an observation that cannot happen."""


class AddressInUse(GatiError):
    """A service's host:port is taken (another process listens there)."""


class MissingDependency(GatiError, ImportError):
    """An optional package a command needs is not installed; the message names the pip package."""
