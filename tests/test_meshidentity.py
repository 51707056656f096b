"""The cluster's identity in a multi-cluster mesh: the checks of --mesh-id, --cluster-name,
--network and the istiod values made of them (pure logic; the cluster test is
tests/test_multicluster_cluster.py)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from kymamesh.errors import ExitCode, UsageError
from kymamesh.identity import meshidentity


def test_flags_become_the_steps_parameters_and_istiod_values() -> None:
    params = meshidentity.from_flags("mesh1", "east-1", "net_1.a")
    assert params == {"meshID": "mesh1", "clusterName": "east-1", "network": "net_1.a"}
    assert meshidentity.chart_values(params) == {
        "istiod": {
            "global": {
                "meshID": "mesh1",
                "multiCluster": {"clusterName": "east-1"},
                "network": "net_1.a",
            }
        }
    }
    assert meshidentity.from_flags(None, None, None) == {}
    assert meshidentity.chart_values({"meshID": None, "clusterName": None}) == {}
    assert meshidentity.chart_values({"network": "n1"}) == {"istiod": {"global": {"network": "n1"}}}


@pytest.mark.parametrize(
    ("flag", "value", "words"),
    [
        ("cluster_name", "East", "DNS-1123 label"),
        ("cluster_name", "east_1", "DNS-1123 label"),
        ("cluster_name", "-east", "DNS-1123 label"),
        ("cluster_name", "a" * 64, "DNS-1123 label"),
        ("cluster_name", "", "DNS-1123 label"),
        ("cluster_name", "kubernetes", "default cluster name"),
        ("mesh_id", "mesh 1", "label value"),
        ("mesh_id", "mesh/1", "label value"),
        ("network", "net-", "topology.istio.io/network"),
        ("network", "n" * 64, "topology.istio.io/network"),
    ],
)
def test_bad_values_are_usage_errors_naming_the_flag(flag: str, value: str, words: str) -> None:
    given = {"mesh_id": None, "cluster_name": None, "network": None, flag: value}
    with pytest.raises(UsageError) as err:
        meshidentity.from_flags(**given)
    assert f"--{flag.replace('_', '-')} {value!r}" in err.value.message
    assert words in err.value.message
    assert err.value.hint


def test_config_values_are_checked_as_the_steps() -> None:
    with pytest.raises(UsageError, match="multicluster-identity: clusterName 7"):
        meshidentity.wanted({"clusterName": 7})


def test_status_line() -> None:
    assert meshidentity.status_lines(None) == []
    (line,) = meshidentity.status_lines(
        {"meshID": "mesh1", "clusterName": "east", "network": None, "trustDomain": "cluster.local"}
    )
    assert line == "mesh: ID mesh1, cluster east, network unset, trust domain cluster.local"


def test_install_refuses_a_bad_cluster_name_before_the_cluster() -> None:
    """Exit 2 with the rule, without reading a kubeconfig (there is none here)."""
    run = subprocess.run(
        [sys.executable, "-m", "kymamesh", "install", "--cluster-name", "East_1", "-y"],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "KUBECONFIG": "/nonexistent/kubeconfig"},
        timeout=60,
    )
    assert run.returncode == ExitCode.USAGE, run.stderr
    assert "--cluster-name 'East_1' is not a valid clusterName" in run.stderr
    assert "hint:" in run.stderr
