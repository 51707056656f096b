"""The in-memory cluster behaves like the API server where the unit tests rely on it.

Each contract test runs twice: against `tests.support_fake_cluster.FakeCluster` and,
through the real adapter, against the test cluster (marker `cluster`). If the fake
drifts from the API, the fake's run fails here instead of a unit test passing on
behaviour no cluster has. What only the fake can be asked (its lock, a namespace
deleted at once) is tested on the fake alone; the real lock is
`tests/test_lock_cluster.py`.

Who uses the fake, and for what (each also has cluster tests for the same code):

- test_steps_mesh: ConfigMap edits (`update`: read, merge patch conditional on the
  resourceVersion, one retry on a conflict), PeerAuthentication apply, a namespace that
  must exist;
- test_certs: Secret and Gateway apply, Secret `type` and data checks, writes under the
  lock through `run_patch`;
- test_proxies: Deployment merge patches (restarts), label selectors, writes under the lock;
- test_status_unit: reads (served kinds, selectors, generation against
  observedGeneration), uninstall's deletes under the lock, released after;
- test_preflight: reads only; asserts no write.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from typing import Any

import pytest

from kymamesh.adapters.cluster import Cluster, Ref
from kymamesh.errors import ApiError, ConflictError, LockHeldError, LockLostError, NotFoundError
from tests.support_fake_cluster import FakeCluster

FAKE_NS = "fake-ns"


@pytest.fixture(params=["fake", pytest.param("real", marks=pytest.mark.cluster)])
def api(request: pytest.FixtureRequest) -> Iterator[tuple[Any, str]]:
    """(a cluster, a namespace that exists in it): the fake, or the adapter on the test cluster."""
    if request.param == "fake":
        yield (
            FakeCluster([{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": FAKE_NS}}]),
            FAKE_NS,
        )
        return
    test_cluster = request.getfixturevalue("cluster")
    namespace = request.getfixturevalue("namespace")
    adapter = Cluster.connect(str(test_cluster.kubeconfig))
    try:
        yield adapter, namespace
    finally:
        adapter.close()


def configmap(ns: str, data: dict[str, Any], name: str = "cm") -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": ns},
        "data": data,
    }


def data_of(cluster: Any, ns: str, name: str = "cm") -> dict[str, Any]:
    live = cluster.get(Ref("v1", "ConfigMap", name, ns))
    assert live is not None
    return dict(live.get("data") or {})


def rv_of(cluster: Any, ref: Ref) -> str:
    live = cluster.get(ref)
    assert live is not None
    return str(live["metadata"]["resourceVersion"])


# -- server-side apply ---------------------------------------------------------------


def test_apply_removes_what_it_applied_before_and_no_longer_applies(api: tuple[Any, str]) -> None:
    cluster, ns = api
    cluster.apply(configmap(ns, {"a": "1", "b": "1"}))
    cluster.apply(configmap(ns, {"a": "1"}))
    assert data_of(cluster, ns) == {"a": "1"}


def test_apply_keeps_what_another_write_set(api: tuple[Any, str]) -> None:
    cluster, ns = api
    ref = Ref("v1", "ConfigMap", "cm", ns)
    cluster.apply(configmap(ns, {"a": "1", "b": "1"}))
    cluster.merge_patch(ref, {"data": {"b": "2", "c": "3"}})  # b changed: taken over; c new
    cluster.apply(configmap(ns, {"a": "2"}))
    assert data_of(cluster, ns) == {"a": "2", "b": "2", "c": "3"}


def test_apply_removes_a_label_it_no_longer_applies(api: tuple[Any, str]) -> None:
    cluster, ns = api
    lease = {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": "l", "namespace": ns, "labels": {"x": "1"}},
        "spec": {"holderIdentity": "a"},
    }
    cluster.apply(lease)
    cluster.apply({**lease, "metadata": {"name": "l", "namespace": ns}})
    live = cluster.get(Ref("coordination.k8s.io/v1", "Lease", "l", ns))
    assert live is not None and not (live["metadata"].get("labels") or {})
    assert live["spec"]["holderIdentity"] == "a"


# -- resourceVersion, generation -------------------------------------------------------


def test_resource_version_moves_only_when_the_object_changes(api: tuple[Any, str]) -> None:
    cluster, ns = api
    ref = Ref("v1", "ConfigMap", "cm", ns)
    cluster.create(configmap(ns, {"a": "1"}))
    first = rv_of(cluster, ref)
    cluster.merge_patch(ref, {"data": {"a": "1"}})  # a no-op
    assert rv_of(cluster, ref) == first
    cluster.merge_patch(ref, {"data": {"a": "2"}})
    assert rv_of(cluster, ref) != first


def test_a_stale_resource_version_is_a_conflict(api: tuple[Any, str]) -> None:
    cluster, ns = api
    ref = Ref("v1", "ConfigMap", "cm", ns)
    cluster.create(configmap(ns, {"a": "1"}))
    stale = rv_of(cluster, ref)
    cluster.merge_patch(ref, {"data": {"a": "2"}})
    with pytest.raises(ConflictError):
        cluster.merge_patch(ref, {"metadata": {"resourceVersion": stale}, "data": {"a": "3"}})
    assert data_of(cluster, ns) == {"a": "2"}
    cluster.merge_patch(
        ref, {"metadata": {"resourceVersion": rv_of(cluster, ref)}, "data": {"a": "3"}}
    )
    assert data_of(cluster, ns) == {"a": "3"}


def test_generation_follows_a_workloads_spec(api: tuple[Any, str]) -> None:
    cluster, ns = api
    ref = Ref("apps/v1", "Deployment", "app", ns)
    cluster.create(
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "app", "namespace": ns},
            "spec": {
                "selector": {"matchLabels": {"app": "app"}},
                "template": {
                    "metadata": {"labels": {"app": "app"}},
                    "spec": {"containers": [{"name": "c", "image": "registry.invalid/app:1"}]},
                },
            },
        }
    )

    def generation() -> int:
        live = cluster.get(ref)
        assert live is not None
        return int(live["metadata"]["generation"])

    assert generation() == 1
    cluster.merge_patch(ref, {"metadata": {"labels": {"team": "a"}}})
    assert generation() == 1
    cluster.merge_patch(ref, {"spec": {"template": {"metadata": {"annotations": {"r": "1"}}}}})
    assert generation() == 2


# -- what the API refuses --------------------------------------------------------------


def test_no_object_in_a_namespace_that_does_not_exist(api: tuple[Any, str]) -> None:
    cluster, ns = api
    with pytest.raises(NotFoundError):
        cluster.create(configmap(ns + "-missing", {"a": "1"}))
    with pytest.raises(NotFoundError):
        cluster.apply(configmap(ns + "-missing", {"a": "1"}))


def test_a_kind_not_served_cannot_be_written(api: tuple[Any, str]) -> None:
    cluster, ns = api
    obj = {
        "apiVersion": "security.istio.io/v9",
        "kind": "PeerAuthentication",
        "metadata": {"name": "x", "namespace": ns},
    }
    assert not cluster.serves("security.istio.io/v9", "PeerAuthentication")
    with pytest.raises(NotFoundError):
        cluster.apply(obj)
    assert cluster.get(Ref.of(obj)) is None
    assert cluster.list("security.istio.io/v9", "PeerAuthentication", ns) == []


def test_data_the_api_cannot_decode(api: tuple[Any, str]) -> None:
    cluster, ns = api
    with pytest.raises(ApiError) as raised:
        cluster.create(configmap(ns, {"replicas": 3}))
    assert raised.value.status == 400
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s", "namespace": ns}}
    with pytest.raises(ApiError) as raised:
        cluster.create({**secret, "data": {"k": "not base64!"}})
    assert raised.value.status == 400


def test_secret_string_data_lands_in_data_and_type_is_immutable(api: tuple[Any, str]) -> None:
    cluster, ns = api
    ref = Ref("v1", "Secret", "s", ns)
    cluster.create(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "s", "namespace": ns},
            "type": "Opaque",
            "stringData": {"k": "v"},
        }
    )
    live = cluster.get(ref)
    assert live is not None and "stringData" not in live
    assert base64.b64decode(live["data"]["k"]) == b"v"
    with pytest.raises(ApiError) as raised:
        cluster.merge_patch(ref, {"type": "kubernetes.io/basic-auth"})
    assert raised.value.status == 422


# -- reads ----------------------------------------------------------------------------


def test_label_selectors(api: tuple[Any, str]) -> None:
    cluster, ns = api
    for name, labels in (("one", {"app": "a", "tier": "x"}), ("two", {"app": "b"}), ("three", {})):
        cm = configmap(ns, {}, name)
        cm["metadata"]["labels"] = {**labels, "set": "s"}  # not the namespace's own ConfigMaps
        cluster.create(cm)

    def names(selector: str) -> list[str]:
        return sorted(
            o["metadata"]["name"]
            for o in cluster.list("v1", "ConfigMap", ns, label_selector="set=s," + selector)
        )

    assert names("app=a") == ["one"]
    assert names("app==a") == ["one"]
    assert names("app!=a") == ["three", "two"]
    assert names("app") == ["one", "two"]
    assert names("!app") == ["three"]
    assert names("app,!tier") == ["two"]


def test_a_list_in_pages_gives_every_object_once(api: tuple[Any, str]) -> None:
    cluster, ns = api
    for i in range(7):
        cm = configmap(ns, {}, f"page-{i}")
        cm["metadata"]["labels"] = {"paged": "yes"}
        cluster.create(cm)
    pages = list(cluster.list_pages("v1", "ConfigMap", ns, label_selector="paged=yes", limit=3))
    assert [len(p) for p in pages] == [3, 3, 1]
    names = [o["metadata"]["name"] for page in pages for o in page]
    assert sorted(names) == [f"page-{i}" for i in range(7)]
    assert all(o["kind"] == "ConfigMap" for page in pages for o in page)
    assert list(cluster.list_pages("example.com/v1", "NoSuchKind", ns)) == []


def test_a_list_in_pages_may_be_left_early(api: tuple[Any, str]) -> None:
    """A caller that stops after the first page (the next one may be on its way) leaves
    nothing behind: the adapter's next list answers as usual."""
    cluster, ns = api
    for i in range(5):
        cm = configmap(ns, {}, f"early-{i}")
        cm["metadata"]["labels"] = {"early": "yes"}
        cluster.create(cm)
    pages = cluster.list_pages("v1", "ConfigMap", ns, label_selector="early=yes", limit=2)
    assert len(next(pages)) == 2
    pages.close()
    listed = cluster.list_pages("v1", "ConfigMap", ns, label_selector="early=yes", limit=2)
    assert sorted(o["metadata"]["name"] for page in listed for o in page) == [
        f"early-{i}" for i in range(5)
    ]


def test_a_metadata_only_list_gives_each_objects_metadata(api: tuple[Any, str]) -> None:
    cluster, ns = api
    made = cluster.create(configmap(ns, {}, "owner"))  # a live owner: no garbage collection
    owner = {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner"}
    owner["uid"] = made["metadata"]["uid"]
    cm = configmap(ns, {"key": "value"}, "meta-only")
    cm["metadata"]["labels"] = {"meta": "only"}
    cm["metadata"]["ownerReferences"] = [{**owner, "controller": True}]
    cluster.create(cm)
    [found] = cluster.list("v1", "ConfigMap", ns, label_selector="meta=only", metadata_only=True)
    assert (found["apiVersion"], found["kind"]) == ("v1", "ConfigMap")
    assert found["metadata"]["name"] == "meta-only"
    assert found["metadata"]["labels"] == {"meta": "only"}
    assert found["metadata"]["ownerReferences"][0]["name"] == "owner"
    if isinstance(cluster, Cluster):  # the fake gives whole objects (callers read metadata)
        assert "data" not in found
    whole = cluster.list("v1", "ConfigMap", ns, label_selector="meta=only")
    assert whole[0]["data"] == {"key": "value"}  # a snapshot keeps the two apart


# -- the fake alone ---------------------------------------------------------------------


def test_fake_refuses_a_selector_it_cannot_read() -> None:
    with pytest.raises(AssertionError, match="cannot read the label selector"):
        FakeCluster().list("v1", "ConfigMap", label_selector="app in (a,b)")


def test_fake_lock_is_held_once_fences_writes_and_lists_unlocked_ones() -> None:
    cluster = FakeCluster(
        [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": FAKE_NS}}]
    )
    cluster.create(configmap(FAKE_NS, {"a": "1"}, "before"))
    with cluster.lock(FAKE_NS, 1.0) as holder:
        assert holder == cluster.lock_holder
        with pytest.raises(LockHeldError), cluster.lock(FAKE_NS, 1.0):
            pass
        cluster.create(configmap(FAKE_NS, {"a": "1"}, "under"))
        cluster.lose_lock()
        with pytest.raises(LockLostError):
            cluster.check_lock()
        with pytest.raises(LockLostError):
            cluster.create(configmap(FAKE_NS, {"a": "1"}, "after"))
    assert cluster.unlocked_writes == [f"create ConfigMap/{FAKE_NS}/before"]
    assert cluster.get(Ref("v1", "ConfigMap", "after", FAKE_NS)) is None


def test_fake_deletes_what_is_in_a_deleted_namespace() -> None:
    cluster = FakeCluster(
        [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": FAKE_NS}}]
    )
    cluster.create(configmap(FAKE_NS, {"a": "1"}))
    cluster.delete(Ref("v1", "Namespace", FAKE_NS))
    assert cluster.objects == {}
