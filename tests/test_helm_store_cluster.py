"""The helm adapter reads releases from Helm's own records (Secrets) through the API:
what it reads is what helm itself says, for Helm 4 and Helm 3 records, across revisions,
failed upgrades and releases that do not exist; with HELM_DRIVER set otherwise it asks helm."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from tenacity import wait_none

from kymamesh.adapters import helm as helm_adapter
from kymamesh.adapters.cluster import Cluster, Ref
from kymamesh.adapters.helm import ATTEMPT_LABEL, Helm, decode_release
from kymamesh.errors import KymameshError

pytestmark = pytest.mark.cluster

CHART_YAML = "apiVersion: v2\nname: probe\nversion: 0.3.1\nappVersion: '9.9'\n"
TEMPLATE = """\
apiVersion: v1
kind: ConfigMap
metadata:
  name: probe
data:
  greeting: {{ .Values.greeting | quote }}
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: probe
spec:
  replicas: {{ .Values.replicas }}
  selector: {matchLabels: {app: probe}}
  template:
    metadata: {labels: {app: probe}}
    spec:
      containers: [{name: c, image: "{{ .Values.image }}"}]
"""


def _chart(tmp_path: Path) -> Path:
    chart = tmp_path / "probe"
    (chart / "templates").mkdir(parents=True)
    (chart / "Chart.yaml").write_text(CHART_YAML)
    (chart / "values.yaml").write_text("greeting: hi\nreplicas: 1\nimage: busybox\n")
    (chart / "templates" / "all.yaml").write_text(TEMPLATE)
    return chart


def _adapters(cluster: Any, helm: Path) -> tuple[Helm, Helm]:
    """(reads through the API, reads through helm) for the same cluster."""
    api = Cluster.connect(str(cluster.kubeconfig))

    def secrets(namespace: str, selector: str) -> list[dict[str, Any]]:
        return api.list("v1", "Secret", namespace, selector)

    return (
        Helm(str(helm), str(cluster.kubeconfig), None, release_secrets=secrets),
        Helm(str(helm), str(cluster.kubeconfig), None),
    )


@pytest.mark.parametrize("major", [4, 3])
def test_release_read_from_its_secret_is_what_helm_says(
    cluster: Any, namespace: str, tmp_path: Path, major: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in cluster.env_for(major).items():
        if key.startswith("HELM_"):
            monkeypatch.setenv(key, value)
    monkeypatch.delenv("HELM_DRIVER", raising=False)
    helm = cluster.helm3 if major == 3 else cluster.helm4
    by_api, by_helm = _adapters(cluster, helm)
    chart = _chart(tmp_path)
    assert by_api.deployed("probe", namespace) is None
    assert by_api.manifest("probe", namespace) == []

    def helm_run(*args: str, check: bool = True) -> None:
        cluster.helm_run(*args, "-n", namespace, version=major, check=check)

    helm_run(
        "install",
        "probe",
        str(chart),
        "--set",
        "greeting=hello",
        "--set-json",
        'extra={"n": 1.5, "big": 3000000000, "list": [1, "a", null], "t": true}',
    )
    helm_run(
        "upgrade",
        "probe",
        str(chart),
        "--reuse-values",
        "--set",
        "replicas=2",
        "--description",
        "second",
    )
    # a failed upgrade is the latest revision: its status is what counts
    helm_run("upgrade", "probe", str(chart), "--set", "image=bad:{{", check=False)
    helm_run("upgrade", "probe", str(chart), "--set", "replicas=x", check=False)
    statuses = []
    for _ in range(2):
        api_view, helm_view = (
            by_api.deployed("probe", namespace),
            by_helm.deployed("probe", namespace),
        )
        assert api_view == helm_view
        assert api_view is not None and api_view.chart == "probe"
        statuses.append((api_view.revision, api_view.status))
        assert by_api.manifest("probe", namespace) == by_helm.manifest("probe", namespace)
        assert by_api.manifest("probe", namespace, known=api_view) == by_helm.manifest(
            "probe", namespace
        )
        helm_run("rollback", "probe", "1")
    assert statuses == [(4, "failed"), (5, "deployed")]
    assert api_view.values["extra"]["big"] == 3000000000


def test_other_helm_storage_is_read_by_helm(
    cluster: Any, namespace: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in cluster.env_for(4).items():
        if key.startswith("HELM_"):
            monkeypatch.setenv(key, value)
    monkeypatch.setenv("HELM_DRIVER", "configmap")
    by_api, _ = _adapters(cluster, cluster.helm4)
    env = {**cluster.env_for(4), "HELM_DRIVER": "configmap"}
    cluster._run(
        [str(cluster.helm4), "install", "probe", str(_chart(tmp_path)), "-n", namespace],
        True,
        None,
        env,
        120,
    )
    found = by_api.deployed("probe", namespace)
    assert found is not None and found.status == "deployed" and found.revision == 1
    assert os.environ["HELM_DRIVER"] == "configmap"


class _CutShort:
    """Stands in for helm's first `upgrade`: it leaves revision 2 pending, as an attempt
    cut short by a network fault does (`by_this_attempt`: carrying the attempt's label, as
    helm records it; otherwise as a person's own `helm upgrade` made at that moment would,
    with the labels of the revision before), and fails with a transient fault. Later
    commands run helm."""

    def __init__(self, api: Cluster, helm: Helm, namespace: str, by_this_attempt: bool) -> None:
        self.api, self.namespace, self.mine = api, namespace, by_this_attempt
        self.real = helm._command.run
        self.upgrades: list[list[Any]] = []

    async def __call__(self, args: list[Any], input: bytes | None = None) -> bytes:
        import base64
        import gzip
        import json

        from pyhelm3 import errors

        if args[0] != "upgrade":
            return bytes(await self.real(args, input))
        self.upgrades.append(args)
        if len(self.upgrades) > 1:
            return bytes(await self.real(args, input))
        first = self.api.get(Ref("v1", "Secret", "sh.helm.release.v1.probe.v1", self.namespace))
        assert first is not None
        record = decode_release(first)
        record["version"] = 2
        record["info"]["status"] = "pending-upgrade"
        payload = base64.b64encode(gzip.compress(json.dumps(record).encode())).decode()
        labels = {**first["metadata"]["labels"], "version": "2", "status": "pending-upgrade"}
        if self.mine:
            labels[ATTEMPT_LABEL] = label_value(args)
        self.api.create(
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "type": first["type"],
                "metadata": {
                    "name": "sh.helm.release.v1.probe.v2",
                    "namespace": self.namespace,
                    "labels": labels,
                },
                "data": {"release": base64.b64encode(payload.encode()).decode()},
            }
        )
        raise errors.Error(1, b"", b"Error: UPGRADE FAILED: connection reset by peer")


def label_value(args: list[Any]) -> str:
    key, _, value = str(args[args.index("--labels") + 1]).partition("=")
    assert key == ATTEMPT_LABEL
    return value


def _pending_setup(
    cluster: Any, namespace: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[Cluster, Helm, list[str], Path]:
    for key, value in cluster.env_for(4).items():
        if key.startswith("HELM_"):
            monkeypatch.setenv(key, value)
    monkeypatch.delenv("HELM_DRIVER", raising=False)
    monkeypatch.setattr(helm_adapter, "wait_exponential", lambda **_: wait_none())
    api = Cluster.connect(str(cluster.kubeconfig))
    deleted: list[str] = []

    def drop(ns: str, name: str) -> None:
        deleted.append(name)
        api.delete(Ref("v1", "Secret", name, ns))

    helm = Helm(
        str(cluster.helm4),
        str(cluster.kubeconfig),
        None,
        release_secrets=lambda ns, sel: api.list("v1", "Secret", ns, sel),
        drop_release_secret=drop,
    )
    chart = _chart(tmp_path)
    cluster.helm_run("install", "probe", str(chart), "-n", namespace, version=4)
    return api, helm, deleted, tmp_path


def test_a_pending_revision_left_by_a_failed_attempt_is_dropped_before_the_retry(
    cluster: Any, namespace: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An attempt cut short leaves its revision pending and helm refuses the retry; the
    adapter drops that record (its own: the revision it makes, carrying its label)."""
    api, helm, deleted, charts = _pending_setup(cluster, namespace, tmp_path, monkeypatch)
    cut = _CutShort(api, helm, namespace, by_this_attempt=True)
    monkeypatch.setattr(helm._command, "run", cut)
    loaded = helm.load_local(charts, "probe")
    helm.install_or_upgrade("probe", loaded, {"greeting": "again"}, namespace, 60)
    assert deleted == ["sh.helm.release.v1.probe.v2"]
    assert len(cut.upgrades) == 2
    found = helm.deployed("probe", namespace)
    assert found is not None and found.status == "deployed" and found.revision == 2
    assert found.values == {"greeting": "again"}
    # the retry's own label value, a new one (the first attempt's is never reused)
    assert found.labels[ATTEMPT_LABEL] == label_value(cut.upgrades[1])
    assert label_value(cut.upgrades[0]) != label_value(cut.upgrades[1])


def test_a_pending_revision_someone_else_made_is_left_alone(
    cluster: Any, namespace: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While this run's attempt failed, a person's own `helm upgrade` made revision 2:
    it is theirs, newer than what this run saw, and not dropped; helm names it."""
    api, helm, deleted, charts = _pending_setup(cluster, namespace, tmp_path, monkeypatch)
    cut = _CutShort(api, helm, namespace, by_this_attempt=False)
    monkeypatch.setattr(helm._command, "run", cut)
    loaded = helm.load_local(charts, "probe")
    with pytest.raises(KymameshError) as refused:
        helm.install_or_upgrade("probe", loaded, {"greeting": "again"}, namespace, 60)
    assert "another operation" in refused.value.message
    assert deleted == []
    left = api.get(Ref("v1", "Secret", "sh.helm.release.v1.probe.v2", namespace))
    assert left is not None and left["metadata"]["labels"]["status"] == "pending-upgrade"
