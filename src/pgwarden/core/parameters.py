"""PostgreSQL parameter values checked against the server's own catalogue (`pg_settings`) before
they are stored: a value PostgreSQL would refuse (`max_connections: lots`) left every node that
restarted with it looping on `pg_ctl start`.

Pure: the rows are read elsewhere (postgres/sql.py `setting_specs`); this module only says, for a
proposed `{name: value}`, what PostgreSQL would refuse and why. The rules follow PostgreSQL's own
parsing (guc.c: parse_bool, parse_int, parse_real, convert_to_base_unit): booleans by any unique
prefix of true/false/yes/no/on/off or 1/0; numbers in decimal or hex (integers also octal)
with an optional unit of the parameter's kind, converted to its base unit and rounded; enums
case-insensitively, including the hidden boolean spellings PostgreSQL accepts for enums that have
`on` and `off`; the range inclusive. A name the server does not know is refused unless it is a
custom `prefix.name` (an extension's, which PostgreSQL accepts as a placeholder).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from pgwarden.core.settings import ParamValue


@dataclass(frozen=True)
class SettingSpec:
    """One pg_settings row, as far as checking a value needs it."""

    name: str
    vartype: str  # bool, integer, real, string, enum
    unit: str | None = None  # the base unit: B, kB, 8kB, MB, ms, s, min, ...
    min_val: str | None = None
    max_val: str | None = None
    enumvals: tuple[str, ...] = ()


_MEMORY = {"B": 1, "kB": 1024, "MB": 1024 ** 2, "GB": 1024 ** 3, "TB": 1024 ** 4}
_TIME = {"us": 0.001, "ms": 1.0, "s": 1000.0, "min": 60_000.0, "h": 3_600_000.0, "d": 86_400_000.0}
_BOOL_WORDS = {"true": True, "false": False, "yes": True, "no": False, "on": True, "off": False,
               "1": True, "0": False}
_NUMBER = re.compile(r"^\s*(?P<num>[+-]?(?:0[xX][0-9a-fA-F]+|\d+\.?\d*(?:[eE][+-]?\d+)?"
                     r"|\.\d+(?:[eE][+-]?\d+)?))\s*(?P<unit>[A-Za-z]*)\s*$")


def parse_bool(text: str) -> bool | None:
    """PostgreSQL's parse_bool: a unique prefix of a word (`of`, not `o`), or 1/0; None if not."""
    word = text.strip().lower()
    if not word:
        return None
    matches = {v for w, v in _BOOL_WORDS.items()
               if w.startswith(word) and (len(word) >= 2 or w[0] != "o")}
    return matches.pop() if len(matches) == 1 else None


def _unit_scale(unit: str) -> tuple[dict[str, float], float] | None:
    """The table a base unit belongs to and its size in that table's smallest unit."""
    m = re.fullmatch(r"(\d*)([A-Za-z]+)", unit)
    if m is None:
        return None
    count = int(m.group(1) or 1)
    for table in (_MEMORY, _TIME):
        if m.group(2) in table:
            return {k: float(v) for k, v in table.items()}, count * float(table[m.group(2)])
    return None


def _units_hint(spec: SettingSpec) -> str:
    scale = _unit_scale(spec.unit or "")
    if scale is None:
        return "a number without a unit"
    return f"a number in {spec.unit}, or with a unit ({', '.join(scale[0])})"


def _number(spec: SettingSpec, value: ParamValue) -> float | str:
    """The value in the parameter's base unit, or why it is not a number PostgreSQL takes."""
    if isinstance(value, bool):
        return f"expected {_units_hint(spec)}, got a boolean"
    if isinstance(value, (int, float)):
        return float(value)
    m = _NUMBER.match(value)
    if m is None:
        return f"expected {_units_hint(spec)}"
    num_text, unit = m.group("num"), m.group("unit")
    is_hex = num_text.lstrip("+-").lower().startswith("0x")
    if is_hex or (spec.vartype == "integer" and re.fullmatch(r"[+-]?0[0-7]+", num_text)):
        num = float(int(num_text, 16 if is_hex else 8))  # strtol and strtod both read hex
    else:
        num = float(num_text)
    if not unit:
        return num
    scale = _unit_scale(spec.unit or "")
    if scale is None:
        return f"this parameter takes no unit, got '{unit}'"
    table, base = scale
    if unit not in table:
        return f"unknown unit '{unit}' (valid: {', '.join(table)})"
    return num * table[unit] / base


def _check_number(spec: SettingSpec, value: ParamValue) -> str | None:
    num = _number(spec, value)
    if isinstance(num, str):
        return num
    if not math.isfinite(num):
        return "expected a finite number"
    if spec.vartype == "integer":
        num = float(round(num))  # PostgreSQL rounds a converted (or fractional) value: rint()
    unit = f" (in units of {spec.unit})" if spec.unit else ""
    low = float(spec.min_val) if spec.min_val is not None else None
    high = float(spec.max_val) if spec.max_val is not None else None
    if (low is not None and num < low) or (high is not None and num > high):
        shown = int(num) if num.is_integer() else num
        return f"{shown} is outside the range {spec.min_val} .. {spec.max_val}{unit}"
    return None


# Values PostgreSQL accepts but hides from pg_settings.enumvals (guc_tables.c marks them hidden):
# old names kept for compatibility. The message levels' were found by the cross-check against a
# real server (tests/postgres/test_parameter_specs.py); wal_level's are postmaster-only, so
# set_config cannot test them, and come from PostgreSQL's documentation.
_HIDDEN = {
    "wal_level": ("archive", "hot_standby"),
    "client_min_messages": ("debug", "info"),
    "icu_validation_level": ("debug", "info"),
    "log_min_messages": ("debug",),
    "log_min_error_statement": ("debug",),
}


def _check_enum(spec: SettingSpec, value: ParamValue) -> str | None:
    allowed = {v.lower() for v in (*spec.enumvals, *_HIDDEN.get(spec.name.lower(), ()))}
    text = ("on" if value else "off") if isinstance(value, bool) else str(value).strip().lower()
    if text in allowed:
        return None
    flag = parse_bool(text) if {"on", "off"} <= allowed and text in _BOOL_WORDS else None
    if flag is not None:
        return None
    return f"expected one of {', '.join(spec.enumvals)}"


def _check(spec: SettingSpec, value: ParamValue) -> str | None:
    if spec.vartype == "bool":
        if isinstance(value, bool) or (isinstance(value, int) and value in (0, 1)):
            return None
        if isinstance(value, str) and parse_bool(value) is not None:
            return None
        return "expected a boolean (on, off, true, false, yes, no, 1, 0)"
    if spec.vartype in ("integer", "real"):
        return _check_number(spec, value)
    if spec.vartype == "enum":
        return _check_enum(spec, value)
    return None  # string: PostgreSQL takes any text (the node file's own checks refuse the dangerous)


def parameter_errors(specs: Iterable[SettingSpec], proposed: Mapping[str, ParamValue]) -> list[str]:
    """One line for each proposed value PostgreSQL would refuse, naming the parameter, the value
    and what is allowed; empty when every value would be taken."""
    by_name = {s.name.lower(): s for s in specs}
    errors: list[str] = []
    for name, value in proposed.items():
        spec = by_name.get(name.lower())
        if spec is None:
            if "." not in name:
                errors.append(f"parameters.{name}: PostgreSQL has no parameter '{name}'")
            continue
        if (problem := _check(spec, value)) is not None:
            errors.append(f"parameters.{name}: {value!r} is refused: {problem}")
    return errors


def changed_parameters(before: Mapping[str, ParamValue], after: Mapping[str, ParamValue]
                       ) -> dict[str, ParamValue]:
    """The parameters `after` adds or changes (removing one needs no check)."""
    return {k: v for k, v in after.items() if k not in before or before[k] != v}
