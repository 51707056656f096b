"""The in-memory stand-in for `kymamesh.cluster.Cluster` that the unit tests share.

It has the adapter's methods with the adapter's signatures and keeps objects by
`Ref`. Like an API server it finds an object under any version of its group,
bumps `resourceVersion` on every write (and refuses a stale one with a 409),
stamps a `creationTimestamp` that grows with each new object, and serves Istio's
kinds only when their CRD is there. Writes are logged in `writes` as
"apply|create|replace|patch|delete Kind/namespace/name". Anything that talks to a
real API server is tested against the test cluster as well.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from kymamesh.cluster import Cluster, Obj, Ref
from kymamesh.context import Options, RunContext
from kymamesh.errors import ConflictError, NotFoundError
from kymamesh.output import Progress, Result

# The Istio kinds served without a CRD among the objects, unless a test says otherwise.
ISTIO_KINDS = {
    ("networking.istio.io/v1", "Gateway"),
    ("security.istio.io/v1", "PeerAuthentication"),
}


def merge(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch (None removes a key)."""
    if not isinstance(patch, Mapping):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, Mapping) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge(result.get(key), value)
    return result


def _group(api_version: str) -> str:
    return api_version.rpartition("/")[0]


class FakeCluster:
    context = "fake"
    server = "https://fake.invalid"

    def __init__(self, objects: Iterable[Obj] = (), served: set[tuple[str, str]] | None = None):
        self.served = set(ISTIO_KINDS if served is None else served)
        self.writes: list[str] = []
        self._rv = 100
        self.objects = objects
        # What mutating webhooks do to an object on its way in (e.g. a test's stand-in for
        # istiod's injector); None: nothing, as on a cluster without webhooks.
        self.admit: Callable[[Obj], Obj] | None = None

    @property
    def objects(self) -> dict[Ref, Obj]:
        """The stored objects by Ref."""
        return self._objects

    @objects.setter
    def objects(self, objects: Iterable[Obj]) -> None:
        """Replace the store with these manifests (no writes logged)."""
        self._objects: dict[Ref, Obj] = {}
        for obj in objects:
            self.add(obj)

    def add(self, obj: Obj) -> Obj:
        """Store an object as it is (replacing one of the same name), without logging a write."""
        obj = copy.deepcopy(obj)
        self._rv += 1
        meta = obj.setdefault("metadata", {})
        meta["resourceVersion"] = str(self._rv)
        meta.setdefault("creationTimestamp", f"2026-01-01T00:00:{self._rv % 60:02d}Z")
        ref = Ref.of(obj)
        old = self._find(ref)
        if old is not None:
            del self._objects[old]
        self._objects[ref] = obj
        return copy.deepcopy(obj)

    def _find(self, ref: Ref) -> Ref | None:
        """The stored Ref of the object, whichever version of its group it was written in."""
        for key in self._objects:
            if (key.kind, key.name, key.namespace) == (ref.kind, ref.name, ref.namespace) and (
                _group(key.api_version) == _group(ref.api_version)
            ):
                return key
        return None

    def _live(self, ref: Ref) -> Obj:
        key = self._find(ref)
        if key is None:
            raise NotFoundError(f"{ref} not found", 404)
        return self._objects[key]

    @staticmethod
    def _as(api_version: str, obj: Obj) -> Obj:
        return {**copy.deepcopy(obj), "apiVersion": api_version}

    # -- reads ---------------------------------------------------------------

    def serves(self, api_version: str, kind: str) -> bool:
        """Built-in kinds always; Istio's when listed in `served` or when their CRD is stored."""
        if not _group(api_version).endswith("istio.io") or (api_version, kind) in self.served:
            return True
        group, _, version = api_version.partition("/")
        for crd in self.list("apiextensions.k8s.io/v1", "CustomResourceDefinition"):
            spec = crd.get("spec") or {}
            if spec.get("group") == group and (spec.get("names") or {}).get("kind") == kind:
                versions = spec.get("versions") or []
                return any(v.get("name") == version and v.get("served") for v in versions)
        return False

    def get(self, ref: Ref) -> Obj | None:
        key = self._find(ref)
        return self._as(ref.api_version, self._objects[key]) if key is not None else None

    def list(
        self,
        api_version: str,
        kind: str,
        namespace: str | None = None,
        label_selector: str | None = None,
    ) -> list[Obj]:
        if not self.serves(api_version, kind):
            return []
        wanted = dict(p.split("=", 1) for p in label_selector.split(",")) if label_selector else {}
        found = []
        for ref, obj in sorted(self._objects.items()):
            if ref.kind != kind or _group(ref.api_version) != _group(api_version):
                continue
            if namespace and ref.namespace != namespace:
                continue
            labels = obj["metadata"].get("labels") or {}
            if all(labels.get(k) == v for k, v in wanted.items()):
                found.append(self._as(api_version, obj))
        return found

    # -- writes --------------------------------------------------------------

    def apply(self, obj: Obj, *, force: bool = True) -> Obj:
        ref = Ref.of(obj)
        self.writes.append(f"apply {ref}")
        key = self._find(ref)
        return self.add(obj if key is None else merge(self._objects[key], obj))

    def create(self, obj: Obj) -> Obj:
        ref = Ref.of(obj)
        self.writes.append(f"create {ref}")
        if self._find(ref) is not None:
            raise ConflictError(f"{ref} already exists", 409)
        return self.add(obj)

    def dry_run_create(self, obj: Obj) -> Obj:
        """Admission only: the object as it would be created; nothing stored, no write."""
        out = copy.deepcopy(obj)
        return self.admit(out) if self.admit else out

    def replace(self, obj: Obj) -> Obj:
        ref = Ref.of(obj)
        self.writes.append(f"replace {ref}")
        self._check_version(self._live(ref), obj)
        return self.add(obj)

    def merge_patch(self, ref: Ref, patch: Mapping[str, Any]) -> Obj:
        self.writes.append(f"patch {ref}")
        live = self._live(ref)
        self._check_version(live, patch)
        return self.add(merge(live, patch))

    @staticmethod
    def _check_version(live: Obj, change: Mapping[str, Any]) -> None:
        wanted = (change.get("metadata") or {}).get("resourceVersion")
        if wanted and wanted != live["metadata"]["resourceVersion"]:
            raise ConflictError("the object has been modified", 409)

    # read, edit, write with one retry on a conflict: the adapter's own logic over the fake
    update = Cluster.update

    def delete(self, ref: Ref, *, propagation: str = "Background") -> bool:
        self.writes.append(f"delete {ref}")
        key = self._find(ref)
        if key is None:
            return False
        del self._objects[key]
        return True

    def ensure_namespace(self, name: str) -> bool:
        if self.get(Ref("v1", "Namespace", name)) is not None:
            return False
        self.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
        return True

    @contextmanager
    def lock(
        self, namespace: str, wait: float, on_wait: Callable[[str], None] | None = None
    ) -> Iterator[str]:
        yield "fake"

    def check_lock(self) -> None:
        pass

    def close(self) -> None:
        pass


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
