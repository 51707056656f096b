"""Bad input against an installed mesh on the test cluster: unknown step parameters, a chart
whose Chart.yaml names another chart, bad files, an empty domain, an endless wait. Each is
refused with its code, an error and a hint, and makes zero writes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from kymamesh import settings
from tests.support_lifecycle import CHARTS, NAMESPACE, get, install, kymamesh, writes_during


def refused(cluster: Any, *args: str, code: int) -> dict[str, Any]:
    """Run with -o json; assert it was refused with `code`, a hint, and zero writes."""
    run, writes = writes_during(cluster, lambda: kymamesh(cluster, *args, "-o", "json"))
    assert run.code == code, str(run)
    doc = run.doc
    assert doc["status"] == "refused" and doc["exitCode"] == code
    error = doc["errors"][0]
    assert error["hint"], error
    assert f"error: {error['message'].splitlines()[0]}" in run.stderr
    assert f"hint: {error['hint']}" in run.stderr
    assert writes.total == 0, writes.by_user_agent
    return dict(error)


def _settings(cluster: Any) -> dict[str, Any]:
    cm = get(cluster, "configmap", settings.NAME, "-n", NAMESPACE)
    return yaml.safe_load(cm["data"][settings.KEY]) if cm else {}


def test_unknown_step_parameter_is_refused_and_not_remembered(cluster: Any, tmp_path: Path) -> None:
    install(cluster)
    before = _settings(cluster)
    config = tmp_path / "config.yaml"
    config.write_text("steps:\n  sidecar-resources:\n    bogus: 1\n")
    for command in (("install", "--charts-dir", str(CHARTS), "-y"), ("patch", "-y"), ("status",)):
        error = refused(cluster, *command, "--config", str(config), code=2)
        assert "sidecar-resources" in error["message"] and "bogus" in error["message"]
        assert error["hint"] == "sidecar-resources takes: proxy, proxyInit"
    assert _settings(cluster) == before


def test_parameter_remembered_by_an_older_run_is_dropped(cluster: Any) -> None:
    """A setting no step takes any more (remembered before they were checked) is forgotten."""
    install(cluster)
    stored = {"steps": {"sidecar-resources": {"bogus": 1}}}
    manifest = settings.desired(NAMESPACE, stored["steps"])
    cluster.kubectl("apply", "-f", "-", input=json.dumps(manifest))
    assert kymamesh(cluster, "status").code == 0
    run = kymamesh(cluster, "patch", "-y")
    assert run.code == 0, str(run)
    assert "bogus" not in json.dumps(_settings(cluster))


def test_chart_named_otherwise_is_refused_before_any_write(cluster: Any, tmp_path: Path) -> None:
    install(cluster)
    charts = tmp_path / "charts"
    shutil.copytree(CHARTS, charts)
    meta_path = charts / "istiod" / "Chart.yaml"
    meta = yaml.safe_load(meta_path.read_text())
    meta["name"] = "notistiod"
    meta_path.write_text(yaml.safe_dump(meta))
    error = refused(cluster, "install", "--charts-dir", str(charts), "-y", code=3)
    assert error["code"] == "chart-source"
    assert "'notistiod'" in error["message"] and "istio-system/istiod" in error["message"]
    release = json.loads(cluster.helm_run("list", "-n", NAMESPACE, "-o", "json").stdout)
    assert {r["name"]: r["chart"] for r in release}["istiod"].startswith("istiod-")


@pytest.mark.parametrize(
    "args",
    [
        ("--domain", ""),
        ("--timeout", "inf"),
        ("--timeout", "nan"),
        ("--timeout", "-1"),
    ],
)
def test_empty_domain_and_endless_waits_are_refused(cluster: Any, args: tuple[str, str]) -> None:
    install(cluster)
    error = refused(cluster, "install", "--charts-dir", str(CHARTS), *args, "-y", code=2)
    assert args[0] in error["message"]


@pytest.mark.parametrize(
    ("flag", "content"),
    [
        ("-f", None),
        ("-f", "istiod: [1,\n"),
        ("-f", "- istiod\n"),
        ("--config", None),
        ("--config", "steps: {a: [\n"),
        ("--config", "- steps\n"),
    ],
)
def test_bad_files_are_refused_with_zero_writes(
    cluster: Any, tmp_path: Path, flag: str, content: str | None
) -> None:
    install(cluster)
    path = tmp_path / "input.yaml"
    if content is not None:
        path.write_text(content)
    error = refused(cluster, "install", "--charts-dir", str(CHARTS), flag, str(path), "-y", code=2)
    assert str(path) in error["message"]
