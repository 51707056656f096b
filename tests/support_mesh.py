"""Shared by the mesh-step tests: the in-memory cluster (from `tests.support_fake_cluster`)
and samples of the Istio ConfigMaps as the charts render them."""

from __future__ import annotations

import json

from kymamesh.adapters.cluster import Obj
from tests.support_fake_cluster import FakeCluster as FakeCluster


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
