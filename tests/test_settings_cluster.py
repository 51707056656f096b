"""Patch settings given once (--domain, --config) are remembered in the cluster, so later
`status`, `patch` and `install` runs without them keep them instead of reverting."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from test_install_cluster import CHARTS, kymamesh

from kymamesh import settings


def test_given_settings_are_remembered(fresh_cluster: Any, tmp_path: Path) -> None:
    c = fresh_cluster()
    config = tmp_path / "kyma.yaml"
    config.write_text("steps:\n  sidecar-resources:\n    proxy: {limits: {memory: 512Mi}}\n")
    code, doc, err = kymamesh(
        c,
        "install",
        "--charts-dir",
        str(CHARTS),
        "--domain",
        "shop.example.com",
        "--config",
        str(config),
        "-y",
    )
    assert code == 0, (doc["errors"], err)
    stored = json.loads(
        c.kubectl("get", "configmap", settings.NAME, "-n", "istio-system", "-o", "json").stdout
    )
    assert stored["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "kymamesh"
    assert "shop.example.com" in stored["data"][settings.KEY]
    assert "512Mi" in stored["data"][settings.KEY]

    # without the flags: healthy, and nothing is reverted
    code, doc, _ = kymamesh(c, "status")
    assert code == 0, doc["data"].get("problems")
    with c.audit.counting() as writes:
        code, doc, _ = kymamesh(c, "patch", "-y")
        assert code == 0 and doc["changed"] is False
        code, doc, _ = kymamesh(c, "install", "--charts-dir", str(CHARTS), "-y")
        assert code == 0 and doc["changed"] is False
    assert writes.total == 0, writes.by_user_agent

    # a new value given later replaces the remembered one, and is remembered in turn
    code, doc, _ = kymamesh(c, "patch", "--domain", "store.example.com", "-y")
    assert code == 0 and doc["changed"] is True
    gateway = json.loads(
        c.kubectl("get", "gateway", "kyma-gateway", "-n", "kyma-system", "-o", "json").stdout
    )
    hosts = [h for server in gateway["spec"]["servers"] for h in server["hosts"]]
    assert "*.store.example.com" in hosts
    code, doc, _ = kymamesh(c, "status")
    assert code == 0, doc["data"].get("problems")


def test_unit_effective_and_what_is_remembered() -> None:
    remembered = {"ingress-gateway-tls": {"domain": "a.example.com"}}
    given = {"ingress-gateway-tls": {"certFile": "/tmp/c", "keyFile": "/tmp/k"}}
    merged = settings.effective(remembered, given)
    assert merged["ingress-gateway-tls"] == {
        "domain": "a.example.com",
        "certFile": "/tmp/c",
        "keyFile": "/tmp/k",
    }
    assert settings.to_remember(merged) == {"ingress-gateway-tls": {"domain": "a.example.com"}}
    assert settings.to_remember({"restart-proxies": {"restart": True}}) == {}
