"""An update that meets a conflict (the object changed between kymamesh's read and its
write) is made once more on a fresh read, against the test cluster's real optimistic
concurrency; a second conflict is an error naming the object."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from kymamesh.adapters.cluster import Cluster, Obj, Ref
from kymamesh.errors import ConflictError


@pytest.fixture
def adapter(cluster: Any) -> Iterator[Cluster]:
    cl = Cluster.connect(str(cluster.kubeconfig))
    yield cl
    cl.close()


def configmap(c: Any, ns: str) -> Ref:
    c.kubectl("create", "configmap", "settings", "-n", ns, "--from-literal=owner=user")
    return Ref("v1", "ConfigMap", "settings", ns)


def test_update_redoes_its_edit_on_a_fresh_read_after_a_conflict(
    cluster: Any, namespace: str, adapter: Cluster
) -> None:
    ref = configmap(cluster, namespace)
    seen: list[dict[str, str]] = []

    def edit(live: Obj) -> dict[str, Any]:
        seen.append(dict(live.get("data") or {}))
        if len(seen) == 1:  # someone else writes between our read and our write
            cluster.kubectl(
                "patch",
                "configmap",
                "settings",
                "-n",
                namespace,
                "--type=merge",
                "-p",
                '{"data": {"other": "theirs"}}',
            )
        return {"data": {"mine": str(len(seen))}}

    with cluster.audit.counting(user_agent_prefix="kymamesh") as writes:
        adapter.update(ref, edit)
    assert seen == [{"owner": "user"}, {"owner": "user", "other": "theirs"}]
    live = adapter.get(ref)
    assert live is not None
    assert live["data"] == {"owner": "user", "other": "theirs", "mine": "2"}
    codes = [e["responseStatus"]["code"] for e in writes.events]
    assert codes == [409, 200], writes.describe()


def test_a_second_conflict_is_an_error_naming_the_object(
    cluster: Any, namespace: str, adapter: Cluster
) -> None:
    ref = configmap(cluster, namespace)
    calls: list[int] = []

    def edit(live: Obj) -> dict[str, Any]:
        calls.append(1)
        cluster.kubectl(
            "patch",
            "configmap",
            "settings",
            "-n",
            namespace,
            "--type=merge",
            "-p",
            f'{{"data": {{"other": "{len(calls)}"}}}}',
        )
        return {"data": {"mine": "x"}}

    with pytest.raises(ConflictError) as conflict:
        adapter.update(ref, edit)
    assert len(calls) == 2  # retried once, not more
    assert f"ConfigMap/{namespace}/settings" in conflict.value.message
    assert conflict.value.hint
    live = adapter.get(ref)
    assert live is not None and "mine" not in live["data"]
