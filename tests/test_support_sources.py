"""The loopback chart sources of tests/support_sources.py, with the real helm: a Helm
repository with several versions of a chart, an OCI registry fed by `helm push`, and both
refusing on demand (as a source that is down would) and serving again."""

from __future__ import annotations

import json
import subprocess
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
from support_sources import OCI_PATH, ChartRepo, OciRegistry, SourceTools

BASE = Path(__file__).resolve().parent / "fixtures" / "charts" / "base"


def helm(
    tools: SourceTools, *args: str, dest: Path | None = None, major: int = 4
) -> subprocess.CompletedProcess:
    if dest is not None:
        dest.mkdir(parents=True, exist_ok=True)
        args = (*args, "--destination", str(dest))
    binary = tools.helm3 if major == 3 else tools.helm
    return subprocess.run(
        [str(binary), *args], capture_output=True, text=True, env=tools.env, timeout=120
    )


def test_chart_repo_serves_several_versions_of_a_chart(
    chart_repo: Callable[..., ChartRepo], source_tools: SourceTools, tmp_path: Path
) -> None:
    repo = chart_repo(BASE)
    repo.add(BASE, version="1.31.0", app_version="1.31.0")
    repo.add(BASE, version="1.31.1", app_version="1.31.1")
    assert sorted(repo.versions("base")) == ["1.30.3", "1.31.0", "1.31.1"]
    assert repo.url.startswith("http://127.0.0.1:")
    r = helm(source_tools, "pull", "base", "--repo", repo.url, "--version", "1.31.0", dest=tmp_path)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "base-1.31.0.tgz").is_file()
    shown = helm(source_tools, "show", "chart", "base", "--repo", repo.url)
    assert shown.returncode == 0, shown.stderr
    assert "version: 1.31.1" in shown.stdout  # the newest, as helm picks it from the index
    assert "/index.yaml" in repo.requests and "/base-1.31.0.tgz" in repo.requests


@pytest.mark.parametrize("status", [503, None])
def test_chart_repo_refuses_then_serves_again(
    chart_repo: Callable[..., ChartRepo],
    source_tools: SourceTools,
    tmp_path: Path,
    status: int | None,
) -> None:
    repo = chart_repo(BASE)
    port = repo.port
    repo.refuse(status)
    r = helm(source_tools, "pull", "base", "--repo", repo.url, dest=tmp_path / "a")
    assert r.returncode != 0
    assert ("503" in r.stderr) if status else ("connection refused" in r.stderr), r.stderr
    repo.serve()
    assert repo.port == port
    r = helm(source_tools, "pull", "base", "--repo", repo.url, dest=tmp_path / "b")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "b" / "base-1.30.3.tgz").is_file()


@pytest.mark.parametrize("major", [4, 3])
def test_oci_registry_push_and_pull_with_plain_http(
    oci_registry: Callable[..., OciRegistry], source_tools: SourceTools, tmp_path: Path, major: int
) -> None:
    reg = oci_registry(BASE)
    url = reg.push(BASE, version="1.31.1")
    assert url == f"oci://127.0.0.1:{reg.port}/{OCI_PATH}"
    with urllib.request.urlopen(f"http://{reg.host}/v2/{OCI_PATH}/base/tags/list") as resp:
        assert sorted(json.load(resp)["tags"]) == ["1.30.3", "1.31.1"]
    r = helm(source_tools, "pull", f"{url}/base", "--version", "1.31.1", "--plain-http",
             dest=tmp_path, major=major)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "base-1.31.1.tgz").is_file()
    shown = helm(source_tools, "show", "chart", f"{url}/base", "--plain-http", major=major)
    assert "version: 1.31.1" in shown.stdout, shown.stderr  # the newest tag
    # without --plain-http: Helm 4 speaks https to it; Helm 3 falls back to http for a
    # loopback host (what the module docstring says)
    r = helm(source_tools, "pull", f"{url}/base", "--version", "1.31.1", dest=tmp_path / "x",
             major=major)  # fmt: skip
    if major == 4:
        assert r.returncode != 0
        assert "server gave HTTP response to HTTPS client" in r.stderr, r.stderr
    else:
        assert r.returncode == 0, r.stderr


def test_oci_registry_refuses_then_serves_again_with_its_charts(
    oci_registry: Callable[..., OciRegistry], source_tools: SourceTools, tmp_path: Path
) -> None:
    reg = oci_registry(BASE)
    port, url = reg.port, reg.url()
    reg.refuse()
    r = helm(source_tools, "pull", f"{url}/base", "--version", "1.30.3", "--plain-http",
             dest=tmp_path / "a")  # fmt: skip
    assert r.returncode != 0
    assert "connection refused" in r.stderr, r.stderr
    reg.serve()
    assert reg.port == port
    r = helm(source_tools, "pull", f"{url}/base", "--version", "1.30.3", "--plain-http",
             dest=tmp_path / "b")  # fmt: skip
    assert r.returncode == 0, r.stderr
