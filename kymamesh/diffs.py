"""Diffs between live objects and what kymamesh wants, for --dry-run and summaries.

A Secret's values never reach a diff: `data` and `stringData` are replaced by
one marker per key that says whether the key is new, changed or unchanged
(found by comparing the decoded bytes here, never shown, not even as a hash).
"""

from __future__ import annotations

import base64
import binascii
import difflib
import hmac
from collections.abc import Mapping
from typing import Any

from kymamesh.adapters import yamlfast

_NOISE_META = ("managedFields", "resourceVersion", "uid", "generation", "creationTimestamp")


def clean(obj: Mapping[str, Any] | None) -> dict[str, Any]:
    """An object without status and server-set metadata."""
    if not obj:
        return {}
    result = {k: v for k, v in obj.items() if k != "status"}
    meta = dict(result.get("metadata") or {})
    for key in _NOISE_META:
        meta.pop(key, None)
    annotations = {
        k: v
        for k, v in (meta.get("annotations") or {}).items()
        if k != "kubectl.kubernetes.io/last-applied-configuration"
    }
    if annotations:
        meta["annotations"] = annotations
    else:
        meta.pop("annotations", None)
    result["metadata"] = meta
    return result


REDACTED = "(redacted)"
REDACTED_NEW = "(redacted, new)"
REDACTED_CHANGED = "(redacted, changed)"
REDACTED_UNCHANGED = "(redacted, unchanged)"
_SECRET_VALUE_KEYS = ("data", "stringData")


def is_secret(obj: Mapping[str, Any] | None) -> bool:
    return obj is not None and obj.get("kind") == "Secret" and obj.get("apiVersion") == "v1"


def secret_values(obj: Mapping[str, Any] | None) -> dict[str, bytes]:
    """A Secret's values as bytes, key by key: `data` decoded, `stringData` over it
    (as the API server merges them). A `data` value that is not base64 counts as text."""
    values: dict[str, bytes] = {}
    if not obj:
        return values
    data = obj.get("data")
    if isinstance(data, Mapping):
        for key, value in data.items():
            text = "" if value is None else str(value)
            try:
                values[str(key)] = base64.b64decode(text, validate=True)
            except (binascii.Error, ValueError):
                values[str(key)] = text.encode()
    string_data = obj.get("stringData")
    if isinstance(string_data, Mapping):
        for key, value in string_data.items():
            values[str(key)] = ("" if value is None else str(value)).encode()
    return values


def secret_markers(
    live: Mapping[str, bytes | None] | None, wanted: Mapping[str, bytes | None]
) -> tuple[dict[str, str] | None, dict[str, str]]:
    """The `data` a diff shows of a live and a wanted Secret, one marker per key.

    A wanted value of None is one made only when the change is applied (a new key
    pair): it always differs. Keys only live are left out, as a diff of the fields
    kymamesh sets leaves them out. Unchanged keys show the same marker on both sides,
    so that an unchanged Secret diffs as nothing.
    """
    live_view: dict[str, str] = {}
    wanted_view: dict[str, str] = {}
    for key, value in wanted.items():
        if live is None or key not in live:
            wanted_view[key] = REDACTED_NEW
            continue
        before = live[key]
        same = value is not None and before is not None and hmac.compare_digest(before, value)
        live_view[key] = REDACTED_UNCHANGED if same else REDACTED
        wanted_view[key] = REDACTED_UNCHANGED if same else REDACTED_CHANGED
    return (None if live is None else live_view), wanted_view


def redact_secret_pair(
    live: Mapping[str, Any] | None, wanted: Mapping[str, Any]
) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """A live and a wanted Secret with their values replaced by `secret_markers`."""
    live_view, wanted_view = secret_markers(
        secret_values(live) if live is not None else None, secret_values(wanted)
    )
    after = {k: v for k, v in wanted.items() if k not in _SECRET_VALUE_KEYS}
    if wanted_view:
        after["data"] = wanted_view
    if live is None:
        return None, after
    before = {k: v for k, v in live.items() if k not in _SECRET_VALUE_KEYS}
    if live_view:
        before["data"] = live_view
    return before, after


def scrub_secrets(value: Any) -> Any:
    """Any Secret nested in `value` (a List's items, say) with every value redacted."""
    if isinstance(value, Mapping):
        if is_secret(value):
            return {
                k: ({str(n): REDACTED for n in v} if isinstance(v, Mapping) else REDACTED)
                if k in _SECRET_VALUE_KEYS
                else v
                for k, v in value.items()
            }
        return {k: scrub_secrets(v) for k, v in value.items()}
    if isinstance(value, list):
        return [scrub_secrets(v) for v in value]
    return value


def project(live: Any, desired: Any) -> Any:
    """The part of `live` that `desired` talks about (keys of maps; lists whole)."""
    if isinstance(desired, Mapping) and isinstance(live, Mapping):
        return {k: project(live[k], v) for k, v in desired.items() if k in live}
    return live


def to_yaml(obj: Any) -> str:
    return yamlfast.dump(obj)


def yaml_lines(obj: Any) -> list[str]:
    """The YAML rendering `unified` compares (none for None and {})."""
    return to_yaml(obj).splitlines() if obj not in (None, {}) else []


def unified(before: Any, after: Any, label: str) -> str:
    """A unified diff of two YAML renderings; '' when equal."""
    return unified_lines(yaml_lines(before), yaml_lines(after), label)


def unified_lines(a: list[str], b: list[str], label: str) -> str:
    """`unified` of renderings made before (see yaml_lines)."""
    return "\n".join(
        difflib.unified_diff(a, b, fromfile=f"live {label}", tofile=f"wanted {label}", lineterm="")
    )


def object_diff(live: Mapping[str, Any] | None, desired: Mapping[str, Any], label: str) -> str:
    """Diff of the fields `desired` sets against the same fields live."""
    wanted = clean(desired)
    current = clean(live) if live else None
    if is_secret(wanted):
        current, wanted = redact_secret_pair(current, wanted)
    else:
        current, wanted = scrub_secrets(current), scrub_secrets(wanted)
    return unified(project(current, wanted) if current else None, wanted, label)
