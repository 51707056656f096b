"""`kymamesh inject-namespace` on the test cluster: labels the namespace and the chosen
Deployments (which roll), waits for the rollouts, reverses with --disable, refuses unknown
names before any write, and writes nothing on a re-run. istiod really injects on the test
cluster: a rolled Pod gets its sidecar."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from typing import Any

from kymamesh.adapters.cluster import Cluster
from tests.support_patch import ROOT, ensure_istio, get_json, kymamesh, kymamesh_json


def deployment(name: str, replicas: int = 1) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "app", "image": "example.com/app:1"}]},
            },
        },
    }


def make_deployments(cluster: Any, namespace: str, *names: str) -> None:
    for name in names:
        cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(deployment(name)))
    for name in names:
        cluster.kubectl(
            "rollout", "status", f"deployment/{name}", "-n", namespace, "--timeout=120s"
        )


def template_label(cluster: Any, namespace: str, name: str) -> str | None:
    obj = get_json(cluster, "deployment", name, "-n", namespace)
    assert obj is not None
    labels = obj["spec"]["template"]["metadata"].get("labels") or {}
    return labels.get("sidecar.istio.io/inject")


def namespace_label(cluster: Any, namespace: str) -> str | None:
    obj = get_json(cluster, "namespace", namespace)
    assert obj is not None
    return (obj["metadata"].get("labels") or {}).get("istio-injection")


def replica_sets(cluster: Any, namespace: str, app: str) -> set[str]:
    out = get_json(cluster, "replicasets", "-n", namespace, "-l", f"app={app}")
    assert out is not None
    return {rs["metadata"]["name"] for rs in out["items"]}


def outcomes(result: dict[str, Any]) -> dict[str, str]:
    return {i["name"]: i["outcome"] for p in result["phases"] for i in p["items"]}


def test_enable_rolls_the_chosen_deployment_and_waits(cluster: Any, namespace: str) -> None:
    ensure_istio(cluster)
    make_deployments(cluster, namespace, "web", "api")
    before = replica_sets(cluster, namespace, "web")
    api_before = replica_sets(cluster, namespace, "api")

    code, result, stderr = kymamesh_json(
        cluster, "inject-namespace", namespace, "--deployment", "web", "--wait", "--timeout", "120"
    )
    assert code == 0, (result, stderr)
    assert outcomes(result) == {
        f"Namespace/{namespace}": "changed",
        f"Deployment/{namespace}/web": "changed",
    }
    assert namespace_label(cluster, namespace) == "enabled"
    assert template_label(cluster, namespace, "web") == "true"
    assert template_label(cluster, namespace, "api") is None
    after = replica_sets(cluster, namespace, "web")
    assert len(after - before) == 1, "the Deployment did not roll to a new ReplicaSet"
    assert replica_sets(cluster, namespace, "api") == api_before

    # --wait: the rollout is complete, all Pods are new ones
    web = get_json(cluster, "deployment", "web", "-n", namespace)
    assert web is not None
    status = web["status"]
    assert status["updatedReplicas"] == status["replicas"] == status["availableReplicas"] == 1
    pods = get_json(cluster, "pods", "-n", namespace, "-l", "app=web")
    assert pods is not None
    new_rs = (after - before).pop()
    live = [p for p in pods["items"] if not p["metadata"].get("deletionTimestamp")]
    assert [p["metadata"]["ownerReferences"][0]["name"] for p in live] == [new_rs]

    # istiod injected the new Pod; the workload left out is named
    notes = " ".join(result["notes"])
    assert "without a sidecar" not in notes, notes
    assert "not opted in, so no sidecar (Kyma injects only Pods labelled " in notes
    assert f"Deployment/{namespace}/api" in notes
    workloads = {w["name"]: w for w in result["data"]["workloads"]}
    assert workloads["web"] == {
        "kind": "Deployment", "name": "web", "pods": 1, "podsWithSidecar": 1, "optedIn": True,
    }  # fmt: skip
    (pod,) = live
    assert "istio-proxy" in [c["name"] for c in pod["spec"]["containers"]]
    assert workloads["api"]["optedIn"] is False

    with cluster.audit.counting() as writes:
        code, again, _ = kymamesh_json(
            cluster, "inject-namespace", namespace, "-d", "web", "--wait"
        )
    assert code == 0
    assert set(outcomes(again).values()) == {"unchanged"}
    assert writes.total == 0, writes.describe()
    assert replica_sets(cluster, namespace, "web") == after


def test_all_then_disable_reverses_everything(cluster: Any, namespace: str) -> None:
    make_deployments(cluster, namespace, "one", "two")
    code, result, stderr = kymamesh_json(cluster, "inject-namespace", namespace, "--all")
    assert code == 0, (result, stderr)
    assert template_label(cluster, namespace, "one") == "true"
    assert template_label(cluster, namespace, "two") == "true"
    notes = " ".join(result["notes"])
    assert "Existing Pods get a sidecar only when they are re-created" in notes

    code, result, stderr = kymamesh_json(
        cluster, "inject-namespace", namespace, "--disable", "--wait", "--timeout", "120"
    )
    assert code == 0, (result, stderr)
    assert set(outcomes(result).values()) == {"changed"}
    assert namespace_label(cluster, namespace) is None
    assert template_label(cluster, namespace, "one") is None
    assert template_label(cluster, namespace, "two") is None
    assert result["data"]["injection"] == "disabled"

    with cluster.audit.counting() as writes:
        code, again, _ = kymamesh_json(cluster, "inject-namespace", namespace, "--disable")
    assert code == 0
    assert writes.total == 0, writes.describe()
    assert outcomes(again) == {f"Namespace/{namespace}": "unchanged"}


def test_unknown_names_are_refused_before_any_write(cluster: Any, namespace: str) -> None:
    make_deployments(cluster, namespace, "web")
    with cluster.audit.counting() as writes:
        code, result, _ = kymamesh_json(
            cluster, "inject-namespace", namespace, "-d", "web", "-d", "nope"
        )
        missing = kymamesh(cluster, "inject-namespace", "no-such-namespace-here", "--all")
        both = kymamesh(cluster, "inject-namespace", namespace, "--all", "-d", "web")
        system = kymamesh(cluster, "inject-namespace", "kube-system")
    assert writes.total == 0, writes.describe()
    assert code == 3
    assert result["status"] == "refused"
    assert f"not found in namespace {namespace}: nope" in result["errors"][0]["message"]
    assert "web" in result["errors"][0]["hint"]
    assert missing.returncode == 3
    assert "namespace no-such-namespace-here not found" in missing.stderr
    assert both.returncode == 2 and "exclude each other" in both.stderr
    assert system.returncode == 2 and "system namespace" in system.stderr
    assert namespace_label(cluster, namespace) is None
    assert template_label(cluster, namespace, "web") is None


def test_dry_run_shows_the_diff_and_writes_nothing(cluster: Any, namespace: str) -> None:
    make_deployments(cluster, namespace, "web")
    with cluster.audit.counting(include_dry_run=False) as writes:
        done = kymamesh(cluster, "inject-namespace", namespace, "--all", "--dry-run", "--wait")
    assert done.returncode == 0, done.stdout + done.stderr
    assert writes.total == 0, writes.describe()
    assert "[would-change]: label istio-injection=enabled" in done.stdout
    assert "+        sidecar.istio.io/inject: 'true'" in done.stdout
    assert "dry run: nothing was written" in done.stdout
    assert template_label(cluster, namespace, "web") is None


def _deny_updates_of(cluster: Any, namespace: str, name: str) -> str:
    """A ValidatingAdmissionPolicy that refuses every update of one Deployment; its name."""
    policy = f"deny-{namespace}"
    docs = [
        {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "ValidatingAdmissionPolicy",
            "metadata": {"name": policy},
            "spec": {
                "failurePolicy": "Fail",
                "matchConstraints": {
                    "resourceRules": [
                        {
                            "apiGroups": ["apps"],
                            "apiVersions": ["v1"],
                            "operations": ["UPDATE"],
                            "resources": ["deployments"],
                        }
                    ]
                },
                "validations": [
                    {"expression": f"object.metadata.name != '{name}'", "message": "blocked"}
                ],
            },
        },
        {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "ValidatingAdmissionPolicyBinding",
            "metadata": {"name": policy},
            "spec": {
                "policyName": policy,
                "validationActions": ["Deny"],
                "matchResources": {
                    "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}}
                },
            },
        },
    ]
    for doc in docs:
        cluster.kubectl("apply", "-f", "-", input=json.dumps(doc))
    for _ in range(100):  # the apiserver loads new policies within a moment
        probe = cluster.kubectl(
            "label",
            "deployment",
            name,
            "-n",
            namespace,
            "probe=1",
            "--dry-run=server",
            check=False,
        )
        if probe.returncode != 0 and "blocked" in probe.stderr:
            return policy
        time.sleep(0.2)
    raise AssertionError(f"policy {policy} never took effect")


def test_a_refused_deployment_fails_and_the_result_says_what_was_written(
    cluster: Any, namespace: str
) -> None:
    names = [f"d{i:02d}" for i in range(12)]
    make_deployments(cluster, namespace, *names)
    policy = _deny_updates_of(cluster, namespace, "d05")
    try:
        code, result, stderr = kymamesh_json(cluster, "inject-namespace", namespace, "--all")
        assert code != 0, (result, stderr)
        found = outcomes(result)
        assert found[f"Deployment/{namespace}/d05"] == "failed"
        assert "blocked" in result["errors"][0]["message"]
        assert namespace_label(cluster, namespace) == "enabled"
        for name in names:
            reported = found.get(f"Deployment/{namespace}/{name}")
            labelled = template_label(cluster, namespace, name) == "true"
            # reported changed exactly when written; not reported only when never tried
            assert labelled == (reported == "changed"), (name, reported, labelled)
    finally:
        cluster.kubectl(
            "delete",
            "validatingadmissionpolicybinding,validatingadmissionpolicy",
            policy,
            "--ignore-not-found",
        )
    for _ in range(100):  # until the apiserver has dropped the policy
        probe = cluster.kubectl(
            "label",
            "deployment",
            "d05",
            "-n",
            namespace,
            "probe=1",
            "--dry-run=server",
            check=False,
        )
        if probe.returncode == 0:
            break
        time.sleep(0.2)
    code, result, stderr = kymamesh_json(cluster, "inject-namespace", namespace, "--all")
    assert code == 0, (result, stderr)
    assert all(template_label(cluster, namespace, n) == "true" for n in names)


def test_the_plan_is_made_again_under_the_lock(cluster: Any, namespace: str) -> None:
    # Another run holds the lock; meanwhile it adds a Deployment. `--all` waits for the
    # lock, then labels every Deployment there is by then, not only those it saw first.
    ensure_istio(cluster)
    make_deployments(cluster, namespace, "early")
    other = Cluster.connect(str(cluster.kubeconfig))
    lines: list[str] = []
    try:
        with other.lock("istio-system", wait=30):
            run = subprocess.Popen(
                [sys.executable, "-m", "kymamesh", "inject-namespace", namespace, "--all"],
                env=cluster.env,
                cwd=ROOT,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            assert run.stderr is not None
            reader = threading.Thread(target=lambda: lines.extend(run.stderr or []), daemon=True)
            reader.start()
            cluster.wait_for(
                lambda: (
                    any("waiting for the lock" in line for line in lines) or run.poll() is not None
                ),
                timeout=60,
                what="inject-namespace to wait for the lock",
            )
            cluster.kubectl(
                "apply", "-n", namespace, "-f", "-", input=json.dumps(deployment("late"))
            )
        out, _ = run.communicate(timeout=120)
        reader.join(timeout=10)
    finally:
        other.close()
    assert run.returncode == 0, out + "".join(lines)
    assert template_label(cluster, namespace, "early") == "true"
    assert template_label(cluster, namespace, "late") == "true", out
