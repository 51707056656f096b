"""`kymamesh install` phase 1 against the test cluster: fresh install, zero-write re-run,
refusals that leave the cluster untouched, dry run, upgrade, the lock, Helm 3."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from test_json_contract import assert_result_shape

from tests.support_lifecycle import install_as_an_earlier_kymamesh

ROOT = Path(__file__).resolve().parent.parent
CHARTS = ROOT / "tests" / "fixtures" / "charts"
CHARTS_129 = ROOT / "tests" / "fixtures" / "charts-1.29"
RELEASES = ["istio-base", "istiod", "istio-ingressgateway"]


def kymamesh(
    c: Any, *args: str, env: dict[str, str] | None = None, timeout: float = 600
) -> tuple[int, dict[str, Any], str]:
    """Run the real entry point with -o json; return exit code, JSON result, stderr."""
    run = subprocess.run(
        [sys.executable, "-m", "kymamesh", *args, "-o", "json"],
        env=env or c.env,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )
    try:
        doc = json.loads(run.stdout)
    except json.JSONDecodeError:
        raise AssertionError(
            f"no JSON on stdout ({run.returncode}):\n{run.stdout}\n{run.stderr}"
        ) from None
    assert_result_shape(doc)
    return run.returncode, doc, run.stderr


def items(doc: dict[str, Any], phase_prefix: str) -> dict[str, dict[str, Any]]:
    for phase in doc["phases"]:
        if phase["name"].startswith(phase_prefix):
            return {i["name"]: i for i in phase["items"]}
    return {}


def helm_releases(c: Any) -> dict[str, dict[str, Any]]:
    out = c.helm_run("list", "-n", "istio-system", "-o", "json").stdout
    return {r["name"]: r for r in json.loads(out)}


def istiod_image(c: Any) -> str:
    out = c.kubectl("get", "deploy", "istiod", "-n", "istio-system", "-o", "json").stdout
    return str(json.loads(out)["spec"]["template"]["spec"]["containers"][0]["image"])


@pytest.fixture
def installed(fresh_cluster: Any) -> Any:
    c = fresh_cluster()
    code, doc, err = kymamesh(c, "install", "--charts-dir", str(CHARTS), "-y")
    assert code == 0, (doc["errors"], err)
    return c


def test_fresh_install_deploys_three_releases_in_order(installed: Any) -> None:
    releases = helm_releases(installed)
    assert sorted(releases) == sorted(RELEASES)
    for name in RELEASES:
        assert releases[name]["status"] == "deployed"
        assert releases[name]["chart"].endswith("-1.30.3")
    assert istiod_image(installed).endswith(":1.30.3")
    # the CRDs are Established, the Deployments Available
    crd = json.loads(
        installed.kubectl(
            "get", "crd", "peerauthentications.security.istio.io", "-o", "json"
        ).stdout
    )
    assert any(
        c["type"] == "Established" and c["status"] == "True" for c in crd["status"]["conditions"]
    )
    for deploy in ("istiod", "istio-ingressgateway"):
        d = json.loads(
            installed.kubectl("get", "deploy", deploy, "-n", "istio-system", "-o", "json").stdout
        )
        assert d["status"].get("availableReplicas", 0) >= 1


def test_rerun_makes_zero_writes(installed: Any) -> None:
    with installed.audit.counting() as writes:
        code, doc, err = kymamesh(installed, "install", "--charts-dir", str(CHARTS), "-y")
    assert code == 0, err
    assert doc["changed"] is False
    assert all(i["outcome"] == "unchanged" for i in items(doc, "phase 1").values())
    assert all(i["outcome"] == "unchanged" for i in items(doc, "phase 2").values())
    assert writes.total == 0, writes.by_user_agent


def test_changed_values_upgrade_only_that_release(installed: Any) -> None:
    with installed.audit.counting() as writes:
        code, doc, err = kymamesh(
            installed,
            "install",
            "--charts-dir",
            str(CHARTS),
            "--set",
            "gateway.podAnnotations.team=mesh",
            "-y",
        )
    assert code == 0, (doc["errors"], err)
    outcomes = {n: i["outcome"] for n, i in items(doc, "phase 1").items()}
    assert outcomes == {
        "istio-base": "unchanged",
        "istiod": "unchanged",
        "istio-ingressgateway": "changed",
    }
    assert writes.total > 0
    assert helm_releases(installed)["istio-ingressgateway"]["revision"] == "2"


def test_insecure_values_refused_with_zero_writes(installed: Any, tmp_path: Path) -> None:
    values = tmp_path / "insecure.yaml"
    values.write_text("istiod:\n  meshConfig:\n    enableAutoMtls: false\n")
    with installed.audit.counting() as writes:
        code, doc, _ = kymamesh(
            installed, "install", "--charts-dir", str(CHARTS), "-f", str(values), "-y"
        )
    assert code == 3
    assert doc["status"] == "refused"
    assert doc["errors"][0]["code"] == "insecure-values"
    assert str(values) in doc["errors"][0]["message"]
    assert "meshConfig.enableAutoMtls" in doc["errors"][0]["message"]
    assert writes.total == 0


def test_charts_of_an_unsupported_minor_refused_with_zero_writes(installed: Any) -> None:
    with installed.audit.counting() as writes:
        code, doc, _ = kymamesh(installed, "install", "--charts-dir", str(CHARTS_129), "-y")
    assert code == 3
    assert "Istio 1.29.4 is not of a minor kymamesh supports" in doc["errors"][0]["message"]
    assert writes.total == 0
    assert helm_releases(installed)["istiod"]["chart"] == "istiod-1.30.3"


def test_lock_held_by_another_run_blocks_then_names_it(installed: Any) -> None:
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    lease = {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": "kymamesh-lock", "namespace": "istio-system"},
        "spec": {
            "holderIdentity": "ci-runner@build-7/pid-42/abcd",
            "leaseDurationSeconds": 30,
            "acquireTime": now,
            "renewTime": now,
        },
    }
    installed.kubectl("apply", "-f", "-", input=json.dumps(lease))
    start = time.monotonic()
    with installed.audit.counting(user_agent_prefix="kymamesh") as writes:
        code, doc, err = kymamesh(
            installed,
            "install",
            "--charts-dir",
            str(CHARTS),
            "--set",
            "istiod.pilot.env.EXAMPLE=1",
            "--lock-wait",
            "3",
            "-y",
        )
    waited = time.monotonic() - start
    assert code == 4
    assert doc["errors"][0]["code"] == "lock-held"
    assert "ci-runner@build-7" in doc["errors"][0]["message"]
    assert waited >= 3
    # while it waited, it said who holds the lock and in how long its Lease expires
    waiting = [line for line in err.splitlines() if "waiting for the lock" in line]
    assert len(waiting) == 1, err
    assert "ci-runner@build-7/pid-42/abcd" in waiting[0], waiting
    assert re.search(r"expires in \d+s unless renewed", waiting[0]), waiting
    assert writes.total == 0
    installed.kubectl("delete", "lease", "kymamesh-lock", "-n", "istio-system")


def test_dry_run_shows_diffs_and_writes_nothing(fresh_cluster: Any) -> None:
    c = fresh_cluster()
    with c.audit.counting() as writes:
        code, doc, err = kymamesh(c, "install", "--charts-dir", str(CHARTS), "--dry-run")
    assert code == 0, (doc["errors"], err)
    assert doc["dryRun"] is True and doc["changed"] is True
    phase1 = items(doc, "phase 1")
    assert all(i["outcome"] == "would-change" for i in phase1.values())
    assert "Deployment/istio-system/istiod" in phase1["istiod"]["diff"]
    assert "+kind: CustomResourceDefinition" in phase1["istio-base"]["diff"]
    assert writes.total == 0
    assert c.kubectl("get", "ns", "istio-system", check=False).returncode != 0


def test_upgrade_from_previous_minor(fresh_cluster: Any) -> None:
    c = fresh_cluster()
    install_as_an_earlier_kymamesh(c, CHARTS_129)
    assert istiod_image(c).endswith(":1.29.4")
    code, doc, err = kymamesh(c, "install", "--charts-dir", str(CHARTS), "-y")
    assert code == 0, (doc["errors"], err)
    phase1 = items(doc, "phase 1")
    assert all(i["outcome"] == "changed" for i in phase1.values())
    assert "upgrade 1.29.4 -> 1.30.3" in phase1["istiod"]["summary"]
    assert istiod_image(c).endswith(":1.30.3")
    assert all(r["chart"].endswith("-1.30.3") for r in helm_releases(c).values())


def test_two_installs_at_once_take_turns(fresh_cluster: Any) -> None:
    c = fresh_cluster()
    argv = [sys.executable, "-m", "kymamesh", "install", "--charts-dir", str(CHARTS), "-y"]
    procs = [
        subprocess.Popen(
            [*argv, "-o", "json", "--lock-wait", "300"],
            env=c.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
        )
        for _ in range(2)
    ]
    results = [p.communicate(timeout=600) for p in procs]
    docs = [json.loads(out) for out, _ in results]
    assert [p.returncode for p in procs] == [0, 0], [err for _, err in results]
    changed = sorted(d["changed"] for d in docs)
    # one run installed; the other waited for its lock, planned again and found nothing to do
    assert changed == [False, True]
    waiting = next(err for (_, err), d in zip(results, docs, strict=True) if not d["changed"])
    assert "istiod" in waiting
    assert all(r["revision"] == "1" for r in helm_releases(c).values())


def test_helm3_install_and_rerun(fresh_cluster: Any) -> None:
    c = fresh_cluster()
    env = c.env_for(helm=3)
    code, doc, err = kymamesh(
        c, "install", "--charts-dir", str(CHARTS), "--helm", str(c.helm3), "-y", env=env
    )
    assert code == 0, (doc["errors"], err)
    version = c.helm_run("version", "--short", version=3).stdout
    assert version.startswith("v3.19")
    with c.audit.counting() as writes:
        code, doc, _ = kymamesh(
            c, "install", "--charts-dir", str(CHARTS), "--helm", str(c.helm3), "-y", env=env
        )
    assert code == 0 and doc["changed"] is False
    assert writes.total == 0


def test_unreachable_api_server_is_a_clear_error(tmp_path: Path) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: dead\n"
        "clusters: [{name: dead, cluster: {server: 'https://127.0.0.1:9'}}]\n"
        "users: [{name: u, user: {token: x}}]\n"
        "contexts: [{name: dead, context: {cluster: dead, user: u}}]\n"
    )
    run = subprocess.run(
        [sys.executable, "-m", "kymamesh", "install", "--charts-dir", str(CHARTS), "-y"],
        env={"PATH": "/usr/bin:/bin", "KUBECONFIG": str(kubeconfig), "KYMAMESH_HELM": "/bin/true"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 3, run.stderr
    assert "cannot reach the Kubernetes API at https://127.0.0.1:9" in run.stderr
    assert "hint:" in run.stderr


def test_unknown_context_is_a_clear_error(cluster: Any) -> None:
    with cluster.audit.counting() as writes:
        code, doc, _ = kymamesh(
            cluster, "install", "--charts-dir", str(CHARTS), "--context", "nope", "-y"
        )
    assert code == 3
    assert "context 'nope'" in doc["errors"][0]["message"]
    assert writes.total == 0


def test_unreachable_chart_repository_points_to_charts_dir(cluster: Any) -> None:
    with cluster.audit.counting() as writes:
        code, doc, _ = kymamesh(cluster, "install", "--repo", "https://127.0.0.1:9/charts", "-y")
    assert code == 3
    error = doc["errors"][0]
    assert error["code"] == "chart-source"
    assert "https://127.0.0.1:9/charts" in error["message"]
    assert "--charts-dir" in error["hint"]
    assert writes.total == 0


def test_timeout_names_what_is_not_ready_and_stops_before_the_gateway(fresh_cluster: Any) -> None:
    c = fresh_cluster()
    code, doc, _ = kymamesh(
        c,
        "install",
        "--charts-dir",
        str(CHARTS),
        "--set",
        "istiod.nodeSelector.example\\.com/pool=no-such-pool",
        "--timeout",
        "5",
        "-y",
    )
    assert code == 4
    error = doc["errors"][0]
    assert error["code"] == "timeout"
    assert "Deployment/istio-system/istiod (0 of 1 replicas available" in error["message"]
    outcomes = {n: i["outcome"] for n, i in items(doc, "phase 1").items()}
    assert outcomes == {"istio-base": "changed", "istiod": "failed"}
    assert "istio-ingressgateway" not in helm_releases(c)


def test_install_over_foreign_istiod_is_refused_with_zero_writes(fresh_cluster: Any) -> None:
    c = fresh_cluster()
    c.kubectl("create", "namespace", "istio-system")
    c.kubectl(
        "create",
        "deployment",
        "istiod",
        "-n",
        "istio-system",
        "--image=docker.io/istio/pilot:1.30.3",
    )
    with c.audit.counting() as writes:
        code, doc, _ = kymamesh(c, "install", "--charts-dir", str(CHARTS), "-y")
    assert code == 3
    assert "made by something other than Helm" in doc["errors"][0]["message"]
    assert "patch --existing-istio" in doc["errors"][0]["hint"]
    assert writes.total == 0


def test_helm_too_old_is_refused_before_any_write(fresh_cluster: Any, tmp_path: Path) -> None:
    """A helm too old is refused before the first write, with its own error and exit
    code 3."""
    c = fresh_cluster()
    old = tmp_path / "helm"
    old.write_text("#!/bin/sh\nprintf v3.10.2\n")
    old.chmod(0o755)
    with c.audit.counting() as writes:
        code, doc, _ = kymamesh(c, "install", "--charts-dir", str(CHARTS), "--helm", str(old), "-y")
    assert code == 3
    error = doc["errors"][0]
    assert error["code"] == "helm-missing"
    assert f"helm at {old} is 3.10.2; kymamesh needs Helm 4 or 3.18+" in error["message"]
    assert writes.total == 0
    assert not helm_releases(c)
