"""Step `remove-legacy-addons`: delete Istio's old observability addons, and nothing else.

What may be deleted is data, `patches/legacy-addons.yaml`: one row per object
with its kind, name, namespace and the labels it must carry. Matching is exact
on all of them, so look-alikes (another namespace, another kind, the same name
without the labels, Prometheus Operator objects) survive.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kymamesh.cluster import Cluster, Obj, Ref
from kymamesh.errors import UsageError
from kymamesh.patching import Change, StepContext
from kymamesh.resources import load_yaml, patches_dir


@dataclass(frozen=True)
class AddonObject:
    """One object of a legacy addon that kymamesh may delete."""

    addon: str
    kind: str
    api_version: str
    name: str
    namespace: str  # "" when cluster-scoped
    labels: Mapping[str, str]

    def matches(self, obj: Mapping[str, Any]) -> bool:
        meta = obj.get("metadata") or {}
        if obj.get("kind") != self.kind or meta.get("name") != self.name:
            return False
        if (meta.get("namespace") or "") != self.namespace:
            return False
        live_labels = meta.get("labels") or {}
        return all(live_labels.get(k) == v for k, v in self.labels.items())


def load_catalog(path: Path) -> tuple[AddonObject, ...]:
    """Read and check the catalog; a malformed row is a usage error naming it."""
    try:
        raw = load_yaml(path)
    except OSError as exc:
        raise UsageError(f"cannot read the addon catalog {path}: {exc.strerror}") from None
    rows = raw.get("objects") if isinstance(raw, Mapping) else None
    if not isinstance(rows, list):
        raise UsageError(f"the addon catalog {path} must have a list `objects`")
    catalog = []
    for number, row in enumerate(rows, start=1):
        try:
            labels = row.get("labels") or {}
            if not isinstance(labels, Mapping):
                raise TypeError("labels must be a map")
            catalog.append(
                AddonObject(
                    addon=str(row["addon"]),
                    kind=str(row["kind"]),
                    api_version=str(row["apiVersion"]),
                    name=str(row["name"]),
                    namespace=str(row.get("namespace") or ""),
                    labels={str(k): str(v) for k, v in labels.items()},
                )
            )
        except (KeyError, TypeError, AttributeError) as exc:
            raise UsageError(
                f"the addon catalog {path}: row {number} is malformed ({exc})",
                hint="each row needs addon, kind, apiVersion, name, namespace and labels",
            ) from None
    return tuple(catalog)


def legacy_matches(
    catalog: Iterable[AddonObject], live: Iterable[Obj]
) -> list[tuple[AddonObject, Obj]]:
    """The live objects that match a catalog row (the first matching row names the addon).

    Objects already being deleted are left out: they are on their way.
    """
    rows = list(catalog)
    found = []
    for obj in live:
        if (obj.get("metadata") or {}).get("deletionTimestamp"):
            continue
        row = next((r for r in rows if r.matches(obj)), None)
        if row is not None:
            found.append((row, obj))
    return found


def _catalog_path(params: Mapping[str, Any]) -> Path:
    name = str(params.get("catalog") or "legacy-addons.yaml")
    path = Path(name)
    return path if path.is_absolute() else patches_dir() / path


def _labels_text(labels: Mapping[str, str]) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(labels.items())) or "none"


class RemoveAddonsStep:
    """Delete the catalog's objects that are present, each matched exactly."""

    PARAMS = frozenset({"catalog"})

    def preflight(self, ctx: StepContext) -> str | None:
        load_catalog(_catalog_path(ctx.params))
        return None

    def check(self, ctx: StepContext) -> list[Change]:
        catalog = load_catalog(_catalog_path(ctx.params))
        groups: dict[tuple[str, str, str], list[AddonObject]] = {}
        for row in catalog:
            groups.setdefault((row.api_version, row.kind, row.namespace), []).append(row)
        changes = []
        seen: set[Ref] = set()
        for (api_version, kind, namespace), rows in sorted(groups.items()):
            names = {r.name for r in rows}
            live = [
                o
                for o in ctx.cluster.list(api_version, kind, namespace or None)
                if (o.get("metadata") or {}).get("name") in names
            ]
            for row, obj in legacy_matches(rows, live):
                ref = Ref(api_version, kind, row.name, row.namespace)
                if ref in seen:
                    continue
                seen.add(ref)
                changes.append(_delete_change(row, ref, obj))
        return changes


def _delete_change(row: AddonObject, ref: Ref, obj: Obj) -> Change:
    labels = (obj.get("metadata") or {}).get("labels") or {}

    def apply(cluster: Cluster) -> None:
        cluster.delete(ref, propagation="Background")

    return Change(
        target=f"{row.addon} addon",
        summary=f"{ref} deleted",
        apply=apply,
        diff=f"- {ref} (labels: {_labels_text(labels)}; matched {row.addon} addon)",
    )
