"""Deprecated alias of mdtools.analysis.report (its table helpers: analysis.tables): old imports keep working, with a DeprecationWarning."""

from .deprecation import alias_getattr

__getattr__ = alias_getattr(__name__, "mdtools.analysis.tables", "mdtools.analysis.report")
del alias_getattr
