"""Deprecated alias of mdtools.models.arch (moved in the models/ redesign): old imports keep working, with a DeprecationWarning."""

from .deprecation import alias_getattr

__getattr__ = alias_getattr(__name__, "mdtools.models.arch")
del alias_getattr
