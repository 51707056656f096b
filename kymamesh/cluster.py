"""The cluster adapter: the one place that speaks to the Kubernetes API.

Objects are plain dicts (as in a manifest) addressed by `Ref`. API errors are
mapped once, here, to the named errors of `kymamesh.errors`; transient ones
(connection reset, 429, 5xx, 409 on update) are retried with tenacity, others
are not. Every write carries the field manager and user agent `kymamesh`.
"""

from __future__ import annotations

import builtins
import contextlib
import getpass
import json
import os
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from tenacity import (
    retry,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential,
)

from kymamesh import FIELD_MANAGER, __version__
from kymamesh.errors import (
    ApiError,
    ClusterUnreachableError,
    ConflictError,
    ForbiddenError,
    LockHeldError,
    NotFoundError,
    PreconditionError,
    WaitTimeoutError,
    yaml_problem,
)
from kymamesh.versions import Version

Obj = dict[str, Any]
T = TypeVar("T")

USER_AGENT = f"kymamesh/{__version__}"
LOCK_NAME = "kymamesh-lock"
LOCK_DURATION_S = 30
_REQUEST_TIMEOUT = (5, 30)  # connect, read


@dataclass(frozen=True, order=True)
class Ref:
    """Kind, namespace and name of one object (namespace '' when cluster-scoped)."""

    api_version: str
    kind: str
    name: str
    namespace: str = ""

    @classmethod
    def of(cls, obj: Mapping[str, Any]) -> Ref:
        meta = obj.get("metadata", {})
        return cls(obj["apiVersion"], obj["kind"], meta["name"], meta.get("namespace", "") or "")

    def __str__(self) -> str:
        if self.namespace:
            return f"{self.kind}/{self.namespace}/{self.name}"
        return f"{self.kind}/{self.name}"


class _Transient(Exception):
    """An API error worth retrying; turned into a named error when retries run out."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.cause = cause


def _status_of(exc: BaseException) -> int | None:
    status = getattr(exc, "status", None)
    return status if isinstance(status, int) else None


def _api_message(exc: BaseException) -> str:
    body = getattr(exc, "body", None)
    if body:
        try:
            message = json.loads(body).get("message")
            if message:
                return str(message)
        except (ValueError, AttributeError):
            pass
    reason = getattr(exc, "reason", None)
    return str(reason or exc)


def _is_transient(exc: BaseException) -> bool:
    return isinstance(exc, _Transient)


_KUBECONFIG_HINT = (
    "pass --kubeconfig with a valid kubeconfig file (e.g. one written by "
    "`kubectl config view --minify --raw`), or set KUBECONFIG"
)


def _library_message(exc: Exception) -> str:
    from kubernetes.config.config_exception import ConfigException

    if isinstance(exc, ConfigException):
        return str(exc)
    return f"its structure is not a kubeconfig's ({type(exc).__name__}: {exc})"


def _check_kubeconfig(path: str) -> None:
    """A kubeconfig the client library can read: a readable file holding a YAML map."""
    import yaml

    try:
        with open(path, encoding="utf-8") as fh:
            raw = yaml.safe_load(fh)
    except OSError as exc:
        reason = "it is a directory" if os.path.isdir(path) else exc.strerror
        raise ClusterUnreachableError(
            f"cannot read kubeconfig {path}: {reason}", hint=_KUBECONFIG_HINT
        ) from None
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ClusterUnreachableError(
            f"kubeconfig {path} is not valid YAML: {yaml_problem(exc)}", hint=_KUBECONFIG_HINT
        ) from None
    if raw is None:
        raise ClusterUnreachableError(f"kubeconfig {path} is empty", hint=_KUBECONFIG_HINT)
    if not isinstance(raw, dict):
        raise ClusterUnreachableError(
            f"kubeconfig {path} is not a kubeconfig: a YAML {type(raw).__name__}, not a map",
            hint=_KUBECONFIG_HINT,
        )


class Cluster:
    """A connection to one cluster, from a kubeconfig and an optional context."""

    def __init__(self, api_client: Any, context: str, server: str) -> None:
        from kubernetes.dynamic import DynamicClient

        self._api = api_client
        self.context = context
        self.server = server
        cache = os.path.join(tempfile.gettempdir(), f"kymamesh-discovery-{uuid.uuid4().hex}.json")
        self._dynamic = self._call(lambda: DynamicClient(api_client, cache_file=cache))
        self._cache_file = cache

    # -- connecting ---------------------------------------------------------

    @classmethod
    def connect(cls, kubeconfig: str | None = None, context: str | None = None) -> Cluster:
        """Load a kubeconfig (`--kubeconfig`, else `KUBECONFIG`, else ~/.kube/config)."""
        from kubernetes import client, config
        from kubernetes.config.config_exception import ConfigException

        path = kubeconfig or os.environ.get("KUBECONFIG") or os.path.expanduser("~/.kube/config")
        existing = [p for p in path.split(os.pathsep) if p and os.path.exists(p)]
        if not existing:
            raise ClusterUnreachableError(
                f"no kubeconfig found at {path}",
                hint="pass --kubeconfig FILE or set KUBECONFIG",
            )
        used = existing[0]
        _check_kubeconfig(used)
        # the client library reads the file's structure without checking it
        bad_structure = (ConfigException, TypeError, KeyError, AttributeError, ValueError)
        try:
            contexts, active = config.list_kube_config_contexts(config_file=used)
        except bad_structure as exc:
            raise ClusterUnreachableError(
                f"cannot read kubeconfig {used}: {_library_message(exc)}", hint=_KUBECONFIG_HINT
            ) from None
        names = [c["name"] for c in contexts]
        if context and context not in names:
            raise PreconditionError(
                f"context '{context}' is not in kubeconfig {used}",
                hint=f"use one of: {', '.join(names) or '(none)'}",
            )
        configuration = client.Configuration()
        try:
            config.load_kube_config(
                config_file=used, context=context, client_configuration=configuration
            )
        except bad_structure as exc:
            raise ClusterUnreachableError(
                f"cannot use kubeconfig {used}: {_library_message(exc)}", hint=_KUBECONFIG_HINT
            ) from None
        configuration.retries = 0
        api_client = client.ApiClient(configuration)
        api_client.user_agent = USER_AGENT
        chosen = context or (active or {}).get("name", "")
        return cls(api_client, chosen, configuration.host)

    # -- error mapping and retries ------------------------------------------

    def _call(self, fn: Callable[[], T]) -> T:
        """Run one API call: retry transient failures, map the rest to named errors."""

        @retry(
            retry=retry_if_exception(_is_transient),
            stop=stop_after_attempt(4),
            wait=wait_exponential(multiplier=0.3, max=3),
            reraise=True,
        )
        def attempt() -> T:
            try:
                return fn()
            except Exception as exc:
                raise self._classify(exc) from exc

        try:
            return attempt()
        except _Transient as exc:
            raise self._final(exc.cause) from exc.cause

    def _classify(self, exc: Exception) -> Exception:
        from urllib3.exceptions import HTTPError as Urllib3Error

        status = _status_of(exc)
        if status is not None:
            if status == 429 or status >= 500:
                return _Transient(exc)
            return self._final(exc)
        if isinstance(exc, (Urllib3Error, ConnectionError, TimeoutError, OSError)):
            return _Transient(exc)
        return exc

    def _final(self, exc: BaseException) -> Exception:
        status = _status_of(exc)
        message = _api_message(exc)
        if status is None:
            return ClusterUnreachableError(
                f"cannot reach the Kubernetes API at {self.server} (context '{self.context}'): "
                f"{message}",
                hint="check that the cluster is running and --kubeconfig/--context point to it",
            )
        if status == 401:
            return ClusterUnreachableError(
                f"the API server at {self.server} did not accept the credentials: {message}",
                hint="refresh the credentials in your kubeconfig",
            )
        if status == 403:
            return ForbiddenError(
                f"forbidden: {message}",
                hint="kymamesh needs cluster-admin rights; use a kubeconfig that has them",
            )
        if status == 404:
            return NotFoundError(message, status)
        if status == 409:
            return ConflictError(message, status)
        return ApiError(f"the API server refused a request ({status}): {message}", status)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.unlink(self._cache_file)
        self._api.close()

    # -- reads ---------------------------------------------------------------

    def server_version(self) -> Version:
        from kubernetes import client

        info = self._call(
            lambda: client.VersionApi(self._api).get_code(_request_timeout=_REQUEST_TIMEOUT)
        )
        return Version.parse(str(info.git_version))

    def _resource(self, api_version: str, kind: str) -> Any:
        from kubernetes.dynamic.exceptions import ResourceNotFoundError

        try:
            return self._call(
                lambda: self._dynamic.resources.get(api_version=api_version, kind=kind)
            )
        except ResourceNotFoundError:
            raise NotFoundError(f"the API server does not serve {kind} ({api_version})") from None

    def serves(self, api_version: str, kind: str) -> bool:
        try:
            self._resource(api_version, kind)
        except NotFoundError:
            return False
        return True

    def get(self, ref: Ref) -> Obj | None:
        """The live object, or None when it (or its kind) does not exist."""
        try:
            resource = self._resource(ref.api_version, ref.kind)
            result = self._call(
                lambda: self._dynamic.get(
                    resource,
                    name=ref.name,
                    namespace=ref.namespace or None,
                    _request_timeout=_REQUEST_TIMEOUT,
                )
            )
        except NotFoundError:
            return None
        return dict(result.to_dict())

    def list(
        self,
        api_version: str,
        kind: str,
        namespace: str | None = None,
        label_selector: str | None = None,
    ) -> list[Obj]:
        """All objects of a kind (in a namespace, with labels); [] when the kind is not served."""
        try:
            resource = self._resource(api_version, kind)
        except NotFoundError:
            return []
        result = self._call(
            lambda: self._dynamic.get(
                resource,
                namespace=namespace,
                label_selector=label_selector,
                _request_timeout=_REQUEST_TIMEOUT,
            )
        )
        items = result.to_dict().get("items", [])
        for item in items:
            item.setdefault("apiVersion", api_version)
            item.setdefault("kind", kind)
        return list(items)

    # -- writes --------------------------------------------------------------

    def apply(self, obj: Obj, *, force: bool = True) -> Obj:
        """Server-side apply with field manager `kymamesh`."""
        ref = Ref.of(obj)
        resource = self._resource(ref.api_version, ref.kind)
        result = self._call(
            lambda: self._dynamic.server_side_apply(
                resource,
                body=obj,
                name=ref.name,
                namespace=ref.namespace or None,
                field_manager=FIELD_MANAGER,
                force_conflicts=force,
                _request_timeout=_REQUEST_TIMEOUT,
            )
        )
        return dict(result.to_dict())

    def create(self, obj: Obj) -> Obj:
        ref = Ref.of(obj)
        resource = self._resource(ref.api_version, ref.kind)
        result = self._call(
            lambda: self._dynamic.create(
                resource,
                body=obj,
                namespace=ref.namespace or None,
                field_manager=FIELD_MANAGER,
                _request_timeout=_REQUEST_TIMEOUT,
            )
        )
        return dict(result.to_dict())

    def replace(self, obj: Obj) -> Obj:
        """Update with the object's resourceVersion (optimistic concurrency)."""
        ref = Ref.of(obj)
        resource = self._resource(ref.api_version, ref.kind)
        result = self._call(
            lambda: self._dynamic.replace(
                resource,
                body=obj,
                name=ref.name,
                namespace=ref.namespace or None,
                field_manager=FIELD_MANAGER,
                _request_timeout=_REQUEST_TIMEOUT,
            )
        )
        return dict(result.to_dict())

    def merge_patch(self, ref: Ref, patch: Mapping[str, Any]) -> Obj:
        """A JSON merge patch: changes only the keys given, leaves ownership alone."""
        resource = self._resource(ref.api_version, ref.kind)
        result = self._call(
            lambda: self._dynamic.patch(
                resource,
                body=dict(patch),
                name=ref.name,
                namespace=ref.namespace or None,
                content_type="application/merge-patch+json",
                field_manager=FIELD_MANAGER,
                _request_timeout=_REQUEST_TIMEOUT,
            )
        )
        return dict(result.to_dict())

    def delete(self, ref: Ref, *, propagation: str = "Background") -> bool:
        """Delete; False when it was already gone."""
        try:
            resource = self._resource(ref.api_version, ref.kind)
            self._call(
                lambda: self._dynamic.delete(
                    resource,
                    name=ref.name,
                    namespace=ref.namespace or None,
                    body={"propagationPolicy": propagation},
                    _request_timeout=_REQUEST_TIMEOUT,
                )
            )
        except NotFoundError:
            return False
        return True

    def ensure_namespace(self, name: str) -> bool:
        """Create the namespace if missing; True when it was created."""
        ref = Ref("v1", "Namespace", name)
        if self.get(ref) is not None:
            return False
        try:
            self.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
        except ConflictError:
            return False
        return True

    # -- waiting -------------------------------------------------------------

    def wait_ready(
        self,
        refs: builtins.list[Ref],
        timeout: float,
        on_poll: Callable[[builtins.list[str]], None] | None = None,
    ) -> None:
        """Wait until every object is ready; on timeout name each one that is not, and why."""
        deadline = time.monotonic() + timeout
        pending: builtins.list[Ref] = builtins.list(refs)
        while True:
            reasons = []
            still = []
            for ref in pending:
                why = not_ready_reason(ref, self.get(ref))
                if why is not None:
                    still.append(ref)
                    reasons.append(f"{ref} ({why})")
            pending = still
            if not pending:
                return
            if on_poll:
                on_poll(reasons)
            if time.monotonic() >= deadline:
                raise WaitTimeoutError(
                    f"timed out after {timeout:.0f}s; not ready: " + "; ".join(reasons),
                    hint="look at these objects with kubectl describe; raise --timeout if the "
                    "cluster is slow",
                )
            time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))

    # -- the lock ------------------------------------------------------------

    @contextmanager
    def lock(self, namespace: str, wait: float) -> Iterator[str]:
        """Hold the Lease `kymamesh-lock` in `namespace` while writing.

        A second run waits up to `wait` seconds, then names the holder. A crashed
        run's Lease expires after LOCK_DURATION_S without renewal.
        """
        holder = (
            f"{getpass.getuser()}@{socket.gethostname()}/pid-{os.getpid()}/{uuid.uuid4().hex[:8]}"
        )
        ref = Ref("coordination.k8s.io/v1", "Lease", LOCK_NAME, namespace)
        deadline = time.monotonic() + wait
        while not self._try_acquire(ref, holder):
            if time.monotonic() >= deadline:
                live = self.get(ref) or {}
                spec = live.get("spec", {})
                raise LockHeldError(
                    f"another kymamesh run holds the lock Lease {ref}: "
                    f"{spec.get('holderIdentity')} (renewed {spec.get('renewTime')}); "
                    f"waited {wait:.0f}s",
                    hint="wait for that run to finish and try again; a crashed run's lock "
                    f"expires {LOCK_DURATION_S}s after its last renewal",
                )
            time.sleep(1.0)
        stop = threading.Event()
        renewer = threading.Thread(
            target=self._renew_lock, args=(ref, holder, stop), name="kymamesh-lock", daemon=True
        )
        renewer.start()
        try:
            yield holder
        finally:
            stop.set()
            renewer.join(timeout=5)
            self._release(ref, holder)

    @staticmethod
    def _now() -> str:
        return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")

    def _lease_body(self, ref: Ref, holder: str, acquired: str | None = None) -> Obj:
        now = self._now()
        return {
            "apiVersion": ref.api_version,
            "kind": "Lease",
            "metadata": {
                "name": ref.name,
                "namespace": ref.namespace,
                "labels": {"app.kubernetes.io/managed-by": "kymamesh"},
            },
            "spec": {
                "holderIdentity": holder,
                "leaseDurationSeconds": LOCK_DURATION_S,
                "acquireTime": acquired or now,
                "renewTime": now,
            },
        }

    def _try_acquire(self, ref: Ref, holder: str) -> bool:
        live = self.get(ref)
        if live is None:
            try:
                self.create(self._lease_body(ref, holder))
            except ConflictError:
                return False
            return True
        spec = live.get("spec") or {}
        if spec.get("holderIdentity") and not _lease_expired(spec):
            return False
        body = self._lease_body(ref, holder)
        body["metadata"]["resourceVersion"] = live["metadata"]["resourceVersion"]
        try:
            self.replace(body)
        except ConflictError:
            return False
        return True

    def _renew_lock(self, ref: Ref, holder: str, stop: threading.Event) -> None:
        while not stop.wait(LOCK_DURATION_S / 3):
            try:
                live = self.get(ref)
                if not live or (live.get("spec") or {}).get("holderIdentity") != holder:
                    return
                body = self._lease_body(ref, holder, live["spec"].get("acquireTime"))
                body["metadata"]["resourceVersion"] = live["metadata"]["resourceVersion"]
                self.replace(body)
            except Exception:  # renewal is best effort; the main thread reports real errors
                continue

    def _release(self, ref: Ref, holder: str) -> None:
        try:
            live = self.get(ref)
            if live and (live.get("spec") or {}).get("holderIdentity") == holder:
                self.delete(ref)
        except Exception:  # a lock left behind expires by itself
            pass


def _lease_expired(spec: Mapping[str, Any]) -> bool:
    renew = spec.get("renewTime")
    if not renew:
        return True
    renewed = _parse_time(str(renew))
    duration = int(spec.get("leaseDurationSeconds") or LOCK_DURATION_S)
    return datetime.now(UTC) > renewed + timedelta(seconds=duration)


def _parse_time(text: str) -> datetime:
    text = text.replace("Z", "+00:00")
    return datetime.fromisoformat(text)


def not_ready_reason(ref: Ref, obj: Obj | None) -> str | None:
    """None when the object is ready; otherwise a short reason."""
    if obj is None:
        return "not found"
    status = obj.get("status") or {}
    conditions = {c.get("type"): c for c in status.get("conditions") or []}
    if ref.kind == "CustomResourceDefinition":
        established = conditions.get("Established", {})
        if established.get("status") != "True":
            return f"not Established: {established.get('message') or 'no condition yet'}"
        return None
    if ref.kind in ("Deployment", "StatefulSet"):
        spec = obj.get("spec") or {}
        want = int(spec.get("replicas", 1) if spec.get("replicas") is not None else 1)
        generation = (obj.get("metadata") or {}).get("generation", 0)
        if status.get("observedGeneration", 0) < generation:
            return "rollout not yet observed by its controller"
        updated = int(status.get("updatedReplicas") or 0)
        available = int(status.get("availableReplicas") or 0)
        if updated < want:
            return f"{updated} of {want} replicas updated"
        if available < want:
            avail = conditions.get("Available", {})
            extra = f": {avail.get('message')}" if avail.get("message") else ""
            return f"{available} of {want} replicas available{extra}"
        return None
    if ref.kind == "DaemonSet":
        want = int(status.get("desiredNumberScheduled") or 0)
        ready = int(status.get("numberReady") or 0)
        return None if ready >= want else f"{ready} of {want} pods ready"
    return None
