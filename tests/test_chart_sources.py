"""Chart sources as kymamesh uses them, against a Helm repository and an OCI registry on
loopback (tests/support_sources.py) with the real helm: each chart from the first source that
serves it (`charts pull`, `install`), `--plain-http` for a registry without TLS, and
`releases --refresh` reading an index and an OCI tag list for newer patches."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from support_sources import ChartRepo, OciRegistry, SourceTools

from tests.support_lifecycle import kymamesh, writes_during

FIXTURES = Path(__file__).resolve().parent / "fixtures"
CHARTS = FIXTURES / "charts"  # Istio 1.30.3
ISTIO = ("base", "istiod", "gateway")

# the real entry point with the pinned Dex release's repository replaced (charts pull also
# fetches Dex's chart; nothing may leave the machine)
ENTRY = """
import dataclasses, os
import kymamesh.istio.release as release
from kymamesh.cli import main
pin = dataclasses.replace(release.dex_pinned(), chart_repository=os.environ["KM_TEST_DEX_REPO"])
release.dex_pinned = lambda: pin
main()
"""


def run_cli(tools: SourceTools, *args: str, dex_repo: str = "") -> subprocess.CompletedProcess[str]:
    env = tools.env | {"KYMAMESH_HELM": str(tools.helm), "KM_TEST_DEX_REPO": dex_repo}
    return subprocess.run(
        [sys.executable, "-c", ENTRY, *args],
        env=env | {"KUBECONFIG": "/nonexistent"},  # no cluster: `releases` reads none
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
    )


def test_pull_falls_back_to_the_next_source_and_says_which_served(
    chart_repo: Callable[..., ChartRepo],
    oci_registry: Callable[..., OciRegistry],
    source_tools: SourceTools,
    tmp_path: Path,
) -> None:
    down = chart_repo(*(CHARTS / c for c in ISTIO))
    down.refuse(503)
    registry = oci_registry(*(CHARTS / c for c in ISTIO))
    dex = chart_repo(CHARTS / "dex")
    dest = tmp_path / "pulled"
    args = ["charts", "pull", "--istio", "1.30.3", "--dest", str(dest), "-o", "json"]
    args += ["--repo", down.url, "--repo", registry.url(), "--plain-http"]
    done = run_cli(source_tools, *args, dex_repo=dex.url)
    assert done.returncode == 0, done.stdout + done.stderr
    doc = json.loads(done.stdout)
    assert doc["data"]["servedBy"] == {c: registry.url() for c in ISTIO}
    assert sorted(p.name for p in dest.glob("*-1.30.3.tgz")) == [
        f"{c}-1.30.3.tgz" for c in sorted(ISTIO)
    ]
    assert any(r.endswith("index.yaml") for r in down.requests)  # the first was asked first

    # without --plain-http helm speaks TLS to the registry: refused, naming both sources
    again = run_cli(source_tools, *args[:-1], "--dest", str(tmp_path / "other"), dex_repo=dex.url)
    assert again.returncode == 3, again.stdout + again.stderr
    message = json.loads(again.stdout)["errors"][0]["message"]
    assert "no chart source served base 1.30.3" in message and registry.host in message


def test_refresh_names_newer_patches_and_minors(
    chart_repo: Callable[..., ChartRepo],
    oci_registry: Callable[..., OciRegistry],
    source_tools: SourceTools,
) -> None:
    istiod = CHARTS / "istiod"
    repo = chart_repo(istiod)  # 1.30.3
    registry = oci_registry()
    for version in ("1.30.5", "1.30.7", "1.31.1", "1.31.4", "1.32.0-rc.1", "1.32.0"):
        repo.add(istiod, version=version, app_version=version)
        registry.push(istiod, version=version)
    expected = {"newerPatches": {"1.31": ["1.31.4"], "1.30": ["1.30.7"]}, "newerMinor": "1.32.0"}
    for extra in (["--repo", repo.url], ["--repo", registry.url(), "--plain-http"]):
        done = run_cli(source_tools, "releases", "--refresh", *extra, "-o", "json")
        assert done.returncode == 0, done.stdout + done.stderr
        refresh = json.loads(done.stdout)["data"]["refresh"]
        assert {k: refresh[k] for k in expected} == expected, refresh
        assert refresh["source"] == extra[1]
        text = run_cli(source_tools, "releases", "--refresh", *extra)
        assert f"{extra[1]} serves newer 1.31 patches: 1.31.4" in text.stdout, text.stdout


def test_install_takes_the_charts_from_the_second_source(
    fresh_cluster: Any,
    chart_repo: Callable[..., ChartRepo],
    oci_registry: Callable[..., OciRegistry],
) -> None:
    """On a cluster: a dry run of `install` from the registry after the repository refused;
    nothing is written, and the plan is the 1.30.3 charts'."""
    cluster = fresh_cluster()
    down = chart_repo(*(CHARTS / c for c in ISTIO))
    down.refuse(None)  # connection refused
    registry = oci_registry(*(CHARTS / c for c in ISTIO))
    args = ["install", "--istio", "1.30.3", "--repo", down.url, "--repo", registry.url()]
    run, writes = writes_during(
        cluster,
        lambda: kymamesh(cluster, *args, "--plain-http", "--dry-run", "-y", "-o", "json"),
    )
    assert run.code == 0, str(run)
    assert writes.total == 0, writes.describe()
    assert run.doc["data"]["chartSources"] == {c: registry.url() for c in ISTIO}
    phase1 = {i["name"]: i for i in run.doc["phases"][0]["items"]}
    assert set(phase1) == {"istio-base", "istiod", "istio-ingressgateway"}
