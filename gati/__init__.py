"""GATI: prediction serving with learned caches."""

__version__ = "0.1.0"
