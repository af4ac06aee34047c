"""Errors and the small validators shared by every entry point.

Every check names the offending field and a valid value, so a user fixing a YAML file or a
CLI call knows what to type without reading the source.
"""

from __future__ import annotations

from typing import Any, Iterable


class ConfigError(ValueError):
    """A bad input, found before any model is loaded or any compute starts."""


class MetricUnavailable(RuntimeError):
    """A metric cannot be computed here (e.g. pretrained weights are missing).

    Public functions catch it and return `Score(nan, reason=...)`; it is raised only by the
    backbone loaders, so a caller that wants a hard failure can call those directly.
    """


def nearest_multiples(value: int, multiple: int) -> tuple[int, int]:
    """The multiples of `multiple` just below and just above `value` (below is >= multiple)."""
    below = max(multiple, (value // multiple) * multiple)
    above = below + multiple if below >= value else -(-value // multiple) * multiple
    return below, above


def check_positive_int(field: str, value: Any, *, example: int = 512) -> int:
    """`value` must be an int > 0 (bools are refused: True is not a size); the message suggests `example`."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{field} must be a positive integer (e.g. {example}), got {value!r}")
    if value <= 0:
        raise ConfigError(f"{field} must be > 0 (e.g. {example}), got {value}")
    return value


def check_multiple(field: str, value: int, multiple: int, *, what: str = "the VAE scale factor") -> int:
    """`value` must be a positive multiple of `multiple`; the message suggests the nearest ones."""
    check_positive_int(field, value)
    if value % multiple:
        lo, hi = nearest_multiples(value, multiple)
        raise ConfigError(
            f"{field}={value} is not a multiple of {what} ({multiple}); "
            f"use {lo} or {hi}"
        )
    return value


def check_choice(field: str, value: Any, choices: Iterable[Any]) -> Any:
    """`value` must be one of `choices`; the message lists them."""
    choices = list(choices)
    if value not in choices:
        raise ConfigError(f"{field}={value!r} is not valid; choose one of {choices}")
    return value
