"""mesh join's pure logic: naming the clusters, --api-server, what a remote secret's
kubeconfig may hold, token claims, the Istio versions whose registry a secret update wipes.
The cluster tests are tests/test_multicluster_cluster.py."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
import yaml

from kymamesh.errors import PreconditionError, UsageError
from kymamesh.istio.versions import Version
from kymamesh.workflows import multicluster as mc


def test_targets_pair_kubeconfigs_and_contexts() -> None:
    assert mc.targets(["a", "b"], []) == [mc.Target("a", None), mc.Target("b", None)]
    assert mc.targets([], ["x", "y"]) == [mc.Target(None, "x"), mc.Target(None, "y")]
    assert mc.targets(["a", "b"], ["x", "y"]) == [mc.Target("a", "x"), mc.Target("b", "y")]
    assert mc.targets(["one"], ["x", "y"]) == [mc.Target("one", "x"), mc.Target("one", "y")]
    assert mc.targets([], [], least=1) == [mc.Target(None, None)]
    with pytest.raises(UsageError, match="at least 2 clusters, got 1"):
        mc.targets(["a"], [])
    with pytest.raises(UsageError, match="named twice"):
        mc.targets(["a", "a"], [])
    with pytest.raises(UsageError, match="pair in order"):
        mc.targets(["a", "b", "c"], ["x", "y"])


def test_api_servers() -> None:
    assert mc.parse_api_servers(["west=https://10.0.0.5:6443/"]) == {
        "west": "https://10.0.0.5:6443"
    }
    for bad in ("west", "west=http://10.0.0.5", "=https://x", "West=https://x", "w=https://"):
        with pytest.raises(UsageError):
            mc.parse_api_servers([bad])


def _kubeconfig(user: dict[str, Any], cluster: dict[str, Any] | None = None) -> str:
    return yaml.safe_dump(
        {
            "clusters": [{"name": "c", "cluster": cluster or {"server": "https://x"}}],
            "users": [{"name": "u", "user": user}],
        }
    )


def test_what_istiod_refuses_in_a_remote_kubeconfig() -> None:
    assert mc.kubeconfig_problems(_kubeconfig({"token": "t"})) == []
    assert mc.kubeconfig_problems(_kubeconfig({"exec": {"command": "aws"}})) == ["users.exec"]
    assert mc.kubeconfig_problems(_kubeconfig({"tokenFile": "/t"})) == ["users.tokenFile"]
    assert mc.kubeconfig_problems(_kubeconfig({"auth-provider": {"name": "gcp"}})) == [
        "users.auth-provider"
    ]
    assert mc.kubeconfig_problems(_kubeconfig({"client-key": "/k", "token": "t"})) == [
        "users.client-key (a file)"
    ]
    assert mc.kubeconfig_problems(
        _kubeconfig({"token": "t"}, {"server": "https://x", "certificate-authority": "/ca"})
    ) == ["clusters.certificate-authority (a file)"]
    assert mc.kubeconfig_problems("[") == ["it is not YAML"]


def _jwt(claims: dict[str, Any]) -> str:
    body = base64.urlsafe_b64encode(json.dumps(claims).encode()).decode().rstrip("=")
    return f"eyJhbGciOiJFUzI1NiJ9.{body}.sig"


def test_token_claims_are_read_without_the_signature() -> None:
    claims = {"exp": 1, "kubernetes.io": {"secret": {"name": "s", "uid": "u"}}}
    assert mc.token_claims(_jwt(claims)) == claims
    assert mc.token_claims("not-a-token") == {}
    assert mc.token_claims("a.%%%.c") == {}


def test_istio_versions_whose_registry_a_secret_update_wipes() -> None:
    assert mc.updates_wipe_registry(Version.parse("1.30.3"))
    assert mc.updates_wipe_registry(Version.parse("1.29.4"))
    assert not mc.updates_wipe_registry(Version.parse("1.30.4"))
    assert not mc.updates_wipe_registry(Version.parse("1.31.1"))
    assert not mc.updates_wipe_registry(None)


def _member(name: str, version: str) -> mc.Member:
    m = mc.Member(target=mc.Target(name, None), ctx=None)  # type: ignore[arg-type]
    m.name, m.version = name, Version.parse(version)
    return m


def test_renewing_a_token_is_refused_where_istiod_would_drop_the_peer() -> None:
    east, west = _member("east", "1.31.1"), _member("west", "1.30.3")
    new = [mc.PairPlan(east, west, renews=False), mc.PairPlan(west, east, renews=True)]
    mc.refuse_unsafe_updates(new)  # a first secret is safe; east runs 1.31
    with pytest.raises(PreconditionError, match=r"west \(Istio 1\.30\.3\), whose istiod drops"):
        mc.refuse_unsafe_updates([mc.PairPlan(east, west, renews=True)])
