"""Deprecated alias of mdtools.analysis.plots (its table helpers: analysis.tables): old imports keep working, with a DeprecationWarning."""

from .deprecation import alias_getattr

__getattr__ = alias_getattr(__name__, "mdtools.analysis.tables", "mdtools.analysis.plots")
del alias_getattr
