"""Deprecated alias of mdtools.sweep (records, run, estimate, runner): old imports keep working, with a DeprecationWarning."""

from .deprecation import alias_getattr

__getattr__ = alias_getattr(__name__, "mdtools.sweep.records", "mdtools.sweep.run", "mdtools.sweep.estimate", "mdtools.sweep.runner")
del alias_getattr
