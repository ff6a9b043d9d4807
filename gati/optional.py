"""Optional dependencies: a command that needs one says which package to install, instead of
failing with a traceback or, worse, vanishing from the CLI."""
from __future__ import annotations

import importlib
from types import ModuleType

from gati.errors import MissingDependency


def require(module: str, package: str, purpose: str) -> ModuleType:
    """Import `module`, or raise MissingDependency naming `package` and what needs it. Only the
    module itself missing is translated: a module that is there but fails to import is a bug to see."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name is None or e.name.split(".")[0] != module.split(".")[0]:
            raise
        raise MissingDependency(f"{purpose} needs the Python package {package!r}, which is not installed: "
                                f"pip install '{package}'") from e
