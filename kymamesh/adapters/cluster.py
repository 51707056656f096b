"""The cluster adapter: the one place that speaks to the Kubernetes API.

Objects are plain dicts (as in a manifest) addressed by `Ref`. API errors are
mapped once, here, to the named errors of `kymamesh.errors`; transient ones
(connection reset, 429, 5xx) are retried with tenacity, others are not. A 409 on
an update made with `update` (read, edit, write conditional on the
resourceVersion) is retried once with a fresh read. Every write carries the
field manager and user agent `kymamesh`, and is fenced by the lock
(`kymamesh.adapters.lock`): while a run holds the lock Lease, a write after the lock was
lost raises LockLostError instead of reaching the API.
"""

from __future__ import annotations

import builtins
import http.client
import json
import math
import os
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, TypeVar, cast

from tenacity import (
    retry,
    retry_if_exception,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential,
)

from kymamesh import FIELD_MANAGER, __version__
from kymamesh.adapters.lock import LOCK_API_VERSION, LOCK_CALL_TIMEOUT, LeaseLock
from kymamesh.errors import (
    ApiError,
    ClusterUnreachableError,
    ConflictError,
    ForbiddenError,
    IstiodUnreachableError,
    NotFoundError,
    PreconditionError,
    yaml_problem,
)
from kymamesh.istio.versions import Version
from kymamesh.waits import wait_until

Obj = dict[str, Any]
T = TypeVar("T")

USER_AGENT = f"kymamesh/{__version__}"
_REQUEST_TIMEOUT = (5, 30)  # connect, read
WAIT_FIRST_POLL_S = 0.05  # wait_ready: the first pause between two looks
WAIT_MAX_POLL_S = 1.0  # ... and the longest
LIST_PAGE = 500  # list_pages: objects per request
READ_AHEAD = 8  # wait_ready: gets of several objects at once
# Accept header of a list of each object's metadata alone (Cluster.list(metadata_only=True))
_METADATA_LIST = "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1"
_ATTEMPTS = 4  # one API call, tried at most this often on transient faults
_UPDATE_ATTEMPTS = 2  # an update that met a conflict is made once more, on a fresh read
ISTIOD_DEBUG_PORT = 15014  # istiod's monitoring port: /metrics, /version, /debug/*
ISTIOD_DEBUG_TIMEOUT_S = 10.0  # one istiod Pod: port-forward, request and the whole answer
_ISTIOD_DEBUG_HINT = (
    "check that istiod runs (`kubectl -n {ns} get pods -l app=istiod`, its log with `kubectl "
    "-n {ns} logs POD`) and that your credentials may create pods/portforward in {ns}"
)


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


_DISCOVERER: Any = None


def _discoverer() -> Any:
    """The client library's lazy discoverer, kept in memory and refreshed narrowly.

    The library writes its whole discovery to a JSON file after every group it fetches
    (a third of a fresh install's CPU time went to that), and on a kind it does not know
    it forgets everything it discovered and asks for every group again (`/version`,
    `/apis`, then each group used). Here nothing is written, and a kind it does not know
    makes it ask again for the list of groups and for the resources of the kind's own
    group version only (a CRD installed since is found; the rest is kept)."""
    global _DISCOVERER
    if _DISCOVERER is not None:
        return _DISCOVERER
    from kubernetes.dynamic.discovery import LazyDiscoverer

    class Discoverer(LazyDiscoverer):  # type: ignore[misc]
        _wanted: dict[str, Any] | None = None
        _searching = threading.RLock()  # one lookup at a time: they share what they found

        def _write_cache(self) -> None:
            pass

        def search(self, **kwargs: Any) -> Any:
            with self._searching:
                self._wanted = kwargs
                try:
                    return super().search(**kwargs)
                finally:
                    self._wanted = None

        def invalidate_cache(self) -> None:
            wanted = self._wanted
            resources = self._cache.get("resources")
            if wanted is None or not resources:  # at start, or a search of everything
                super().invalidate_cache()
                return
            core = resources.get("api")
            self.parse_api_groups(request_resources=False, update=True)  # the groups anew
            if core is not None:  # the core group's resources stay known
                resources["api"] = core
            prefix = wanted.get("prefix") or "apis"
            api_version = str(wanted.get("api_version") or "")
            group, _, version = api_version.rpartition("/")
            known = resources.get(prefix, {}).get(group, {}).get(version)
            if known is not None:  # asked again on the next search
                known.resources = {}

    _DISCOVERER = Discoverer
    return Discoverer


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
        # a name no file has: the discovery is kept in memory for this run (_discoverer)
        cache = os.path.join(tempfile.gettempdir(), f"kymamesh-discovery-{uuid.uuid4().hex}.json")
        self._dynamic = self._call(
            lambda: DynamicClient(api_client, cache_file=cache, discoverer=_discoverer())
        )
        self._lock = LeaseLock(self)
        self._snapshot: dict[tuple[str, ...], bytes | None] | None = None  # see snapshot()
        self._remembered: dict[tuple[str, ...], Any] | None = None  # see remembered()
        self._resources: dict[tuple[str, str], Any] = {}  # see _resource()
        self.writes = 0  # writes started (each calls check_lock first); the Lease's aside
        self._watching = True  # wait_ready watches; False once a watch was refused

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

    def _call(self, fn: Callable[[], T], *, fenced: bool = False, attempts: int = _ATTEMPTS) -> T:
        """Run one API call: retry transient failures, map the rest to named errors.

        `fenced` (every write): the lock is checked before each attempt, not only the
        first, since the retries of one write can outlast the lock (LockLostError).
        """

        @retry(
            retry=retry_if_exception(_is_transient),
            stop=stop_after_attempt(attempts),
            wait=wait_exponential(multiplier=0.3, max=3),
            reraise=True,
        )
        def attempt() -> T:
            if fenced:
                self.check_lock()
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
        self._api.close()

    # -- reads ---------------------------------------------------------------

    def server_version(self) -> Version:
        """The API server's version, as the discovery read it when connecting."""
        info = self._dynamic.version.get("kubernetes") or {}
        return Version.parse(str(info.get("gitVersion") or ""))

    def _resource(self, api_version: str, kind: str) -> Any:
        """The discovered API resource of a kind, looked up once per run (the discoverer
        walks its whole cache on every lookup, which every request paid): a kind found
        stays found; one not served is asked about again."""
        known = self._resources.get((api_version, kind))
        if known is not None:
            return known
        from kubernetes.dynamic.exceptions import ResourceNotFoundError

        # The prefix keeps the lookup to this one group: without it the discoverer matches
        # "v1" against every group and fetches each group's resource list (20 requests).
        prefix = "apis" if "/" in api_version else "api"
        try:
            found = self._call(
                lambda: self._dynamic.resources.get(
                    prefix=prefix, api_version=api_version, kind=kind
                )
            )
        except ResourceNotFoundError:
            raise NotFoundError(f"the API server does not serve {kind} ({api_version})") from None
        self._resources[(api_version, kind)] = found
        return found

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
        self._remembered = {}
        try:
            yield
        finally:
            self._snapshot = None
            self._remembered = None

    def remembered(self, key: tuple[str, ...], compute: Callable[[], T]) -> T:
        """Within a snapshot, what `compute()` made of the cluster's answers, made once per
        `key` (e.g. every Pod, cut to what kymamesh reads of it, parsed once per `status`
        run instead of once per check); outside one, or after a write, made every time.
        The answer is shared: callers must not change it."""
        memo = self._remembered
        if memo is None:
            return compute()
        if key not in memo:
            memo[key] = compute()
        return cast(T, memo[key])

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
        *,
        metadata_only: bool = False,
    ) -> list[Obj]:
        """All objects of a kind (in a namespace, with labels); [] when the kind is not served.

        `metadata_only`: each object's `metadata` alone (the API's PartialObjectMetadata),
        for callers that read nothing else (owner references, labels): the API server
        encodes, and kymamesh parses, a fraction of each object."""
        try:
            resource = self._resource(api_version, kind)
        except NotFoundError:
            return []
        headers = {"Accept": _METADATA_LIST} if metadata_only else {}
        result = self._read(
            ("list", api_version, kind, namespace or "", label_selector or "", str(metadata_only)),
            lambda: self._dynamic.get(
                resource,
                namespace=namespace,
                label_selector=label_selector,
                header_params=dict(headers),
                serialize=False,
                _request_timeout=_REQUEST_TIMEOUT,
            ),
        )
        items = (result or {}).get("items") or []
        for item in items:
            if metadata_only:  # they come as meta.k8s.io/v1 PartialObjectMetadata
                item["apiVersion"], item["kind"] = api_version, kind
            else:
                item.setdefault("apiVersion", api_version)
                item.setdefault("kind", kind)
        return list(items)

    def list_pages(
        self,
        api_version: str,
        kind: str,
        namespace: str | None = None,
        label_selector: str | None = None,
        limit: int = LIST_PAGE,
    ) -> Iterator[builtins.list[Obj]]:
        """All objects of a kind, `limit` at a time (the API's chunked list: `limit` and
        `continue`); nothing when the kind is not served. For kinds of which a cluster has
        many (Pods): a caller that keeps a part of each object never holds every whole
        object at once. The next page is asked for while the caller works on this one (the
        API server encodes it meanwhile), so at most two pages are held. Not kept in a
        snapshot (see `remembered`)."""
        try:
            resource = self._resource(api_version, kind)
        except NotFoundError:
            return

        def fetch(token: str | None) -> Obj:
            def request() -> Obj:
                data = self._dynamic.get(
                    resource,
                    namespace=namespace,
                    label_selector=label_selector,
                    limit=limit,
                    _continue=token,
                    serialize=False,
                    _request_timeout=_REQUEST_TIMEOUT,
                ).data
                return _json_of_bytes(data)

            return self._call(request)

        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="list-pages") as ahead:
            coming = ahead.submit(fetch, None)
            while True:
                body = coming.result()
                items = body.get("items") or []
                for item in items:
                    item.setdefault("apiVersion", api_version)
                    item.setdefault("kind", kind)
                token = (body.get("metadata") or {}).get("continue") or None
                del body
                if token is not None:
                    coming = ahead.submit(fetch, token)
                yield items
                if token is None:
                    return

    # -- istiod's debug views -------------------------------------------------

    def istiod_debug(
        self, path: str, *, revision: str | None = None, namespace: str = "istio-system"
    ) -> dict[str, bytes]:
        """GET `path` (e.g. `/debug/mesh`) on port 15014 of every ready istiod Pod (of
        `revision`, or of all revisions): {Pod name: body}. As istioctl does, through a
        port-forward to each Pod, at once: istiod's `/debug` handlers answer requests
        from localhost without credentials (a port-forward arrives from inside the Pod),
        while the API server's service proxy reaches it from outside, without the caller's
        credentials (401). Each Pod has ISTIOD_DEBUG_TIMEOUT_S for all of it.

        Raises IstiodUnreachableError when no istiod Pod is ready, or when one did not
        answer with 200 (naming each such Pod and what failed; the others' answers ride
        along in `answers`).
        """
        if not path.startswith("/"):
            raise ValueError(f"istiod_debug: path {path!r} must start with '/'")
        selector = "app=istiod" + (f",istio.io/rev={revision}" if revision else "")
        which = f"istiod Pod in {namespace}" + (f" of revision {revision}" if revision else "")
        hint = _ISTIOD_DEBUG_HINT.format(ns=namespace)
        pods = sorted(
            p["metadata"]["name"]
            for p in self.list("v1", "Pod", namespace=namespace, label_selector=selector)
            if _pod_ready(p)
        )
        if not pods:
            raise IstiodUnreachableError(f"no ready {which}", hint=hint)
        answers: dict[str, bytes] = {}
        failures: dict[str, str] = {}
        done = threading.Lock()

        def fetch(pod: str) -> None:
            try:
                body = self._pod_http_get(namespace, pod, ISTIOD_DEBUG_PORT, path)
            except _PodGetError as exc:
                with done:
                    failures[pod] = str(exc)
                return
            with done:
                answers[pod] = body

        threads = {
            pod: threading.Thread(target=fetch, args=(pod,), name=f"istiod-debug {pod}")
            for pod in pods
        }
        deadline = time.monotonic() + ISTIOD_DEBUG_TIMEOUT_S + 1
        for thread in threads.values():
            thread.daemon = True  # a connect that never returns must not hold the exit
            thread.start()
        for thread in threads.values():
            thread.join(max(0.0, deadline - time.monotonic()))
        with done:
            for pod in pods:
                if pod not in answers and pod not in failures:
                    failures[pod] = f"no answer within {ISTIOD_DEBUG_TIMEOUT_S:.0f}s"
            if failures:
                said = "; ".join(f"Pod {namespace}/{pod}: {why}" for pod, why in failures.items())
                raise IstiodUnreachableError(
                    f"GET {path} on istiod's port {ISTIOD_DEBUG_PORT} failed for "
                    f"{len(failures)} of {len(pods)} {which.replace('Pod', 'Pods', 1)}: {said}",
                    hint=hint,
                    answers=answers,
                    failures=failures,
                )
            return dict(answers)

    def pod_log(
        self,
        namespace: str,
        pod: str,
        *,
        container: str | None = None,
        since_time: str | None = None,
        limit_bytes: int = 1 << 20,
    ) -> str:
        """A Pod's log (of `container`), the lines written at `since_time` (RFC 3339) or
        later, at most `limit_bytes` of them (from the start). Raises NotFoundError when
        the Pod is gone."""
        params: builtins.list[tuple[str, str]] = [("limitBytes", str(limit_bytes))]
        if container:
            params.append(("container", container))
        if since_time:
            params.append(("sinceTime", since_time))
        path = f"/api/v1/namespaces/{namespace}/pods/{pod}/log"
        reply = self._call(
            lambda: self._dynamic.request(
                "GET",
                path,
                query_params=builtins.list(params),
                header_params={"Accept": "*/*"},
                _request_timeout=_REQUEST_TIMEOUT,
            )
        )
        data = getattr(reply, "data", reply)  # text/plain may come back decoded already
        return data.decode("utf-8", "replace") if isinstance(data, bytes) else str(data)

    def _pod_http_get(self, namespace: str, pod: str, port: int, path: str) -> bytes:
        """One HTTP GET on a Pod's port through a port-forward (websocket, pods/portforward)."""
        from kubernetes import client
        from kubernetes.stream import portforward

        timeout = ISTIOD_DEBUG_TIMEOUT_S
        # An ApiClient of its own: the library's portforward swaps the client's call_api
        # while it connects, which would cross with other threads sharing one client.
        api = client.ApiClient(self._api.configuration)
        api.user_agent = USER_AGENT
        try:
            try:
                forward = portforward(_PodPortForward(api).connect, pod, namespace, ports=port)
            except Exception as exc:  # the library raises ApiException(status=0, reason=...)
                reason = getattr(exc, "reason", None) or exc
                raise _PodGetError(f"port-forward to port {port}: {reason}") from None
            try:
                sock = forward.socket(port)
                sock.settimeout(timeout)
                conn = http.client.HTTPConnection("localhost", port, timeout=timeout)
                conn.sock = sock
                conn.request("GET", path, headers={"User-Agent": USER_AGENT})
                resp = conn.getresponse()
                body = resp.read()
            except (OSError, http.client.HTTPException) as exc:
                error = forward.error(port)  # what the kubelet said, if it said anything
                why = error.strip() if error else f"{type(exc).__name__}: {exc}"
                raise _PodGetError(f"GET {path} on port {port}: {why}") from None
            finally:
                forward.close()
        finally:
            api.close()
        if resp.status != 200:
            text = body[:200].decode("utf-8", "replace").strip()
            raise _PodGetError(
                f"GET {path} on port {port}: HTTP {resp.status}" + (f": {text}" if text else "")
            )
        return body

    # -- writes --------------------------------------------------------------

    def apply(self, obj: Obj, *, force: bool = True) -> Obj:
        """Server-side apply with field manager `kymamesh`."""
        return self._server_side_apply(Ref.of(obj), obj, FIELD_MANAGER, force)

    def release_field_manager(self, ref: Ref, manager: str) -> Obj:
        """Make another installer's field manager give up its fields of an object: a
        server-side apply, as `manager`, of an object that sets nothing. The fields that
        manager alone owned are removed; fields another manager owns too stay (Kubernetes'
        documented way to hand fields over, since ownership moves only by applying)."""
        meta: dict[str, Any] = {"name": ref.name}
        if ref.namespace:
            meta["namespace"] = ref.namespace
        body = {"apiVersion": ref.api_version, "kind": ref.kind, "metadata": meta}
        return self._server_side_apply(ref, body, manager, False)

    def _server_side_apply(self, ref: Ref, body: Obj, manager: str, force: bool) -> Obj:
        """One server-side apply of `body` as field manager `manager` (fenced)."""
        self.check_lock()
        resource = self._resource(ref.api_version, ref.kind)
        return self._call(
            lambda: _json_of(
                self._dynamic.server_side_apply(
                    resource,
                    body=body,
                    name=ref.name,
                    namespace=ref.namespace or None,
                    field_manager=manager,
                    force_conflicts=force,
                    serialize=False,
                    _request_timeout=_REQUEST_TIMEOUT,
                )
            ),
            fenced=True,
        )

    def create(self, obj: Obj) -> Obj:
        self.check_lock()
        return self._post(obj, fenced=True)

    def dry_run_create(self, obj: Obj) -> Obj:
        """The object as the API server would create it (admission and mutating webhooks
        run, nothing is stored): a server-side dry run. `metadata.generateName` is enough."""
        return self._post(obj, fenced=False, dry_run="All")

    def _post(self, obj: Obj, fenced: bool, **params: Any) -> Obj:
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
            ),
            fenced=fenced,
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
            ),
            fenced=True,
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
            ),
            fenced=True,
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
                ),
                fenced=True,
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

        Looks again as soon as the first object not ready changes (a watch of it), at the
        latest WAIT_FIRST_POLL_S later at first, growing by half each time up to
        WAIT_MAX_POLL_S (where no watch can be made: sleeps as long).
        """
        pending: builtins.list[Ref] = builtins.list(refs)
        versions: dict[Ref, str] = {}  # the resourceVersion seen of each object not ready

        def not_ready() -> str | None:
            nonlocal pending
            reasons = []
            still = []
            for ref, obj in zip(pending, self._get_all(pending), strict=True):
                why = not_ready_reason(ref, obj)
                if why is not None:
                    still.append(ref)
                    reasons.append(f"{ref} ({why})")
                    meta = (obj or {}).get("metadata") or {}
                    versions[ref] = str(meta.get("resourceVersion") or "")
            pending = still
            if not pending:
                return None
            if on_poll:
                on_poll(reasons)
            return "; ".join(reasons)

        def pause(seconds: float) -> None:
            self._watch_change(pending[0], versions.get(pending[0], ""), seconds)

        wait_until(
            not_ready,
            timeout,
            lambda seen: f"timed out after {timeout:.0f}s; not ready: {seen}",
            hint="look at these objects with kubectl describe; raise --timeout if the "
            "cluster is slow",
            first=WAIT_FIRST_POLL_S,
            most=WAIT_MAX_POLL_S,
            grow=1.5,
            pause=pause,
        )

    def _get_all(self, refs: builtins.list[Ref]) -> builtins.list[Obj | None]:
        """`get` of each ref, READ_AHEAD at a time (the CRDs of a chart are many)."""
        if len(refs) < 2:
            return [self.get(ref) for ref in refs]
        from concurrent.futures import ThreadPoolExecutor

        first = self.get(refs[0])  # alone: it looks the kind up, the others find it known
        with ThreadPoolExecutor(min(READ_AHEAD, len(refs) - 1)) as pool:
            return [first, *pool.map(self.get, refs[1:])]

    def _watch_change(self, ref: Ref, resource_version: str, seconds: float) -> None:
        """Return once `ref` changed after `resource_version` (a watch of that one object,
        ended by its first event), or after `seconds`. Without a version (the object was not
        found), or when the watch cannot be made or breaks, sleeps the rest instead: the
        caller looks at the object again either way."""
        deadline = time.monotonic() + seconds
        changed = False
        if resource_version and seconds > 0 and self._watching:
            from kubernetes.client.rest import ApiException

            try:
                changed = self._first_event(ref, resource_version, deadline)
            except ApiException:  # refused (no right to watch?): poll from now on
                self._watching = False
            except Exception:  # a broken watch only ends the pause early
                pass
        left = deadline - time.monotonic()
        if left > 0 and not changed:
            time.sleep(left)

    def _first_event(self, ref: Ref, resource_version: str, deadline: float) -> bool:
        """Whether the API server sent an event of a watch of `ref` from `resource_version`
        before `deadline` (the watch asks the server to end it then, in whole seconds)."""
        resource = self._resource(ref.api_version, ref.kind)
        path = resource.path(namespace=ref.namespace or None)
        timeout = max(1, math.ceil(deadline - time.monotonic()))
        params = [
            ("watch", "true"),
            ("fieldSelector", f"metadata.name={ref.name}"),
            ("resourceVersion", resource_version),
            ("timeoutSeconds", str(timeout)),
        ]
        reply = self._dynamic.request(
            "GET",
            path,
            query_params=params,
            serialize=False,
            _request_timeout=(_REQUEST_TIMEOUT[0], timeout + 2),
        )
        try:
            for chunk in reply.stream(None):
                if chunk.strip():  # an event: the object changed, or an error ended the watch
                    return b'"type":"ERROR"' not in chunk.replace(b" ", b"")
                if time.monotonic() >= deadline:
                    break
            return False
        finally:
            reply.close()  # not read to its end: the connection is not reused

    # -- the lock ------------------------------------------------------------

    def check_lock(self) -> None:
        """Raise LockLostError when this run took the lock and no longer holds it.

        Every write of the adapters calls it first, so a run that lost its lock
        stops before its next write.
        """
        self.writes += 1
        if self._snapshot is not None:
            self._snapshot = None  # a write ends the snapshot
            self._remembered = None
        self.fence()

    def fence(self) -> None:
        """The lock check alone, before a write is made (no write is counted): raise
        LockLostError when this run took the lock and no longer holds it."""
        self._lock.check()

    def lock(
        self, namespace: str, wait: float, on_wait: Callable[[str], None] | None = None
    ) -> AbstractContextManager[str]:
        """Hold the lock Lease in `namespace` while writing (see `kymamesh.adapters.lock`)."""
        return self._lock.hold(namespace, wait, on_wait)

    def lock_held_by(self, namespace: str) -> str | None:
        """Who holds the lock Lease of `namespace` now (one read); None when nobody."""
        return self._lock.held_by(namespace)

    # The calls on the lock Lease (kymamesh.adapters.lock.LeaseApi): a short request timeout, and
    # never fenced (they are the fence). `retry=False`: one attempt (a renewal; the lock
    # makes the next one on its own schedule).

    def _lease_call(self, request: Callable[[Any], Any], retry: bool) -> Any:
        resource = self._resource(LOCK_API_VERSION, "Lease")
        return self._call(lambda: request(resource), attempts=_ATTEMPTS if retry else 1)

    def lease_get(self, namespace: str, name: str, *, retry: bool = True) -> Obj | None:
        try:
            found = self._lease_call(
                lambda resource: self._dynamic.get(
                    resource, name=name, namespace=namespace, _request_timeout=LOCK_CALL_TIMEOUT
                ),
                retry,
            )
        except NotFoundError:
            return None
        return dict(found.to_dict())

    def lease_create(self, body: Obj, *, retry: bool = True) -> Obj:
        found = self._lease_call(
            lambda resource: self._dynamic.create(
                resource,
                body=body,
                namespace=body["metadata"]["namespace"],
                field_manager=FIELD_MANAGER,
                _request_timeout=LOCK_CALL_TIMEOUT,
            ),
            retry,
        )
        return dict(found.to_dict())

    def lease_replace(self, body: Obj, *, retry: bool = True) -> Obj:
        found = self._lease_call(
            lambda resource: self._dynamic.replace(
                resource,
                body=body,
                name=body["metadata"]["name"],
                namespace=body["metadata"]["namespace"],
                field_manager=FIELD_MANAGER,
                _request_timeout=LOCK_CALL_TIMEOUT,
            ),
            retry,
        )
        return dict(found.to_dict())

    def lease_delete(
        self, namespace: str, name: str, resource_version: str, *, retry: bool = True
    ) -> None:
        self._lease_call(
            lambda resource: self._dynamic.delete(
                resource,
                name=name,
                namespace=namespace,
                body={"preconditions": {"resourceVersion": resource_version}},
                _request_timeout=LOCK_CALL_TIMEOUT,
            ),
            retry,
        )

    # -- what a peer cluster needs to reach this one (multi-cluster) -----------

    def api_server_ca(self) -> bytes | None:
        """The CA bundle (PEM) this connection trusts the API server with; None when the
        kubeconfig gives none (the system's trust store) or skips verification."""
        configuration = self._api.configuration
        path = getattr(configuration, "ssl_ca_cert", None)
        if not path or not getattr(configuration, "verify_ssl", True):
            return None
        try:
            with open(path, "rb") as f:
                return f.read()
        except OSError:
            return None

    def request_token(
        self,
        namespace: str,
        service_account: str,
        seconds: int,
        bound_secret: tuple[str, str] | None = None,
    ) -> tuple[str, str]:
        """A token of `service_account` (TokenRequest, the API server's default audience)
        valid for `seconds` (the API server may shorten it), bound to Secret
        (name, uid) when given: deleting that Secret revokes the token. Returns (token,
        expiration timestamp). The token is for the caller to store, never to print."""
        from kubernetes import client

        self.check_lock()
        self.writes += 1
        spec: dict[str, Any] = {"expirationSeconds": seconds}
        if bound_secret is not None:
            spec["boundObjectRef"] = {
                "apiVersion": "v1",
                "kind": "Secret",
                "name": bound_secret[0],
                "uid": bound_secret[1],
            }
        body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec}
        api = client.CoreV1Api(self._api)
        answer = self._call(
            lambda: _json_of(
                api.create_namespaced_service_account_token(
                    service_account,
                    namespace,
                    body,
                    _preload_content=False,
                    _request_timeout=_REQUEST_TIMEOUT,
                )
            ),
            fenced=True,
        )
        status = answer.get("status") or {}
        return str(status.get("token") or ""), str(status.get("expirationTimestamp") or "")

    def token_works(self, token: str) -> bool | None:
        """Whether the API server accepts `token` (a TokenReview; reads nothing else).
        None when this connection may not ask."""
        body = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenReview",
            "spec": {"token": token},
        }
        try:
            answer = self._post(body, fenced=False)
        except ForbiddenError:
            return None
        return bool((answer.get("status") or {}).get("authenticated"))


def probe_api_server(url: str, ca_pem: bytes | None, timeout: float = 5.0) -> str | None:
    """Whether an API server answers at `url` over TLS verified with `ca_pem` (or the
    system's trust store): None when it does (any HTTP answer, 401 included), else why not.
    No credentials are sent."""
    import ssl
    import urllib.error
    import urllib.request

    context = ssl.create_default_context()
    if ca_pem:
        try:
            context.load_verify_locations(cadata=ca_pem.decode("ascii", "replace"))
        except (ssl.SSLError, ValueError) as exc:
            return f"its CA is not a PEM bundle ({exc})"
    request = urllib.request.Request(
        url.rstrip("/") + "/version", headers={"User-Agent": USER_AGENT}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout, context=context):
            return None
    except urllib.error.HTTPError:
        return None  # it answered (401/403 without credentials): reachable
    except urllib.error.URLError as exc:
        return str(getattr(exc, "reason", exc))
    except (OSError, ValueError) as exc:
        return f"{type(exc).__name__}: {exc}"


class _PodPortForward:
    """The one API method `kubernetes.stream.portforward` needs (GET pods/NAME/portforward),
    made here as the generated CoreV1Api makes it: that module is 4 MB of Python and takes
    seconds to import, which every `status` would pay."""

    def __init__(self, api_client: Any) -> None:
        self.api_client = api_client  # portforward() finds it through the bound method

    def connect(self, name: str, namespace: str, *, ports: int, **_options: Any) -> Any:
        path = f"/api/v1/namespaces/{namespace}/pods/{name}/portforward"
        headers: dict[str, str] = {}
        self.api_client.update_params_for_auth(headers, [], ["BearerToken"], path, "GET", None)
        url = f"{self.api_client.configuration.host}{path}?ports={ports}"
        return self.api_client.call_api("GET", url, header_params=headers).response


class _PodGetError(Exception):
    """One Pod's request failed; the message says what, for IstiodUnreachableError."""


def _pod_ready(pod: Obj) -> bool:
    if (pod.get("metadata") or {}).get("deletionTimestamp"):
        return False
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


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
