"""Deprecated alias of mdtools.sweep.config: old imports keep working, with a DeprecationWarning."""

from .deprecation import alias_getattr

__getattr__ = alias_getattr(__name__, "mdtools.sweep.config")
del alias_getattr
