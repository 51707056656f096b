"""Kubernetes quantities and protobuf durations, compared by value.

A re-run must write nothing, so "1Gi" and "1024Mi", or "1" and "1000m", must
count as equal: live objects are rarely spelled the way kymamesh spells them.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from kymamesh.adapters.cluster import parse_quantity
from kymamesh.errors import UsageError

_HINT = "write e.g. 128Mi, 1Gi, 100m or 2"


def quantity(value: Any) -> Decimal:
    """The value of a Kubernetes quantity ("1Gi", "500m", 2, "1e3").

    The parsing is the official client's (`kubernetes.utils.parse_quantity`, through
    the cluster adapter); this
    adds what it lets through but the API server refuses: booleans, blanks inside,
    digit separators, infinities and NaN.
    """
    if isinstance(value, bool) or value is None:
        raise UsageError(f"'{value}' is not a Kubernetes quantity", hint=_HINT)
    text = str(value).strip()  # a float by its shortest spelling: 0.1, not 0.1000000000000000055
    if not text or any(c.isspace() or c == "_" for c in text):
        raise UsageError(f"'{value}' is not a Kubernetes quantity", hint=_HINT)
    try:
        number = parse_quantity(text)
    except (ValueError, ArithmeticError):
        raise UsageError(f"'{value}' is not a Kubernetes quantity", hint=_HINT) from None
    if not number.is_finite():
        raise UsageError(f"'{value}' is not a Kubernetes quantity", hint=_HINT)
    return number


def same_quantity(a: Any, b: Any) -> bool:
    if isinstance(a, str) and isinstance(b, str):
        return _same_text_quantity(a, b)
    try:
        return quantity(a) == quantity(b)
    except UsageError:
        return str(a) == str(b)


@functools.lru_cache(maxsize=1024)
def _same_text_quantity(a: str, b: str) -> bool:
    """`same_quantity` of two spellings, remembered: every sidecar of a cluster is compared
    with the same few values."""
    if a == b:
        return True
    try:
        return quantity(a) == quantity(b)
    except UsageError:
        return False


def normal_resources(resources: Any) -> dict[str, dict[str, Decimal | str]]:
    """A resources block ({requests, limits, ...}) with every quantity as a number.

    Empty sections count as absent; a value that is not a quantity is kept as text,
    so that it differs from any wanted value instead of failing the comparison.
    """
    result: dict[str, dict[str, Decimal | str]] = {}
    if not isinstance(resources, Mapping):
        return result
    for section, entries in resources.items():
        if not isinstance(entries, Mapping) or not entries:
            continue
        normal: dict[str, Decimal | str] = {}
        for name, value in entries.items():
            if value is None:
                continue
            try:
                normal[str(name)] = quantity(value)
            except UsageError:
                normal[str(name)] = str(value)
        if normal:
            result[str(section)] = normal
    return result


def same_resources(a: Any, b: Any) -> bool:
    return normal_resources(a) == normal_resources(b)


_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_DURATION_UNITS = {
    "ns": Decimal("1e-9"),
    "us": Decimal("1e-6"),
    "µs": Decimal("1e-6"),
    "ms": Decimal("1e-3"),
    "s": Decimal(1),
    "m": Decimal(60),
    "h": Decimal(3600),
}


def duration(value: Any) -> Decimal:
    """Seconds in a duration as the mesh config takes it ("5s", "0.5s", "1m30s", "250ms")."""
    text = str(value).strip()
    pos = 0
    total = Decimal(0)
    for match in _DURATION_PART.finditer(text):
        if match.start() != pos:
            break
        total += Decimal(match[1]) * _DURATION_UNITS[match[2]]
        pos = match.end()
    if pos != len(text) or not text:
        raise UsageError(f"'{value}' is not a duration", hint="write e.g. 5s, 500ms or 1m")
    return total


def same_duration(a: Any, b: Any) -> bool:
    try:
        return duration(a) == duration(b)
    except UsageError:
        return str(a) == str(b)
