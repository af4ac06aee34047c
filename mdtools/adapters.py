"""Deprecated alias of mdtools.models.denoisers (moved in the models/ redesign): old imports keep working, with a DeprecationWarning."""

from .deprecation import alias_getattr

__getattr__ = alias_getattr(__name__, "mdtools.models.denoisers")
del alias_getattr
