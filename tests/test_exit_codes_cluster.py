"""Exit codes that need the test cluster: a refusal found again under the lock is still a
refusal (3, not 5: only the Lease was written); a malformed settings ConfigMap (3); an
insecure `--config` setting (3, `insecure-values`); waits bounded before the lock (2).
The cases without a cluster are in tests/test_exit_codes.py."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from kymamesh import settings
from kymamesh.errors import ExitCode
from tests.support_lifecycle import CHARTS, NAMESPACE, kymamesh, writes_during
from tests.test_json_contract import assert_result_shape

LEASES = f"/apis/coordination.k8s.io/v1/namespaces/{NAMESPACE}/leases"
LOCK = "kymamesh-lock"


def _hold_lock(c: Any, holder: str) -> None:
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    body = {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": LOCK, "namespace": NAMESPACE},
        "spec": {
            "holderIdentity": holder,
            "leaseDurationSeconds": 300,
            "acquireTime": now,
            "renewTime": now,
        },
    }
    code, out = c.api().request("POST", LEASES, body=body, user_agent="other-run")
    assert code == 201, (code, out)


def _non_lease_writes(writes: Any) -> list[str]:
    return [
        f"{e['verb']} {e['objectRef'].get('resource')}/{e['objectRef'].get('name')}"
        for e in writes.events
        if e["objectRef"].get("resource") != "leases"
    ]


def test_a_refusal_found_under_the_lock_exits_3_not_5(fresh_cluster: Any, tmp_path: Path) -> None:
    """install plans, waits for the lock another run holds; meanwhile a newer istio-base is
    installed by hand; under the lock the version gate refuses the downgrade. Nothing but
    the Lease was written, so the refusal keeps its code."""
    c = fresh_cluster()
    c.kubectl("create", "namespace", NAMESPACE)
    _hold_lock(c, "other-run")
    newer = tmp_path / "base"
    shutil.copytree(CHARTS / "base", newer)
    meta = yaml.safe_load((newer / "Chart.yaml").read_text())
    meta["version"] = meta["appVersion"] = "9.99.0"
    (newer / "Chart.yaml").write_text(yaml.safe_dump(meta))

    env = dict(c.env)
    env["KYMAMESH_HELM"] = str(c.helm)
    args = ["install", "--charts-dir", str(CHARTS), "-y", "-o", "json", "--lock-wait", "300"]
    mark = c.audit.mark()
    proc = subprocess.Popen(
        [sys.executable, "-m", "kymamesh", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    stderr: list[str] = []
    waiting = threading.Event()

    def read() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            stderr.append(line)
            if "other-run" in line:
                waiting.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert waiting.wait(300), "".join(stderr)
        # as an earlier kymamesh left it (its mark), so the version gate is what refuses
        c.helm_run(
            "install", "istio-base", str(newer), "-n", NAMESPACE, "--description", "kymamesh 0.0.1"
        )
        c.kubectl("delete", "lease", LOCK, "-n", NAMESPACE)
        out, _ = proc.communicate(timeout=300)
    finally:
        proc.kill()
    reader.join(10)
    doc = json.loads(out)
    assert_result_shape(doc)
    assert proc.returncode == ExitCode.PRECONDITION, (doc["errors"], "".join(stderr))
    assert doc["status"] == "refused" and doc["errors"][0]["code"] == "version-gate"
    writes = c.audit.writes_since(mark, user_agent_prefix="kymamesh")
    assert _non_lease_writes(writes) == [], writes.describe()


def test_a_malformed_settings_configmap_is_a_precondition(cluster: Any) -> None:
    cm = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": settings.NAME, "namespace": NAMESPACE},
        "data": {settings.KEY: "steps: [sidecar-resources\n"},
    }
    cluster.kubectl("create", "namespace", NAMESPACE, check=False)
    cluster.kubectl("apply", "-f", "-", input=json.dumps(cm))
    try:
        for command in (("status",), ("patch", "-y")):
            run, writes = writes_during(
                cluster, lambda command=command: kymamesh(cluster, *command, "-o", "json")
            )
            assert run.code == ExitCode.PRECONDITION, str(run)
            error = run.doc["errors"][0]
            assert settings.NAME in error["message"] and "not valid YAML" in error["message"]
            assert "kubectl -n istio-system delete configmap" in error["hint"]
            assert writes.total == 0, writes.describe()
    finally:
        cluster.kubectl("delete", "configmap", settings.NAME, "-n", NAMESPACE)


def test_insecure_mtls_mode_in_config_is_refused_as_insecure_values(
    cluster: Any, tmp_path: Path
) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("steps:\n  mtls-strict:\n    mode: PERMISSIVE\n")
    run, writes = writes_during(
        cluster,
        lambda: kymamesh(
            cluster,
            "install",
            "--charts-dir",
            str(CHARTS),
            "--config",
            str(config),
            "-y",
            "-o",
            "json",
        ),
    )
    assert run.code == ExitCode.PRECONDITION, str(run)
    assert run.doc["errors"][0]["code"] == "insecure-values"
    assert "PERMISSIVE" in run.doc["errors"][0]["message"]
    assert writes.total == 0, writes.describe()


def test_an_endless_timeout_is_refused_before_the_lock(cluster: Any) -> None:
    for flag in ("--timeout", "--lock-wait"):
        run, writes = writes_during(
            cluster,
            lambda flag=flag: kymamesh(
                cluster, "install", "--charts-dir", str(CHARTS), flag, "1e10", "-y", "-o", "json"
            ),
        )
        assert run.code == ExitCode.USAGE, str(run)
        assert flag in run.doc["errors"][0]["message"]
        assert writes.total == 0, writes.describe()
