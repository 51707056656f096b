"""Shared by the mesh-step tests: an in-memory stand-in for `kymamesh.cluster.Cluster`
(for the pure unit tests) and samples of the Istio ConfigMaps as the charts render them."""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from typing import Any

from kymamesh.cluster import Obj, Ref
from kymamesh.errors import ConflictError, NotFoundError

CRD_KINDS = {("security.istio.io/v1", "PeerAuthentication")}


def merge(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, Mapping):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, Mapping) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge(result.get(key), value)
    return result


class FakeCluster:
    """Objects in a dict; counts writes; honours resourceVersion preconditions of patches."""

    def __init__(self, objects: list[Obj] = (), served: set[tuple[str, str]] | None = None):
        self.objects: dict[Ref, Obj] = {}
        self.served = set(CRD_KINDS if served is None else served)
        self.writes: list[tuple[str, Ref]] = []
        self._rv = 100
        for obj in objects:
            self._store(copy.deepcopy(obj))

    def _store(self, obj: Obj) -> Obj:
        self._rv += 1
        obj.setdefault("metadata", {})["resourceVersion"] = str(self._rv)
        obj["metadata"].setdefault("creationTimestamp", f"2026-01-01T00:00:{self._rv % 60:02d}Z")
        self.objects[Ref.of(obj)] = obj
        return copy.deepcopy(obj)

    def serves(self, api_version: str, kind: str) -> bool:
        """Built-in kinds always; Istio's only when listed in `served` (their CRDs exist)."""
        return (api_version, kind) in self.served or not api_version.split("/")[0].endswith(
            "istio.io"
        )

    def get(self, ref: Ref) -> Obj | None:
        obj = self.objects.get(ref)
        return copy.deepcopy(obj) if obj is not None else None

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
        for ref, obj in sorted(self.objects.items()):
            if ref.kind != kind or (namespace and ref.namespace != namespace):
                continue
            labels = obj["metadata"].get("labels") or {}
            if all(labels.get(k) == v for k, v in wanted.items()):
                found.append(copy.deepcopy(obj))
        return found

    def apply(self, obj: Obj, *, force: bool = True) -> Obj:
        ref = Ref.of(obj)
        self.writes.append(("apply", ref))
        live = self.objects.get(ref)
        return self._store(merge(live, obj) if live else copy.deepcopy(obj))

    def merge_patch(self, ref: Ref, patch: Mapping[str, Any]) -> Obj:
        self.writes.append(("patch", ref))
        live = self.objects.get(ref)
        if live is None:
            raise NotFoundError(f"{ref} not found", 404)
        wanted_rv = (patch.get("metadata") or {}).get("resourceVersion")
        if wanted_rv and wanted_rv != live["metadata"]["resourceVersion"]:
            raise ConflictError("the object has been modified", 409)
        return self._store(merge(live, patch))


def configmap(name: str, data: dict[str, str], namespace: str = "istio-system") -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {"app.kubernetes.io/managed-by": "Helm"},
        },
        "data": data,
    }


def istiod_deployment(
    image: str = "docker.io/istio/pilot:1.30.3",
    name: str = "istiod",
    namespace: str = "istio-system",
    revision: str = "default",
) -> Obj:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {
                "app": "istiod",
                "istio.io/rev": revision,
                "app.kubernetes.io/managed-by": "Helm",
            },
            "annotations": {
                "meta.helm.sh/release-name": "istiod",
                "meta.helm.sh/release-namespace": namespace,
            },
        },
        "spec": {"template": {"spec": {"containers": [{"name": "discovery", "image": image}]}}},
    }


INJECTOR_VALUES = json.dumps(
    {
        "gateways": {"seccompProfile": {}, "securityContext": {}},
        "global": {
            "hub": "docker.io/istio",
            "proxy": {
                "autoInject": "enabled",
                "image": "proxyv2",
                "resources": {
                    "limits": {"cpu": "2000m", "memory": "1024Mi"},
                    "requests": {"cpu": "100m", "memory": "128Mi"},
                },
                "statusPort": 15020,
            },
            "proxy_init": {"forceApplyIptables": False, "image": "proxyv2"},
            "tag": "1.30.3",
        },
        "revision": "",
        "sidecarInjectorWebhook": {"enableNamespacesByDefault": False, "templates": {}},
    },
    indent=2,
)

INJECTOR_CONFIG = """\
# Templates used for Pods that name none (annotation inject.istio.io/templates).
defaultTemplates:
  - sidecar
policy: enabled
alwaysInjectSelector:
  []
neverInjectSelector:
  []
injectedAnnotations:
  {}
templates:
  sidecar: |
    # a template: policy: enabled must not be touched in here
    metadata:
      annotations:
        sidecar.istio.io/status: '{"containers":["istio-proxy"]}'
    spec:
      containers:
        - name: istio-proxy
          resources:
            {{- toYaml .Values.global.proxy.resources | nindent 8 }}
    policy: enabled
  gateway: |
    spec:
      containers:
        - name: istio-proxy
          image: "{{ .ProxyImage }}"
"""

MESH = """\
defaultConfig:
  discoveryAddress: istiod.istio-system.svc:15012
  tracing:
    zipkin:
      address: zipkin.istio-system:9411
defaultProviders:
  metrics:
  - prometheus
  tracing:
  - zipkin
enablePrometheusMerge: true
extensionProviders:
- name: zipkin
  zipkin:
    port: 9411
    service: zipkin.istio-system.svc.cluster.local
- name: otel
  opentelemetry:
    port: 4317
    service: otel-collector.observability.svc.cluster.local
rootNamespace: istio-system
trustDomain: cluster.local
"""
