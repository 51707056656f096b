"""The adapter's read snapshot (used by `status`): inside it each distinct read reaches
the API server once, every answer is a copy of its own, and a write ends it. Read
requests are counted in the test cluster's audit log."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from kymamesh.adapters.cluster import Cluster, Ref

READS = ("get", "list", "watch")


@pytest.fixture
def adapter(cluster: Any) -> Iterator[Cluster]:
    cl = Cluster.connect(str(cluster.kubeconfig))
    cl.serves("v1", "ConfigMap")  # discovery before counting
    yield cl
    cl.close()


def _reads(counts: Any) -> list[str]:
    return [f"{e['verb']} {e['requestURI'].split('?')[0]}" for e in counts.events]


def test_a_snapshot_asks_once_per_read_and_hands_out_copies(
    cluster: Any, namespace: str, adapter: Cluster
) -> None:
    cluster.kubectl("create", "configmap", "one", "-n", namespace, "--from-literal=k=v")
    ref = Ref("v1", "ConfigMap", "one", namespace)
    missing = Ref("v1", "ConfigMap", "absent", namespace)
    counting = cluster.audit.counting(user_agent_prefix="kymamesh", verbs=READS)
    with counting as reads, adapter.snapshot():
        first = adapter.list("v1", "ConfigMap", namespace)
        next(o for o in first if o["metadata"]["name"] == "one")["data"]["k"] = "edited"
        second = adapter.list("v1", "ConfigMap", namespace)
        got = [adapter.get(ref), adapter.get(ref)]
        gone = [adapter.get(missing), adapter.get(missing)]
    names = sorted(o["metadata"]["name"] for o in second)
    assert "one" in names
    by_name = {o["metadata"]["name"]: o for o in second}
    assert by_name["one"]["data"] == {"k": "v"}  # a caller's edit does not reach the next
    assert got[0] == got[1] and got[0] is not got[1] and got[0] is not None
    assert gone == [None, None]
    listed = f"list /api/v1/namespaces/{namespace}/configmaps"
    fetched = f"get /api/v1/namespaces/{namespace}/configmaps/one"
    absent = f"get /api/v1/namespaces/{namespace}/configmaps/absent"
    assert sorted(_reads(reads)) == sorted([listed, fetched, absent]), reads.describe()


def test_a_write_ends_the_snapshot_and_outside_reads_are_live(
    cluster: Any, namespace: str, adapter: Cluster
) -> None:
    ref = Ref("v1", "ConfigMap", "two", namespace)
    with adapter.snapshot():
        assert adapter.get(ref) is None
        adapter.apply(
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": "two", "namespace": namespace},
                "data": {"k": "v"},
            }
        )
        after_write = adapter.get(ref)
    assert after_write is not None and after_write["data"] == {"k": "v"}
    cluster.kubectl("patch", "configmap", "two", "-n", namespace, "-p", '{"data":{"k":"w"}}')
    live = adapter.get(ref)
    assert live is not None and live["data"] == {"k": "w"}
