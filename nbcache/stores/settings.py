"""Checks for the numbers users configure: each raises a ConfigurationError naming the setting.

A setting that cannot work (a zero or negative timeout, NaN, a string where a number belongs,
``None`` where a bound is needed) must fail where it is given, not later as a cache that never
hits while warnings blame the server. Used by every layer that takes such a setting.
"""

from __future__ import annotations

import math

from nbcache.exceptions import ConfigurationError


def _number(setting: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        raise ConfigurationError(
            f"{setting}={value!r} is not a number of seconds; give e.g. {setting}=2.0"
        )
    return float(value)


def wait_seconds(setting: str, value: object) -> float:
    """A bound on waiting (``timeout``, ``connect_timeout``): finite seconds above 0."""
    seconds = _number(setting, value)
    if not 0 < seconds < math.inf:
        raise ConfigurationError(
            f"{setting}={value!r} does not bound a wait; give a finite number of seconds "
            f"above 0, e.g. {setting}=2.0"
        )
    return seconds


def expiry_seconds(setting: str, value: object) -> float:
    """How long entries live (``default_timeout``): finite seconds, 0 meaning never expires."""
    seconds = _number(setting, value)
    if not 0 <= seconds < math.inf:
        raise ConfigurationError(
            f"{setting}={value!r} is not a lifetime; give 0 (never expires) or a finite "
            "positive number of seconds"
        )
    return seconds


def count(setting: str, value: object, minimum: int) -> int:
    """A whole number of at least ``minimum`` (a bound on entries, bytes, connections)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigurationError(f"{setting}={value!r} must be a whole number >= {minimum}")
    return value
