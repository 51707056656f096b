"""Revisions and Pods: which control plane revision a sidecar came from, and which one
injects a Pod now.

A sidecar's revision is read in one place, `sidecar_revision`: the `revision` that
Istio's injector writes into the Pod's `sidecar.istio.io/status` annotation; when that
JSON names none (an injector older than revisions, or a status annotation written by
hand), the Pod's `istio.io/rev` label, which Istio's injection templates set to the
revision that injected it; else `default`. A Pod without the annotation has no sidecar
the injector put there (None).

Which revision injects a new Pod follows the selectors of Istio's injector webhooks and
the default revision tag (`kymamesh.istio.tags`); `probe_injection` asks the API server
with a dry-run Pod. Used by the restarts (`kymamesh.workloads.restarts`), the canary
(`kymamesh.workflows.canary`), the wait for istiod's injector (`kymamesh.workflows.pipeline`)
and `status`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from kymamesh.istio.controlplane import (
    DEFAULT_REVISION,
    INJECT_LABEL,
    INJECTION_LABEL,
    REVISION_LABEL,
    STATUS_ANNOTATION,
    injection_probe_pod,
    probe_namespace,
)
from kymamesh.istio.tags import DEFAULT_TAG

if TYPE_CHECKING:
    from kymamesh.adapters.cluster import Cluster


def sidecar_revision(pod: Mapping[str, Any]) -> str | None:
    """The revision that injected the Pod's sidecar (None: no `sidecar.istio.io/status`,
    so no sidecar the injector put there)."""
    meta = pod.get("metadata") or {}
    raw = (meta.get("annotations") or {}).get(STATUS_ANNOTATION)
    if raw is None:
        return None
    try:
        status = json.loads(raw) if raw else None
    except ValueError:
        status = None
    revision = status.get("revision") if isinstance(status, Mapping) else None
    if revision:
        return str(revision)
    return str((meta.get("labels") or {}).get(REVISION_LABEL) or DEFAULT_REVISION)


def injecting_revision(
    namespace_labels: Mapping[str, str], pod_labels: Mapping[str, str], default_holder: str
) -> str | None:
    """The revision whose webhook a new Pod with these labels is sent to (None: none).

    Follows the selectors of Istio's injector webhooks and the default tag: the
    namespace's `istio-injection` label wins over `istio.io/rev`; a namespace revision
    wins over the Pod's; `default` means the revision holding the default tag.
    """

    def resolve(revision: str) -> str:
        return default_holder if revision == DEFAULT_TAG else revision

    if pod_labels.get(INJECT_LABEL) == "false":
        return None
    injection = namespace_labels.get(INJECTION_LABEL)
    if injection is not None:
        return default_holder if injection == "enabled" else None
    if namespace_labels.get(REVISION_LABEL):
        return resolve(namespace_labels[REVISION_LABEL])
    if pod_labels.get(REVISION_LABEL):
        return resolve(pod_labels[REVISION_LABEL])
    if pod_labels.get(INJECT_LABEL) == "true":
        return default_holder
    return None


def moved_pods(
    pods: Iterable[Mapping[str, Any]],
    namespace_labels: Mapping[str, Mapping[str, str]],
    default_holder: str,
) -> list[tuple[Mapping[str, Any], str, str]]:
    """Running Pods whose sidecar came from another revision than the one that injects
    their like now: (Pod, its sidecar's revision, the revision that injects now)."""
    found = []
    for pod in pods:
        meta = pod.get("metadata") or {}
        if meta.get("deletionTimestamp"):
            continue
        if (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
            continue
        have = sidecar_revision(pod)
        if have is None:
            continue
        labels = dict(meta.get("labels") or {})
        now = injecting_revision(
            namespace_labels.get(str(meta.get("namespace") or ""), {}), labels, default_holder
        )
        if now is not None and now != have:
            found.append((pod, have, now))
    return found


def probe_injection(cluster: Cluster, revision: str, preferred: str) -> str | None:
    """The revision that injects a probe Pod for `revision` (a server-side dry run, nothing
    is made), None when no sidecar was injected. An ApiError when the webhook refused it."""
    namespaces = cluster.list("v1", "Namespace")
    namespace = probe_namespace(namespaces, revision, preferred)
    pod = cluster.dry_run_create(injection_probe_pod(namespace, revision))
    return sidecar_revision(pod)
