"""The cluster adapter: the one place that speaks to the Kubernetes API.

Objects are plain dicts (as in a manifest) addressed by `Ref`. API errors are
mapped once, here, to the named errors of `kymamesh.errors`; transient ones
(connection reset, 429, 5xx) are retried with tenacity, others are not. A 409 on
an update made with `update` (read, edit, write conditional on the
resourceVersion) is retried once with a fresh read. Every write carries the
field manager and user agent `kymamesh`, and is fenced by the lock: while a run
holds the lock Lease, a write after the lock was lost raises LockLostError
instead of reaching the API.
"""

from __future__ import annotations

import builtins
import contextlib
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
from decimal import Decimal
from typing import Any, TypeVar

from tenacity import (
    retry,
    retry_if_exception,
    retry_if_exception_type,
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
    LockLostError,
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
LOCK_DURATION_S = 30  # leaseDurationSeconds: unchanged this long, another run takes it over
LOCK_RENEW_EVERY_S = 10.0
LOCK_RETRY_EVERY_S = 2.0  # after a failed renewal
LOCK_RENEW_DEADLINE_S = 20.0  # no renewal for this long: the lock counts as lost
LOCK_CALL_TIMEOUT = (3, 5)  # connect, read: a Lease call must fit well inside the deadline
_REQUEST_TIMEOUT = (5, 30)  # connect, read
WAIT_FIRST_POLL_S = 0.05  # wait_ready: the first pause between two looks
WAIT_MAX_POLL_S = 1.0  # ... and the longest
_UPDATE_ATTEMPTS = 2  # an update that met a conflict is made once more, on a fresh read


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


def parse_quantity(text: str) -> Decimal:
    """The value of a Kubernetes quantity ("1Gi", "500m"), by the official client's parser.

    Raises ValueError when `text` is not one. Here because the adapters are the only
    modules that import the kubernetes library (`.importlinter`).
    """
    from kubernetes.utils.quantity import parse_quantity as parse

    value = parse(text)
    if not isinstance(value, Decimal):  # the library is untyped: keep the promise checked
        raise ValueError(f"{text!r} parsed to {value!r}, not a number")
    return value


def _json_of(response: Any) -> Obj:
    """The JSON body of a raw reply (`serialize=False`): the client's own wrapping of
    every field in objects cost seconds on lists of a few thousand Pods."""
    return _json_of_bytes(response.data)


def _json_of_bytes(data: bytes) -> Obj:
    body = json.loads(data)
    if not isinstance(body, dict):
        raise ValueError(f"the API server answered with a JSON {type(body).__name__}")
    return body


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
        self._hold: _LeaseHold | None = None  # the lock, while this run holds it
        self._snapshot: dict[tuple[str, ...], bytes | None] | None = None  # see snapshot()
        self.writes = 0  # writes started (each calls check_lock first); the Lease's aside

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
        if status == 403 and "exceeded quota" in message:  # admission, not RBAC
            return ApiError(
                f"the API server refused a request (403): {message}",
                status,
                hint="a ResourceQuota of that namespace is used up: raise it or make room, "
                "then re-run",
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

        # The prefix keeps the lookup to this one group: without it the discoverer matches
        # "v1" against every group and fetches each group's resource list (20 requests).
        prefix = "apis" if "/" in api_version else "api"
        try:
            return self._call(
                lambda: self._dynamic.resources.get(
                    prefix=prefix, api_version=api_version, kind=kind
                )
            )
        except ResourceNotFoundError:
            raise NotFoundError(f"the API server does not serve {kind} ({api_version})") from None

    def serves(self, api_version: str, kind: str) -> bool:
        try:
            self._resource(api_version, kind)
        except NotFoundError:
            return False
        return True

    @contextmanager
    def snapshot(self) -> Iterator[None]:
        """Within it, each distinct get and list asks the API server once; asking again
        gives a fresh copy of the first answer. For read-only runs (`status`), whose
        checks read the same Pods, ConfigMaps and istiod Deployments several times. A
        write ends the snapshot: what follows it is read live again.
        """
        self._snapshot = {}
        try:
            yield
        finally:
            self._snapshot = None

    def _read(self, key: tuple[str, ...], request: Callable[[], Any]) -> Obj | None:
        """One read (`request` returns a raw reply); None when the object is not found."""
        snapshot = self._snapshot
        if snapshot is not None and key in snapshot:
            data = snapshot[key]
            return None if data is None else _json_of_bytes(data)

        def fetch() -> tuple[bytes, Obj]:  # the body is read inside: a cut reply is retried
            data = request().data
            return data, _json_of_bytes(data)

        try:
            data, body = self._call(fetch)
        except NotFoundError:
            if snapshot is not None:
                snapshot[key] = None
            raise
        if snapshot is not None:
            snapshot[key] = data
        return body

    def get(self, ref: Ref) -> Obj | None:
        """The live object, or None when it (or its kind) does not exist."""
        try:
            resource = self._resource(ref.api_version, ref.kind)
            return self._read(
                ("get", ref.api_version, ref.kind, ref.namespace or "", ref.name),
                lambda: self._dynamic.get(
                    resource,
                    name=ref.name,
                    namespace=ref.namespace or None,
                    serialize=False,
                    _request_timeout=_REQUEST_TIMEOUT,
                ),
            )
        except NotFoundError:
            return None

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
        result = self._read(
            ("list", api_version, kind, namespace or "", label_selector or ""),
            lambda: self._dynamic.get(
                resource,
                namespace=namespace,
                label_selector=label_selector,
                serialize=False,
                _request_timeout=_REQUEST_TIMEOUT,
            ),
        )
        items = (result or {}).get("items") or []
        for item in items:
            item.setdefault("apiVersion", api_version)
            item.setdefault("kind", kind)
        return list(items)

    # -- writes --------------------------------------------------------------

    def apply(self, obj: Obj, *, force: bool = True) -> Obj:
        """Server-side apply with field manager `kymamesh`."""
        self.check_lock()
        ref = Ref.of(obj)
        resource = self._resource(ref.api_version, ref.kind)
        return self._call(
            lambda: _json_of(
                self._dynamic.server_side_apply(
                    resource,
                    body=obj,
                    name=ref.name,
                    namespace=ref.namespace or None,
                    field_manager=FIELD_MANAGER,
                    force_conflicts=force,
                    serialize=False,
                    _request_timeout=_REQUEST_TIMEOUT,
                )
            )
        )

    def create(self, obj: Obj) -> Obj:
        self.check_lock()
        return self._post(obj)

    def dry_run_create(self, obj: Obj) -> Obj:
        """The object as the API server would create it (admission and mutating webhooks
        run, nothing is stored): a server-side dry run. `metadata.generateName` is enough."""
        return self._post(obj, dry_run="All")

    def _post(self, obj: Obj, **params: Any) -> Obj:
        meta = obj.get("metadata") or {}
        resource = self._resource(obj["apiVersion"], obj["kind"])
        return self._call(
            lambda: _json_of(
                self._dynamic.create(
                    resource,
                    body=obj,
                    namespace=meta.get("namespace") or None,
                    field_manager=FIELD_MANAGER,
                    serialize=False,
                    _request_timeout=_REQUEST_TIMEOUT,
                    **params,
                )
            )
        )

    def replace(self, obj: Obj) -> Obj:
        """Update with the object's resourceVersion (optimistic concurrency)."""
        self.check_lock()
        ref = Ref.of(obj)
        resource = self._resource(ref.api_version, ref.kind)
        return self._call(
            lambda: _json_of(
                self._dynamic.replace(
                    resource,
                    body=obj,
                    name=ref.name,
                    namespace=ref.namespace or None,
                    field_manager=FIELD_MANAGER,
                    serialize=False,
                    _request_timeout=_REQUEST_TIMEOUT,
                )
            )
        )

    def merge_patch(self, ref: Ref, patch: Mapping[str, Any]) -> Obj:
        """A JSON merge patch: changes only the keys given, leaves ownership alone."""
        self.check_lock()
        resource = self._resource(ref.api_version, ref.kind)
        return self._call(
            lambda: _json_of(
                self._dynamic.patch(
                    resource,
                    body=dict(patch),
                    name=ref.name,
                    namespace=ref.namespace or None,
                    content_type="application/merge-patch+json",
                    field_manager=FIELD_MANAGER,
                    serialize=False,
                    _request_timeout=_REQUEST_TIMEOUT,
                )
            )
        )

    def update(self, ref: Ref, edit: Callable[[Obj], Mapping[str, Any] | None]) -> Obj:
        """Read, edit, write: `edit(live)` returns a JSON merge patch (None: nothing to
        change), sent conditional on the resourceVersion it was computed from.

        A 409 means the object changed between the read and the write: the edit is
        made again, once, on a fresh read (tenacity). A second 409 is a ConflictError
        naming the object. NotFoundError when the object does not exist.
        """

        @retry(
            retry=retry_if_exception_type(ConflictError),
            stop=stop_after_attempt(_UPDATE_ATTEMPTS),
            reraise=True,
        )
        def attempt() -> Obj:
            live = self.get(ref)
            if live is None:
                raise NotFoundError(f"{ref} does not exist", 404)
            patch = edit(live)
            if patch is None:
                return live
            meta = dict(patch.get("metadata") or {})
            meta["resourceVersion"] = live["metadata"]["resourceVersion"]
            return self.merge_patch(ref, {**patch, "metadata": meta})

        try:
            return attempt()
        except ConflictError as exc:
            raise ConflictError(
                f"{ref} changed again while kymamesh updated it ({exc.message})",
                409,
                hint="something else keeps rewriting it (a Helm upgrade, an operator); "
                "re-run when it has settled",
            ) from exc

    def delete(self, ref: Ref, *, propagation: str = "Background") -> bool:
        """Delete; False when it was already gone."""
        self.check_lock()
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
        """Wait until every object is ready; on timeout name each one that is not, and why.

        Polls soon after a change (most objects turn ready within a second), then less
        often: WAIT_FIRST_POLL_S, growing by half each time up to WAIT_MAX_POLL_S.
        """
        deadline = time.monotonic() + timeout
        pending: builtins.list[Ref] = builtins.list(refs)
        pause = WAIT_FIRST_POLL_S
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
            time.sleep(min(pause, max(0.0, deadline - time.monotonic())))
            pause = min(pause * 1.5, WAIT_MAX_POLL_S)

    # -- the lock ------------------------------------------------------------

    def check_lock(self) -> None:
        """Raise LockLostError when this run took the lock and no longer holds it.

        Every write of the adapters calls it first, so a run that lost its lock
        stops before its next write.
        """
        self.writes += 1
        if self._snapshot is not None:
            self._snapshot = None  # a write ends the snapshot
        hold = self._hold
        if hold is not None:
            hold.check()

    @contextmanager
    def lock(
        self, namespace: str, wait: float, on_wait: Callable[[str], None] | None = None
    ) -> Iterator[str]:
        """Hold the Lease `kymamesh-lock` in `namespace` while writing.

        A second run waits up to `wait` seconds (telling `on_wait` once per holder
        who holds it), then names the holder. Whether another run's Lease expired
        is judged as client-go's leader election does: by seeing it unchanged for
        its leaseDurationSeconds on the local monotonic clock, never by comparing
        another host's renewTime with this one's clock. While held, the Lease is
        renewed in the background; a run that cannot renew it for
        LOCK_RENEW_DEADLINE_S, or finds it changed by someone else, has lost it,
        and its next write raises LockLostError.
        """
        holder = lock_holder()
        ref = Ref("coordination.k8s.io/v1", "Lease", LOCK_NAME, namespace)
        deadline = time.monotonic() + wait
        seen = _LeaseWatch()
        told: set[str] = set()
        while True:
            hold = self._try_acquire(ref, holder, seen)
            if hold is not None:
                break
            spec = seen.spec
            other = str(spec.get("holderIdentity") or "")
            if on_wait is not None and other and other not in told:
                told.add(other)
                on_wait(_waiting_line(ref, spec, wait))
            if time.monotonic() >= deadline:
                raise LockHeldError(
                    f"another kymamesh run holds the lock Lease {ref}: "
                    f"{other or '(unknown)'} (renewed {spec.get('renewTime')}); "
                    f"waited {wait:.0f}s",
                    hint="wait for that run to finish and try again; a crashed run's lock "
                    f"is taken over once it has gone {LOCK_DURATION_S}s without renewal",
                )
            time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
        self._hold = hold
        stop = threading.Event()
        renewer = threading.Thread(
            target=self._renew_lock, args=(hold, stop), name="kymamesh-lock", daemon=True
        )
        renewer.start()
        try:
            yield holder
        finally:
            stop.set()
            renewer.join(timeout=LOCK_CALL_TIMEOUT[0] + LOCK_CALL_TIMEOUT[1])
            self._hold = None
            self._release(hold)

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

    def _lease_call(self, verb: str, ref: Ref, body: Obj | None = None) -> Obj | None:
        """One call on the Lease, with a short request timeout; never fenced (it is the fence).

        get returns None when the Lease does not exist; create and replace return
        the object written.
        """
        resource = self._resource(ref.api_version, ref.kind)
        namespace = ref.namespace or None
        if verb == "get":
            try:
                found = self._call(
                    lambda: self._dynamic.get(
                        resource,
                        name=ref.name,
                        namespace=namespace,
                        _request_timeout=LOCK_CALL_TIMEOUT,
                    )
                )
            except NotFoundError:
                return None
        elif verb == "create":
            found = self._call(
                lambda: self._dynamic.create(
                    resource,
                    body=body,
                    namespace=namespace,
                    field_manager=FIELD_MANAGER,
                    _request_timeout=LOCK_CALL_TIMEOUT,
                )
            )
        elif verb == "replace":
            found = self._call(
                lambda: self._dynamic.replace(
                    resource,
                    body=body,
                    name=ref.name,
                    namespace=namespace,
                    field_manager=FIELD_MANAGER,
                    _request_timeout=LOCK_CALL_TIMEOUT,
                )
            )
        else:
            raise ValueError(verb)
        return dict(found.to_dict())

    def _try_acquire(self, ref: Ref, holder: str, seen: _LeaseWatch) -> _LeaseHold | None:
        """One attempt to take the Lease; None while another run holds it."""
        started = time.monotonic()
        live = self._lease_call("get", ref)
        if live is None:
            try:
                written = self._lease_call("create", ref, self._lease_body(ref, holder))
            except ConflictError:
                return None  # made meanwhile (by another run, or by this one: seen next time)
            assert written is not None
            return _LeaseHold(ref, holder, written, started)
        spec = live.get("spec") or {}
        if spec.get("holderIdentity") == holder:
            # this run's own create or takeover, whose answer was lost and then retried
            return _LeaseHold(ref, holder, live, started)
        seen.observe(live)
        if spec.get("holderIdentity") and not seen.expired():
            return None
        body = self._lease_body(ref, holder)
        body["metadata"]["resourceVersion"] = live["metadata"]["resourceVersion"]
        try:
            written = self._lease_call("replace", ref, body)
        except ConflictError:
            return None
        assert written is not None
        return _LeaseHold(ref, holder, written, started)

    def _renew_lock(self, hold: _LeaseHold, stop: threading.Event) -> None:
        """Renew every LOCK_RENEW_EVERY_S (after a failure every LOCK_RETRY_EVERY_S) until
        stopped or the lock is lost; a loss is recorded in `hold` for the next write."""
        pause = LOCK_RENEW_EVERY_S
        while not stop.wait(pause):
            try:
                self._renew_once(hold)
            except LockLostError as exc:
                hold.lose(exc.message)
                return
            except Exception as exc:  # transient or not: retried until the deadline
                hold.last_error = str(exc) or type(exc).__name__
                if hold.overdue():
                    hold.lose(hold.overdue_message())
                    return
                pause = LOCK_RETRY_EVERY_S
            else:
                pause = LOCK_RENEW_EVERY_S

    def _renew_once(self, hold: _LeaseHold) -> None:
        """Rewrite renewTime, conditional on the resourceVersion this run last wrote."""
        started = time.monotonic()
        ref = hold.ref
        body = self._lease_body(ref, hold.holder, hold.acquire_time)
        body["metadata"]["resourceVersion"] = hold.resource_version
        try:
            written = self._lease_call("replace", ref, body)
        except (ConflictError, NotFoundError):
            live = self._lease_call("get", ref)
            spec = (live or {}).get("spec") or {}
            mine = {k: body["spec"][k] for k in ("holderIdentity", "renewTime")}
            if live is not None and {k: spec.get(k) for k in mine} == mine:
                written = live  # this renewal did land; its answer was lost and the retry refused
            elif live is None:
                raise LockLostError(
                    f"the lock Lease {ref} was deleted while this run held it"
                ) from None
            else:
                raise LockLostError(
                    f"the lock Lease {ref} was changed by someone else while this run held it "
                    f"(holder now {spec.get('holderIdentity') or '(none)'})"
                ) from None
        assert written is not None
        hold.renewed(written, started)

    def _release(self, hold: _LeaseHold) -> None:
        """Delete the Lease, only if it is still the one this run last wrote."""
        if hold.lost is not None:
            return
        ref = hold.ref
        try:
            resource = self._resource(ref.api_version, ref.kind)
            self._call(
                lambda: self._dynamic.delete(
                    resource,
                    name=ref.name,
                    namespace=ref.namespace or None,
                    body={"preconditions": {"resourceVersion": hold.resource_version}},
                    _request_timeout=LOCK_CALL_TIMEOUT,
                )
            )
        except Exception:  # changed by someone else (409), gone, or unreachable: leave it
            pass


def lock_holder() -> str:
    """This run's identity in the Lease: host, user id, process id and a random part.

    No user-name lookup: under an arbitrary user id with no passwd entry (as in
    many containers) there is no name, but there is always a number.
    """
    try:
        host = socket.gethostname() or "unknown-host"
    except OSError:
        host = "unknown-host"
    getuid = getattr(os, "getuid", None)
    uid = f"uid-{getuid()}" if getuid is not None else "uid-unknown"
    return f"{host}/{uid}/pid-{os.getpid()}/{uuid.uuid4().hex[:8]}"


def _waiting_line(ref: Ref, spec: Mapping[str, Any], wait: float) -> str:
    holder = spec.get("holderIdentity")
    duration = int(spec.get("leaseDurationSeconds") or LOCK_DURATION_S)
    until = ""
    renewed = spec.get("renewTime")
    if renewed:
        try:
            end = _parse_time(str(renewed)) + timedelta(seconds=duration)
            until = f" until {end.strftime('%H:%M:%S')} UTC unless renewed (its clock)"
        except ValueError:
            until = ""
    return (
        f"waiting for the lock: Lease {ref} is held by {holder}{until}; "
        f"taken over once it goes {duration}s without renewal; waiting at most {wait:.0f}s"
    )


def _parse_time(text: str) -> datetime:
    text = text.replace("Z", "+00:00")
    return datetime.fromisoformat(text)


class _LeaseWatch:
    """Another run's Lease as this run saw it, and since when (local monotonic clock).

    It counts as expired once seen unchanged for its leaseDurationSeconds.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self.spec: Mapping[str, Any] = {}
        self._version: tuple[str, str] | None = None
        self._since = 0.0

    def observe(self, live: Mapping[str, Any]) -> None:
        spec = live.get("spec") or {}
        version = (
            str((live.get("metadata") or {}).get("resourceVersion") or ""),
            str(spec.get("renewTime") or ""),
        )
        self.spec = spec
        if version != self._version:
            self._version = version
            self._since = self._clock()

    def expired(self) -> bool:
        duration = int(self.spec.get("leaseDurationSeconds") or LOCK_DURATION_S)
        return self._version is not None and self._clock() - self._since >= duration


class _LeaseHold:
    """The Lease this run holds: the resourceVersion it last wrote, and when the write
    that produced it started (local monotonic clock)."""

    def __init__(
        self,
        ref: Ref,
        holder: str,
        written: Mapping[str, Any],
        started: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ref = ref
        self.holder = holder
        self._clock = clock
        self._mutex = threading.Lock()
        self.acquire_time = str((written.get("spec") or {}).get("acquireTime") or "") or None
        self.resource_version = str(written["metadata"]["resourceVersion"])
        self.renewed_at = started
        self.lost: str | None = None
        self.last_error = ""

    def renewed(self, written: Mapping[str, Any], started: float) -> None:
        with self._mutex:
            self.resource_version = str(written["metadata"]["resourceVersion"])
            self.renewed_at = started
            self.last_error = ""

    def lose(self, why: str) -> None:
        with self._mutex:
            if self.lost is None:
                self.lost = why

    def overdue(self) -> bool:
        return self._clock() - self.renewed_at > LOCK_RENEW_DEADLINE_S

    def overdue_message(self) -> str:
        return (
            f"the lock Lease {self.ref} could not be renewed for {LOCK_RENEW_DEADLINE_S}s"
            + (f" (last error: {self.last_error})" if self.last_error else "")
            + f"; after {LOCK_DURATION_S}s without renewal another run may take it"
        )

    def check(self) -> None:
        with self._mutex:
            why = self.lost
        if why is None and self.overdue():
            self.lose(self.overdue_message())
            why = self.lost
        if why is not None:
            raise LockLostError(
                f"this run lost its lock and stopped before its next write: {why}",
                hint="another kymamesh run may be writing now; when it has finished, re-run "
                "this command (it converges); a slow or unreachable API server can also "
                "cause this",
            )


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
            # Pods that cannot be created (a webhook refuses them, a quota, ...): the
            # controller copies its ReplicaSet's ReplicaFailure condition here.
            failure = conditions.get("ReplicaFailure", {})
            if failure.get("status") == "True":
                why = failure.get("message") or "no message"
                return f"{updated} of {want} replicas updated; {failure.get('reason')}: {why}"
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
