"""Memory sizes as users write them ("512MB", "0.5GiB", "800000000") and back for display.

Decimal suffixes (k, K, KB, M, MB, G, GB, T, TB) are powers of 1000; binary suffixes
(Ki, KiB, Mi, MiB, Gi, GiB, Ti, TiB) are powers of 1024; a bare integer is bytes. Suffixes are
case-insensitive ("512mb" == "512MB"): nobody budgets in millibits.
"""

from __future__ import annotations

import math
import re

from .errors import UserError

_UNITS = {
    "": 1, "b": 1,
    "k": 1000, "kb": 1000, "m": 1000**2, "mb": 1000**2,
    "g": 1000**3, "gb": 1000**3, "t": 1000**4, "tb": 1000**4,
    "ki": 1024, "kib": 1024, "mi": 1024**2, "mib": 1024**2,
    "gi": 1024**3, "gib": 1024**3, "ti": 1024**4, "tib": 1024**4,
}
_PATTERN = re.compile(r"^\s*([+-]?[0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([A-Za-z]*)\s*$")

HELP = ("sizes take decimal units (KB, MB, GB = 1000^n bytes; K, M, G likewise) or binary units "
        "(KiB, MiB, GiB = 1024^n bytes); a bare number is bytes")


def parse_size(text: str | int, *, what: str = "memory budget") -> int:
    """Return the number of bytes that `text` names; raise UserError on anything else."""
    if isinstance(text, int) and not isinstance(text, bool):
        value_bytes = text
    else:
        match = _PATTERN.match(str(text))
        unit = match.group(2).lower() if match else None
        if match is None or unit not in _UNITS:
            raise UserError(
                f"The {what} {text!r} is not a size I can read. Write a positive number with an "
                f"optional unit, for example 512MB, 0.5GiB, 1.5G or 800000000; {HELP}.")
        value = float(match.group(1))
        value_bytes = value * _UNITS[unit]
        if not math.isfinite(value_bytes):
            raise UserError(f"The {what} {text!r} is not a finite size; give e.g. 512MB.")
        value_bytes = int(round(value_bytes))
    if value_bytes < 0:
        raise UserError(
            f"The {what} {text!r} is negative; a size must be larger than zero bytes. Give e.g. "
            f"512MB or 1GiB.")
    if value_bytes == 0:
        raise UserError(
            f"The {what} {text!r} must be larger than zero bytes; give e.g. 512MB or 1GiB.")
    return value_bytes


def format_size(num_bytes: float) -> str:
    """Human-readable decimal size with 3 significant figures ("512 MB", "1.43 GB")."""
    sign = "-" if num_bytes < 0 else ""
    value = abs(float(num_bytes))
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if value >= scale:
            return f"{sign}{value / scale:.3g} {unit}"
    return f"{sign}{value:.0f} B"
