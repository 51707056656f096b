"""Releases whose injector kymamesh changed and has not yet seen answer.

After a release with an injection webhook changes, a run waits until istiod's injector
answers a test Pod (`pipeline._wait_injector`). If that wait fails (an injection
template istiod cannot render, an istiod that never serves), or the run is stopped
during it, the release is nevertheless what the values ask for, so the next run would
find nothing to change and report the mesh in place. To prevent that, the release is
marked in ConfigMap `kymamesh-unverified` (in Istio's namespace) between its change
and the injector's first answer: a run that finds the mark waits for the injector
again (and fails again while it refuses), and removes the mark once it answers;
`status` reports a marked release as unhealthy.

One key per release: its name -> what the run that marked it saw, or that it was
still waiting.
"""

from __future__ import annotations

from collections.abc import Mapping

from kymamesh import owned_configmap
from kymamesh.adapters.cluster import Cluster, Ref

NAME = "kymamesh-unverified"
WAITING = "the run that changed it stopped before the injector answered"


def ref(namespace: str) -> Ref:
    return Ref("v1", "ConfigMap", NAME, namespace)


def marks(cluster: Cluster, namespace: str) -> dict[str, str]:
    """Release name -> why it is marked; {} when nothing is."""
    live = cluster.get(ref(namespace))
    return {str(k): str(v) for k, v in ((live or {}).get("data") or {}).items()}


def mark(cluster: Cluster, namespace: str, release: str, why: str) -> None:
    """Mark `release` (replacing its earlier mark); the other marks are kept."""
    data = marks(cluster, namespace)
    if data.get(release) == why:
        return
    data[release] = why
    cluster.apply(owned_configmap(NAME, namespace, dict(data)))


def clear(cluster: Cluster, namespace: str, release: str, known: Mapping[str, str]) -> None:
    """Remove `release`'s mark (`known`: the marks as read before; nothing is read or
    written when it was not marked)."""
    if release not in known:
        return
    data = marks(cluster, namespace)
    data.pop(release, None)
    if data:
        cluster.apply(owned_configmap(NAME, namespace, dict(data)))
    else:
        cluster.delete(ref(namespace))
