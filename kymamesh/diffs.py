"""Diffs between live objects and what kymamesh wants, for --dry-run and summaries."""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Any

import yaml

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


def project(live: Any, desired: Any) -> Any:
    """The part of `live` that `desired` talks about (keys of maps; lists whole)."""
    if isinstance(desired, Mapping) and isinstance(live, Mapping):
        return {k: project(live[k], v) for k, v in desired.items() if k in live}
    return live


def to_yaml(obj: Any) -> str:
    return yaml.safe_dump(obj, sort_keys=True, default_flow_style=False)


def unified(before: Any, after: Any, label: str) -> str:
    """A unified diff of two YAML renderings; '' when equal."""
    a = to_yaml(before).splitlines() if before not in (None, {}) else []
    b = to_yaml(after).splitlines() if after not in (None, {}) else []
    return "\n".join(
        difflib.unified_diff(a, b, fromfile=f"live {label}", tofile=f"wanted {label}", lineterm="")
    )


def object_diff(live: Mapping[str, Any] | None, desired: Mapping[str, Any], label: str) -> str:
    """Diff of the fields `desired` sets against the same fields live."""
    wanted = clean(desired)
    current = project(clean(live), wanted) if live else None
    return unified(current, wanted, label)
