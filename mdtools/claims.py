"""Deprecated alias of mdtools.analysis.article_claims: old imports keep working, with a DeprecationWarning."""

from .deprecation import alias_getattr

__getattr__ = alias_getattr(__name__, "mdtools.analysis.article_claims")
del alias_getattr
