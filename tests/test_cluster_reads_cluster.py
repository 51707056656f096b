"""The cluster adapter's reads against the test cluster: the discovery it keeps in memory
and refreshes narrowly, and the readiness wait that looks again as soon as an object
changed (a watch) instead of at the next poll."""

from __future__ import annotations

import json
import secrets
import threading
import time
from typing import Any

from kymamesh.adapters.cluster import Cluster, Ref
from tests.support_lifecycle import schemaless_crd

DISCOVERY_PREFIXES = ("/api", "/apis", "/version")


def _discovery_reads(c: Any, mark: int) -> list[str]:
    """The discovery requests (`/version`, `/api...`, `/apis...` without objects) kymamesh
    made since `mark`."""
    reads = c.audit.writes_since(mark, user_agent_prefix="kymamesh", verbs=("get",))
    uris = [str(ev.get("requestURI", "")) for ev in reads.events]
    return [u for u in uris if u.startswith(DISCOVERY_PREFIXES) and u.count("/") <= 3]


def test_a_kind_installed_later_is_found_without_discovering_everything_again(
    cluster: Any, namespace: str
) -> None:
    """A kind the server does not serve yet is looked up again when asked for after its
    CRD was installed; the lookup asks for the list of groups and that kind's group only
    (the client library forgot everything and asked for `/version`, `/api/v1` and every
    group used again), and nothing is written to a discovery cache file."""
    group = f"t{secrets.token_hex(4)}.kymamesh.example"
    cl = Cluster.connect(str(cluster.kubeconfig))
    try:
        cl.list("v1", "ConfigMap", namespace)  # the core group known
        assert cl.list("apps/v1", "Deployment", namespace) == []  # apps known
        assert cl.list(f"{group}/v1", "Widget", namespace) == []  # not served yet
        first = schemaless_crd(group, "Widget")
        cluster.kubectl("apply", "-f", "-", input=json.dumps(first))
        cluster.kubectl("wait", "--for=condition=Established", f"crd/{first['metadata']['name']}")

        mark = cluster.audit.mark()
        assert cl.list(f"{group}/v1", "Widget", namespace) == []  # served now: an empty list
        assert cl.list("apps/v1", "Deployment", namespace) == []
        assert cl.list("v1", "Secret", namespace) is not None
        assert _discovery_reads(cluster, mark) == ["/apis", f"/apis/{group}/v1"]

        second = schemaless_crd(group, "Gadget")  # a new kind in a group already known
        cluster.kubectl("apply", "-f", "-", input=json.dumps(second))
        cluster.kubectl("wait", "--for=condition=Established", f"crd/{second['metadata']['name']}")
        mark = cluster.audit.mark()
        assert cl.serves(f"{group}/v1", "Gadget")
        assert cl.serves(f"{group}/v1", "Widget")
        assert _discovery_reads(cluster, mark) == ["/apis", f"/apis/{group}/v1"]
        assert cl.server_version().major == 1
    finally:
        cl.close()
        cluster.kubectl(
            "delete", "crd", f"widgets.{group}", f"gadgets.{group}", "--ignore-not-found"
        )


def test_a_wait_looks_again_as_soon_as_the_object_changes(cluster: Any, namespace: str) -> None:
    """Between two looks, a readiness wait watches the first object not ready: a change
    ends the pause at once (not at the next poll), no change ends it after the pause."""
    cl = Cluster.connect(str(cluster.kubeconfig))
    name = "watched"
    cluster.kubectl("create", "configmap", name, "-n", namespace, "--from-literal=a=1")
    ref = Ref("v1", "ConfigMap", name, namespace)
    try:
        live = cl.get(ref)
        assert live is not None
        version = live["metadata"]["resourceVersion"]

        started = time.monotonic()
        cl._watch_change(ref, version, 1.0)  # nothing changes: the pause runs out
        quiet = time.monotonic() - started
        assert 0.9 <= quiet < 4, quiet

        def change() -> None:
            time.sleep(0.5)
            cl.merge_patch(ref, {"data": {"a": "2"}})

        writer = threading.Thread(target=change)
        started = time.monotonic()
        writer.start()
        cl._watch_change(ref, version, 20.0)
        woke = time.monotonic() - started
        writer.join()
        assert woke < 5, woke  # the change ended it, not the 20 s

        started = time.monotonic()
        cl._watch_change(ref, "", 0.3)  # no version (not found before): a plain pause
        assert 0.25 <= time.monotonic() - started < 2
    finally:
        cl.close()


def test_a_user_who_may_not_watch_waits_by_polling(cluster: Any, namespace: str) -> None:
    """A watch the API server refuses (the user may get but not watch) makes the wait poll:
    the pause runs its full length and later pauses do not try to watch again."""
    role = f"get-only-{secrets.token_hex(3)}"
    cluster.kubectl(
        "create", "role", role, "-n", namespace, "--verb=get,list", "--resource=configmaps"
    )
    cluster.kubectl(
        "create", "rolebinding", role, "-n", namespace, f"--role={role}",
        f"--user={cluster.restricted_user}",
    )  # fmt: skip
    cluster.kubectl("create", "configmap", "polled", "-n", namespace, "--from-literal=a=1")
    cl = Cluster.connect(str(cluster.restricted_kubeconfig))
    ref = Ref("v1", "ConfigMap", "polled", namespace)
    try:
        deadline = time.monotonic() + 30
        live = cl.get(ref)
        while live is None and time.monotonic() < deadline:  # the binding takes effect
            time.sleep(0.2)
            live = cl.get(ref)
        assert live is not None
        started = time.monotonic()
        cl._watch_change(ref, live["metadata"]["resourceVersion"], 0.5)
        assert 0.45 <= time.monotonic() - started < 3
        assert cl._watching is False
    finally:
        cl.close()
