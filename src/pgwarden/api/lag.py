"""Parse replication-lag limits as Patroni's health checks take them (`?lag=16MB`): a number of
bytes, optionally with a 1024-based unit B, kB, MB, GB or TB (any case)."""

from __future__ import annotations

import re
from fractions import Fraction

_UNITS = {"": 1, "b": 1, "kb": 1024, "mb": 1024**2, "gb": 1024**3, "tb": 1024**4}
_PATTERN = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", re.ASCII)
# Longer than any sane limit; keeps pathological query strings from costing anything.
_MAX_LEN = 64


def parse_lag(text: str) -> int:
    """'16kB' -> 16384, '1048576' -> 1048576. Fractions of a unit round down to whole bytes."""
    if len(text) > _MAX_LEN:
        raise ValueError(f"lag value is too long ({len(text)} characters)")
    m = _PATTERN.fullmatch(text)
    if m is None:
        raise ValueError(
            f"invalid lag value '{text}': expected a non-negative number of bytes, "
            f"optionally with a unit (B, kB, MB, GB, TB), e.g. 16MB"
        )
    number, unit = m.groups()
    mult = _UNITS.get(unit.lower())
    if mult is None:
        raise ValueError(f"invalid lag unit '{unit}' in '{text}': use B, kB, MB, GB or TB")
    if "." in number and mult == 1:
        raise ValueError(f"invalid lag value '{text}': bytes must be a whole number")
    return int(Fraction(number) * mult)  # exact: no float or decimal-precision rounding
