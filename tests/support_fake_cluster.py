"""The in-memory stand-in for `kymamesh.adapters.cluster.Cluster` that the unit tests share.

It has the adapter's methods with the adapter's signatures and keeps objects by
`Ref`. It behaves like an API server where the unit tests rely on it (each point
below is pinned by `tests/test_fake_cluster.py`, and the same behaviour of the real
API by the cluster tests named there):

- an object is found under any version of its group; Istio's kinds are served only
  when their CRD is there (or listed in `served`); a write of a kind not served is a
  NotFoundError, like the adapter's;
- a namespaced object can only be created in a namespace that exists; deleting a
  Namespace deletes what is in it (at once: the real controller takes ~10 s);
- `resourceVersion` changes on every write that changes the object, and only then
  (a no-op write keeps it, as the API does); a write that names a stale one is a 409;
  `metadata.generation` grows when the spec of a workload or custom resource changes;
- server-side apply (one field manager, kymamesh's) merges into the live object and
  removes the fields kymamesh applied before but no longer applies, unless another
  write changed them since (that write took them over); lists are replaced whole
  (atomic, as in CRDs);
- ConfigMap and Secret data are checked as the API decodes them (text values, a
  Secret's `data` in base64: 400 otherwise; `stringData` folded into `data`), and a
  Secret's `type` cannot change (422);
- label selectors `k=v`, `k==v`, `k!=v`, `k`, `!k`; a selector it cannot read fails
  loudly instead of matching nothing;
- `list_pages` gives `list`'s answer in pages; `remembered` computes every time (the
  adapter remembers only within a snapshot, which the fake does not have);
- the lock: `lock()` holds it for the `with` block, a second holder is refused
  (LockHeldError), `lose_lock()` makes every later write a LockLostError (the
  adapter's fence), and writes made while no lock is held are listed in
  `unlocked_writes`.

Writes are logged in `writes` as "apply|create|replace|patch|delete Kind/namespace/name".
What it does not do (no defaulting, no admission webhooks, no controllers, no
rollouts, no garbage collection by owner) is tested against the test cluster only.
"""

from __future__ import annotations

import base64
import binascii
import copy
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

from kymamesh.adapters.cluster import Cluster, Obj, Ref
from kymamesh.context import Options, RunContext
from kymamesh.errors import ApiError, ConflictError, LockHeldError, LockLostError, NotFoundError
from kymamesh.output import Progress, Result

# The Istio kinds served without a CRD among the objects, unless a test says otherwise.
ISTIO_KINDS = {
    ("networking.istio.io/v1", "Gateway"),
    ("security.istio.io/v1", "PeerAuthentication"),
}
# Kinds whose metadata.generation follows their spec (besides every custom resource).
_GENERATION_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"}
_EPOCH = datetime(2026, 1, 1, tzinfo=UTC)
_REQUIREMENT = re.compile(
    r"^(?P<not>!)?\s*(?P<key>[-._a-zA-Z0-9/]+)\s*(?:(?P<op>!=|==|=)\s*(?P<value>[-._a-zA-Z0-9]*))?$"
)


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


def _prune(live: Any, before: Any, now: Any) -> Any:
    """`live` without the fields that `before` (the last applied config) set and `now`
    (this apply) no longer sets: server-side apply's removal of fields it owned."""
    if not isinstance(live, Mapping) or not isinstance(before, Mapping):
        return live
    result = dict(live)
    now = now if isinstance(now, Mapping) else {}
    for key, value in before.items():
        if key not in result:
            continue
        if key not in now:
            if isinstance(value, Mapping) and isinstance(result[key], Mapping):
                result[key] = _prune(result[key], value, {})
                if not result[key]:
                    del result[key]
            else:
                del result[key]
        else:
            result[key] = _prune(result[key], value, now[key])
    return result


def _disown(applied: Any, old: Any, new: Any) -> Any:
    """The applied config less the fields a non-apply write changed (their new owner)."""
    if not isinstance(applied, Mapping):
        return applied
    result = {}
    for key, value in applied.items():
        was = old.get(key) if isinstance(old, Mapping) else None
        now = new.get(key) if isinstance(new, Mapping) else None
        if isinstance(value, Mapping) and isinstance(now, Mapping):
            result[key] = _disown(value, was, now)
        elif was == now:
            result[key] = value
    return result


def _content(obj: Obj) -> Obj:
    """What a write may change, for telling a no-op write from a real one."""
    body = copy.deepcopy(obj)
    meta = body.get("metadata") or {}
    for key in ("resourceVersion", "generation", "creationTimestamp", "uid"):
        meta.pop(key, None)
    body.pop("apiVersion", None)
    return body


def _selector(text: str | None) -> Callable[[Mapping[str, Any]], bool]:
    """Equality-based label selectors, as the API reads them."""
    tests: list[Callable[[Mapping[str, Any]], bool]] = []
    for part in (p.strip() for p in (text or "").split(",") if p.strip()):
        match = _REQUIREMENT.match(part)
        if not match:
            raise AssertionError(f"the fake cannot read the label selector {text!r}")
        bang, key, op, value = match.group("not", "key", "op", "value")
        if op == "!=":
            tests.append(lambda labels, k=key, v=value: labels.get(k) != v)
        elif op:
            tests.append(lambda labels, k=key, v=value: labels.get(k) == v)
        elif bang:
            tests.append(lambda labels, k=key: k not in labels)
        else:
            tests.append(lambda labels, k=key: k in labels)
    return lambda labels: all(test(labels) for test in tests)


def _invalid(ref: Ref, why: str, status: int = 422) -> ApiError:
    """422 for a value the API validates; 400 for one it cannot even decode."""
    return ApiError(f"the API server refused a request ({status}): {ref} is invalid: {why}", status)


def _validate(obj: Obj, old: Obj | None) -> None:
    """The API's checks of ConfigMaps, Secrets and metadata that the tests can run into."""
    ref = Ref.of(obj)
    meta = obj.get("metadata") or {}
    for field in ("labels", "annotations"):
        for key, value in (meta.get(field) or {}).items():
            if not isinstance(value, str):
                raise _invalid(ref, f"metadata.{field}.{key}: not a string: {value!r}", 400)
    if ref.kind == "ConfigMap" and ref.api_version == "v1":
        for field in ("data", "binaryData"):
            for key, value in (obj.get(field) or {}).items():
                if not isinstance(value, str):
                    raise _invalid(ref, f"{field}.{key}: not a string: {value!r}", 400)
    if ref.kind == "Secret" and ref.api_version == "v1":
        for key, value in (obj.get("data") or {}).items():
            if not isinstance(value, str):
                raise _invalid(ref, f"data.{key}: not a string: {value!r}", 400)
            try:
                base64.b64decode(value, validate=True)
            except (binascii.Error, ValueError):
                raise _invalid(ref, f"data.{key}: not base64", 400) from None
        if old is not None and old.get("type", "Opaque") != obj.get("type", "Opaque"):
            raise _invalid(ref, "type: field is immutable")


class FakeCluster:
    context = "fake"
    server = "https://fake.invalid"

    def __init__(self, objects: Iterable[Obj] = (), served: set[tuple[str, str]] | None = None):
        self.served = set(ISTIO_KINDS if served is None else served)
        self.writes: list[str] = []
        self.unlocked_writes: list[str] = []
        self.lock_holder: str | None = None
        self.lock_lost = False
        self._rv = 100
        self._applied: dict[tuple[str, str, str, str], Obj] = {}
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
        """Store an object as it is (replacing one of the same name), without logging a
        write or checking it: how a test sets the scene."""
        ref = Ref.of(obj)
        old = self._find(ref)
        return self._store(obj, self._objects.pop(old) if old is not None else None)

    def _store(self, obj: Obj, old: Obj | None) -> Obj:
        obj = copy.deepcopy(obj)
        meta = obj.setdefault("metadata", {})
        ref = Ref.of(obj)
        if old is not None and _content(old) == _content(obj):
            meta.update({k: old["metadata"][k] for k in old["metadata"] if k not in meta})
            meta["resourceVersion"] = old["metadata"]["resourceVersion"]
        else:
            self._rv += 1
            meta["resourceVersion"] = str(self._rv)
        old_meta = (old or {}).get("metadata") or {}
        created = old_meta.get("creationTimestamp") or meta.get("creationTimestamp")
        meta["creationTimestamp"] = created or (_EPOCH + timedelta(seconds=self._rv)).strftime(
            "%Y-%m-%dT%H:%M:%SZ"
        )
        meta.setdefault("uid", old_meta.get("uid") or f"fake-uid-{self._rv}")
        if ref.kind in _GENERATION_KINDS or "." in _group(ref.api_version):
            generation = int(old_meta.get("generation") or meta.get("generation") or 1)
            if old is not None and old.get("spec") != obj.get("spec"):
                generation += 1
            meta["generation"] = generation
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

    @staticmethod
    def _key(ref: Ref) -> tuple[str, str, str, str]:
        return (_group(ref.api_version), ref.kind, ref.namespace, ref.name)

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

    @contextmanager
    def snapshot(self) -> Iterator[None]:
        yield  # every read here is a copy of what is stored: nothing to keep

    def get(self, ref: Ref) -> Obj | None:
        if not self.serves(ref.api_version, ref.kind):
            return None
        key = self._find(ref)
        return self._as(ref.api_version, self._objects[key]) if key is not None else None

    def list(
        self,
        api_version: str,
        kind: str,
        namespace: str | None = None,
        label_selector: str | None = None,
        *,
        metadata_only: bool = False,
    ) -> list[Obj]:
        """`metadata_only`: the whole objects all the same (callers read only metadata)."""
        if not self.serves(api_version, kind):
            return []
        matches = _selector(label_selector)
        found = []
        for ref, obj in sorted(self._objects.items()):
            if ref.kind != kind or _group(ref.api_version) != _group(api_version):
                continue
            if namespace and ref.namespace != namespace:
                continue
            if matches(obj["metadata"].get("labels") or {}):
                found.append(self._as(api_version, obj))
        return found

    def list_pages(
        self,
        api_version: str,
        kind: str,
        namespace: str | None = None,
        label_selector: str | None = None,
        limit: int = 500,
    ) -> Iterator[list[Obj]]:
        """`list`, `limit` objects at a time."""
        found = self.list(api_version, kind, namespace, label_selector)
        for start in range(0, len(found), limit):
            yield found[start : start + limit]

    def remembered(self, key: tuple[str, ...], compute: Callable[[], Any]) -> Any:
        """No snapshot here: made every time, as the adapter does outside one."""
        return compute()

    # -- writes --------------------------------------------------------------

    def _write(self, verb: str, ref: Ref) -> None:
        """What the adapter does before any write: the fence, then the API's discovery."""
        self.writes.append(f"{verb} {ref}")
        if self.lock_lost:
            raise LockLostError("the fake's lock was lost: no further write may reach the API")
        if self.lock_holder is None:
            self.unlocked_writes.append(f"{verb} {ref}")
        if not self.serves(ref.api_version, ref.kind):
            raise NotFoundError(f"the API server does not serve {ref.kind} ({ref.api_version})")

    def _check_namespace(self, ref: Ref) -> None:
        if ref.namespace and self._find(Ref("v1", "Namespace", ref.namespace)) is None:
            raise NotFoundError(f'namespaces "{ref.namespace}" not found', 404)

    @staticmethod
    def _normalize(obj: Obj) -> Obj:
        """A Secret's stringData is write-only: the API folds it into data."""
        if obj.get("kind") == "Secret" and obj.get("stringData"):
            obj = copy.deepcopy(obj)
            data = obj.setdefault("data", {}) or {}
            for key, value in obj.pop("stringData").items():
                data[key] = base64.b64encode(str(value).encode()).decode("ascii")
            obj["data"] = data
        return obj

    def _replace_stored(self, ref: Ref, new: Obj, applied: bool = False) -> Obj:
        key = self._find(ref)
        old = self._objects[key] if key is not None else None
        new = self._normalize(new)
        _validate(new, old)
        if old is not None and not applied:
            record = self._applied.get(self._key(ref))
            if record is not None:
                self._applied[self._key(ref)] = _disown(record, old, new)
        if key is not None:
            del self._objects[key]
        return self._store(new, old)

    def apply(self, obj: Obj, *, force: bool = True) -> Obj:
        ref = Ref.of(obj)
        self._write("apply", ref)
        key = self._find(ref)
        applied = copy.deepcopy(obj)
        applied.get("metadata", {}).pop("resourceVersion", None)
        if key is None:
            self._check_namespace(ref)
            new = obj
        else:
            live = self._objects[key]
            self._check_version(live, obj)
            before = self._applied.get(self._key(ref), {})
            new = merge(_prune(live, before, applied), applied)
        stored = self._replace_stored(ref, new, applied=True)
        self._applied[self._key(ref)] = applied
        return stored

    def create(self, obj: Obj) -> Obj:
        ref = Ref.of(obj)
        self._write("create", ref)
        if self._find(ref) is not None:
            raise ConflictError(f"{ref} already exists", 409)
        self._check_namespace(ref)
        return self._replace_stored(ref, obj)

    def dry_run_create(self, obj: Obj) -> Obj:
        """Admission only: the object as it would be created; nothing stored, no write."""
        out = copy.deepcopy(obj)
        return self.admit(out) if self.admit else out

    def replace(self, obj: Obj) -> Obj:
        ref = Ref.of(obj)
        self._write("replace", ref)
        self._check_version(self._live(ref), obj)
        return self._replace_stored(ref, obj)

    def merge_patch(self, ref: Ref, patch: Mapping[str, Any]) -> Obj:
        self._write("patch", ref)
        live = self._live(ref)
        self._check_version(live, patch)
        return self._replace_stored(ref, merge(live, patch))

    @staticmethod
    def _check_version(live: Obj, change: Mapping[str, Any]) -> None:
        wanted = (change.get("metadata") or {}).get("resourceVersion")
        if wanted and wanted != live["metadata"]["resourceVersion"]:
            raise ConflictError("the object has been modified", 409)

    # read, edit, write with one retry on a conflict: the adapter's own logic over the fake
    update = Cluster.update

    def delete(self, ref: Ref, *, propagation: str = "Background") -> bool:
        self._write("delete", ref)
        key = self._find(ref)
        if key is None:
            return False
        del self._objects[key]
        self._applied.pop(self._key(ref), None)
        if ref.kind == "Namespace" and not ref.namespace:
            for inside in [r for r in self._objects if r.namespace == ref.name]:
                del self._objects[inside]
                self._applied.pop(self._key(inside), None)
        return True

    def ensure_namespace(self, name: str) -> bool:
        if self.get(Ref("v1", "Namespace", name)) is not None:
            return False
        self.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
        return True

    # -- the lock --------------------------------------------------------------

    @contextmanager
    def lock(
        self, namespace: str, wait: float, on_wait: Callable[[str], None] | None = None
    ) -> Iterator[str]:
        if self.lock_holder is not None:
            raise LockHeldError(f"another run holds the lock ({self.lock_holder})")
        self._check_namespace(Ref("coordination.k8s.io/v1", "Lease", "kymamesh-lock", namespace))
        self.lock_holder = "fake"
        try:
            yield "fake"
        finally:
            self.lock_holder = None

    def lock_held_by(self, namespace: str) -> str | None:
        return self.lock_holder

    def lose_lock(self) -> None:
        """What the adapter sees when its Lease renewals fail: every later write is refused."""
        self.lock_lost = True

    def check_lock(self) -> None:
        if self.lock_lost:
            raise LockLostError("the fake's lock was lost: no further write may reach the API")

    def fence(self) -> None:
        self.check_lock()

    def close(self) -> None:
        pass


def run_context(cluster: FakeCluster, dry_run: bool = False, command: str = "patch") -> RunContext:
    """A RunContext wired to the fake cluster, with quiet progress.

    Like a command's, its first write takes the fake's lock; it keeps it until
    `with ctx.session():` ends (a test that writes twice on one fake uses that).
    """
    options = Options(dry_run=dry_run, yes=True)
    ctx = RunContext(
        options=options,
        result=Result(command=command, dry_run=dry_run),
        progress=Progress(quiet=True),
    )
    ctx._cluster = cluster  # type: ignore[assignment]
    return ctx
