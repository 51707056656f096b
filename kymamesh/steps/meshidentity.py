"""Step `multicluster-identity`: the cluster's mesh ID, cluster name and network.

The three are istiod chart values that `install` passes to phase 1
(`kymamesh.identity.meshidentity.chart_values`); what no chart writes is the label
`topology.istio.io/network` on the Istio namespace, which tells istiod the network of
the cluster's own workloads. This step keeps that label, and checks that each
istiod runs with the mesh ID and cluster name asked for (an istiod kymamesh did not
install, adopted with `patch --existing-istio`, is named in a note: its values are
its installer's to change). Unset parameters leave everything alone.
"""

from __future__ import annotations

from typing import ClassVar

from kymamesh.adapters.cluster import Cluster, Ref
from kymamesh.diffs import object_diff
from kymamesh.identity import meshidentity
from kymamesh.steps._configmaps import not_in_dry_run
from kymamesh.steps.base import ONCE_CONFIG_WRITTEN, Change, StepContext


class MeshIdentityStep:
    PARAMS: ClassVar[frozenset[str]] = meshidentity.PARAMS
    RUNS_ONCE: ClassVar[str] = ONCE_CONFIG_WRITTEN

    def preflight(self, ctx: StepContext) -> str | None:
        meshidentity.wanted(ctx.params)
        return None

    def check(self, ctx: StepContext) -> list[Change]:
        identity = meshidentity.wanted(ctx.params)
        changes: list[Change] = []
        network = identity.get("network")
        if network is not None:
            changes += _network_label(ctx, network)
        for plane in ctx.control_planes:
            if not plane.installed:
                continue
            found = meshidentity.live(ctx.cluster, ctx.namespace, plane.revision)
            for name in ("meshID", "clusterName"):
                if name in identity and found.get(name) != identity[name]:
                    ctx.notes.append(
                        f"istiod{plane.suffix} runs with {name} {found.get(name)!r}, not "
                        f"{identity[name]!r}: `kymamesh install` sets it (an istiod "
                        "installed otherwise takes it as its chart value "
                        f"{_chart_key(name)})"
                    )
        return changes


def _chart_key(name: str) -> str:
    return {
        "meshID": "global.meshID",
        "clusterName": "global.multiCluster.clusterName",
        "network": "global.network",
    }[name]


def _network_label(ctx: StepContext, network: str) -> list[Change]:
    ref = Ref("v1", "Namespace", ctx.namespace)
    label = meshidentity.NETWORK_LABEL
    live = ctx.cluster.get(ref)
    target = f"Namespace {ctx.namespace}"
    if live is None:
        if ctx.dry_run:
            return [
                Change(
                    target=target,
                    summary=f"labelled {label}={network} (once phase 1 has made it)",
                    apply=not_in_dry_run,
                )
            ]
        live = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ctx.namespace}}
    found = ((live.get("metadata") or {}).get("labels") or {}).get(label)
    if found == network:
        return []
    wanted = {
        **live,
        "metadata": {
            **live["metadata"],
            "labels": {**(live["metadata"].get("labels") or {}), label: network},
        },
    }

    def apply(cluster: Cluster) -> None:
        cluster.ensure_namespace(ctx.namespace)
        cluster.merge_patch(ref, {"metadata": {"labels": {label: network}}})

    return [
        Change(
            target=target,
            summary=f"label {label} {found or 'unset'} -> {network}",
            apply=apply,
            diff=object_diff(live, wanted, target),
        )
    ]
