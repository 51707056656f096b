"""A small in-memory stand-in for `kymamesh.cluster.Cluster`, for unit tests of step logic.

It keeps objects by (kind, namespace, name), counts writes, and implements just
the adapter methods the TLS, addon and proxy steps use. Anything that talks to
a real API server is tested against the test cluster as well.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from kymamesh.cluster import Ref
from kymamesh.context import Options, RunContext
from kymamesh.output import Progress, Result


class FakeCluster:
    def __init__(self, served: set[tuple[str, str]] | None = None) -> None:
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.writes: list[str] = []
        self.served = served if served is not None else {("networking.istio.io/v1", "Gateway")}

    @staticmethod
    def _key(ref: Ref) -> tuple[str, str, str]:
        return (ref.kind, ref.namespace, ref.name)

    def add(self, obj: dict[str, Any]) -> None:
        self.objects[self._key(Ref.of(obj))] = copy.deepcopy(obj)

    def serves(self, api_version: str, kind: str) -> bool:
        core = {"v1", "apps/v1", "rbac.authorization.k8s.io/v1", "coordination.k8s.io/v1"}
        return api_version in core or (api_version, kind) in self.served

    def get(self, ref: Ref) -> dict[str, Any] | None:
        obj = self.objects.get(self._key(ref))
        return copy.deepcopy(obj) if obj is not None else None

    def list(
        self,
        api_version: str,
        kind: str,
        namespace: str | None = None,
        label_selector: str | None = None,
    ) -> list[dict[str, Any]]:
        wanted = dict(p.split("=", 1) for p in label_selector.split(",")) if label_selector else {}
        found = []
        for (k, ns, _), obj in sorted(self.objects.items()):
            if k != kind or (namespace is not None and ns != namespace):
                continue
            labels = obj.get("metadata", {}).get("labels") or {}
            if all(labels.get(a) == b for a, b in wanted.items()):
                found.append(copy.deepcopy(obj))
        return found

    def apply(self, obj: dict[str, Any], *, force: bool = True) -> dict[str, Any]:
        self.writes.append(f"apply {Ref.of(obj)}")
        key = self._key(Ref.of(obj))
        merged = _merge(self.objects.get(key, {}), obj)
        self.objects[key] = merged
        return copy.deepcopy(merged)

    def merge_patch(self, ref: Ref, patch: dict[str, Any]) -> dict[str, Any]:
        self.writes.append(f"patch {ref}")
        key = self._key(ref)
        self.objects[key] = _merge(self.objects[key], patch)
        return copy.deepcopy(self.objects[key])

    def delete(self, ref: Ref, *, propagation: str = "Background") -> bool:
        self.writes.append(f"delete {ref}")
        return self.objects.pop(self._key(ref), None) is not None

    def ensure_namespace(self, name: str) -> bool:
        ref = Ref("v1", "Namespace", name)
        if self.get(ref) is not None:
            return False
        self.writes.append(f"create {ref}")
        self.add({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
        return True

    @contextmanager
    def lock(self, namespace: str, wait: float) -> Iterator[str]:
        yield "fake"

    def close(self) -> None:
        pass


def _merge(base: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """A JSON merge patch (None removes a key)."""
    result = copy.deepcopy(base)
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        elif isinstance(value, dict) and isinstance(result.get(key), dict):
            result[key] = _merge(result[key], value)
        else:
            result[key] = copy.deepcopy(value)
    return result


def run_context(cluster: FakeCluster, dry_run: bool = False, command: str = "patch") -> RunContext:
    """A RunContext wired to the fake cluster, with quiet progress."""
    options = Options(dry_run=dry_run, yes=True)
    ctx = RunContext(
        options=options,
        result=Result(command=command, dry_run=dry_run),
        progress=Progress(quiet=True),
    )
    ctx._cluster = cluster  # type: ignore[assignment]
    return ctx
