"""Step `remove-legacy-addons`: delete Istio's old observability addons, and nothing else.

What may be deleted is data, `patches/legacy-addons.yaml`: one row per object
with its kind, name, namespace, the labels it must carry and, where Istio's
object had no labels of its own, the shape that tells it from a user's object of
the same name (a Service's selector and ports, a ConfigMap's keys). Matching is
exact on all of them, so look-alikes (another namespace, another kind, the same
name without the labels or the shape, Prometheus Operator objects) survive.

A PersistentVolumeClaim holds data (Grafana's dashboards and users): it is never
deleted unless the step's `deleteVolumeClaims` parameter says so for this run;
otherwise a note names it and how to delete it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from kymamesh.adapters.cluster import Cluster, Obj, Ref
from kymamesh.errors import UsageError
from kymamesh.resources import load_yaml, patches_dir
from kymamesh.steps.base import ONCE_ISTIOD_ANSWERS, Change, StepContext


@dataclass(frozen=True)
class AddonObject:
    """One object of a legacy addon that kymamesh may delete."""

    addon: str
    kind: str
    api_version: str
    name: str
    namespace: str  # "" when cluster-scoped
    labels: Mapping[str, str]
    selector: Mapping[str, str] | None = None  # a Service's spec.selector, exactly
    ports: tuple[int, ...] = ()  # ports a Service must serve (among others)
    data_keys: frozenset[str] | None = None  # a ConfigMap's keys: a non-empty subset

    @property
    def holds_data(self) -> bool:
        """Deleting it loses data: only with the user's explicit yes."""
        return self.kind == "PersistentVolumeClaim"

    def matches(self, obj: Mapping[str, Any]) -> bool:
        meta = obj.get("metadata") or {}
        if obj.get("kind") != self.kind or meta.get("name") != self.name:
            return False
        if (meta.get("namespace") or "") != self.namespace:
            return False
        live_labels = meta.get("labels") or {}
        if not all(live_labels.get(k) == v for k, v in self.labels.items()):
            return False
        spec = obj.get("spec") or {}
        if self.selector is not None and dict(spec.get("selector") or {}) != self.selector:
            return False
        served = {p.get("port") for p in spec.get("ports") or [] if isinstance(p, Mapping)}
        if not set(self.ports) <= served:
            return False
        if self.data_keys is not None:
            keys = {*(obj.get("data") or {}), *(obj.get("binaryData") or {})}
            if not keys or not keys <= self.data_keys:
                return False
        return True

    def shape(self) -> str:
        """What besides kind, name and namespace the row matched on, in words."""
        parts = [f"labels {_labels_text(self.labels)}"] if self.labels else []
        if self.selector is not None:
            parts.append(f"selector {_labels_text(self.selector)}")
        if self.ports:
            parts.append("port " + ", ".join(map(str, self.ports)))
        if self.data_keys is not None:
            parts.append("its data keys")
        return "; ".join(parts) or "name only"


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
            catalog.append(_row(row))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise UsageError(
                f"the addon catalog {path}: row {number} is malformed ({exc})",
                hint="each row needs addon, kind, apiVersion, name, namespace and labels; "
                "optional: selector (a map), ports (numbers), dataKeys (names)",
            ) from None
        if not (catalog[-1].labels or catalog[-1].selector or catalog[-1].data_keys):
            raise UsageError(
                f"the addon catalog {path}: row {number} ({catalog[-1].kind} "
                f"{catalog[-1].name}) would match any object of that name",
                hint="give the row labels, or a selector or dataKeys that only the addon's "
                "object has",
            )
    return tuple(catalog)


def _string_map(value: Any, what: str) -> dict[str, str]:
    if not isinstance(value, Mapping):
        raise TypeError(f"{what} must be a map")
    return {str(k): str(v) for k, v in value.items()}


def _row(row: Mapping[str, Any]) -> AddonObject:
    selector = row.get("selector")
    ports = row.get("ports") or []
    data_keys = row.get("dataKeys")
    if not isinstance(ports, list) or not all(
        isinstance(p, int) and not isinstance(p, bool) for p in ports
    ):
        raise TypeError("ports must be a list of port numbers")
    if data_keys is not None and not (isinstance(data_keys, list) and data_keys):
        raise TypeError("dataKeys must be a non-empty list of key names")
    return AddonObject(
        addon=str(row["addon"]),
        kind=str(row["kind"]),
        api_version=str(row["apiVersion"]),
        name=str(row["name"]),
        namespace=str(row.get("namespace") or ""),
        labels=_string_map(row.get("labels") or {}, "labels"),
        selector=None if selector is None else _string_map(selector, "selector"),
        ports=tuple(ports),
        data_keys=None if data_keys is None else frozenset(str(k) for k in data_keys),
    )


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


def _delete_volume_claims(params: Mapping[str, Any]) -> bool:
    value = params.get("deleteVolumeClaims", False)
    if not isinstance(value, bool):
        raise UsageError(
            f"remove-legacy-addons: deleteVolumeClaims must be true or false (found {value!r})",
            hint="set `steps: {remove-legacy-addons: {deleteVolumeClaims: true}}` in --config "
            "to delete the addons' PersistentVolumeClaims (their data is lost)",
        )
    return value


def _catalog_path(params: Mapping[str, Any]) -> Path:
    name = str(params.get("catalog") or "legacy-addons.yaml")
    path = Path(name)
    return path if path.is_absolute() else patches_dir() / path


def _labels_text(labels: Mapping[str, str]) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(labels.items())) or "none"


class RemoveAddonsStep:
    """Delete the catalog's objects that are present, each matched exactly."""

    PARAMS: ClassVar[frozenset[str]] = frozenset({"catalog", "deleteVolumeClaims"})
    RUNS_ONCE: ClassVar[str] = ONCE_ISTIOD_ANSWERS

    def preflight(self, ctx: StepContext) -> str | None:
        load_catalog(_catalog_path(ctx.params))
        _delete_volume_claims(ctx.params)
        return None

    def check(self, ctx: StepContext) -> list[Change]:
        catalog = load_catalog(_catalog_path(ctx.params))
        delete_data = _delete_volume_claims(ctx.params)
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
                if row.holds_data and not delete_data:
                    _note(
                        ctx,
                        f"kept {ref} of the {row.addon} addon: it holds data, so it is deleted "
                        "only when asked; to delete it, re-run with `--config FILE` where FILE "
                        "has `steps: {remove-legacy-addons: {deleteVolumeClaims: true}}`",
                    )
                    continue
                changes.append(_delete_change(row, ref, obj))
        return changes


def _note(ctx: StepContext, text: str) -> None:
    if text not in ctx.notes:
        ctx.notes.append(text)


def _delete_change(row: AddonObject, ref: Ref, obj: Obj) -> Change:
    def apply(cluster: Cluster) -> None:
        cluster.delete(ref, propagation="Background")

    return Change(
        target=f"{row.addon} addon",
        summary=f"{ref} deleted",
        apply=apply,
        diff=f"- {ref} (matched the {row.addon} addon by {row.shape()})",
    )
