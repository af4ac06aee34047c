"""Old module paths kept as aliases: a module-level __getattr__ that warns and forwards to the new modules."""

from __future__ import annotations

import importlib
import warnings
from typing import Any, Callable


def alias_getattr(old: str, *new: str) -> Callable[[str], Any]:
    """The `__getattr__` of the deprecated module `old`: a name is taken from the first of the
    modules `new` that has it (list the defining modules before those that import the name),
    with a DeprecationWarning naming that module."""

    def __getattr__(name: str) -> Any:
        if not name.startswith("__"):
            for target in new:
                mod = importlib.import_module(target)
                if hasattr(mod, name):
                    warnings.warn(f"{old} is deprecated; use {target}", DeprecationWarning, stacklevel=2)
                    return getattr(mod, name)
        raise AttributeError(f"module {old!r} has no attribute {name!r}")

    return __getattr__
