"""`kymamesh charts pull` against a chart repository served on loopback: the three Istio
charts and Dex's chart are saved as packages, a re-run downloads nothing, and the packages
are what `--charts-dir` takes (Dex's too, for `--identity`).

The repository holds the fixture charts, packaged by the real helm; kymamesh pulls with the
real helm. Dex's repository is pinned (`resources/dex/release.yaml`), so the pull runs
with the pinned Dex release pointing at the loopback repository (nothing leaves the machine).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from support_identity import APP_SECRET_ENV
from test_fixture_charts import HELM, needs_helm
from test_install_cluster import CHARTS

from kymamesh.istio.release import dex_pinned

pytestmark = needs_helm
FIXTURE = "1.30.3"  # the version of the fixture charts the repository serves

# runs the real entry point with the pinned Dex release's repository replaced
ENTRY = """
import dataclasses, os
import kymamesh.istio.release as release
from kymamesh.cli import main
pin = dataclasses.replace(release.dex_pinned(), chart_repository=os.environ["KM_TEST_DEX_REPO"])
release.dex_pinned = lambda: pin
main()
"""


class Repo:
    def __init__(self, url: str, requests: list[str]) -> None:
        self.url = url
        self.requests = requests  # paths asked for, in order


@pytest.fixture
def repo(tmp_path: Path) -> Iterator[Repo]:
    """An HTTP chart repository on 127.0.0.1 with base, istiod, gateway and dex."""
    assert HELM is not None
    folder = tmp_path / "repo"
    folder.mkdir()
    for chart in ("base", "istiod", "gateway", "dex"):
        helm(tmp_path, "package", str(CHARTS / chart), "-d", str(folder))
    requests: list[str] = []

    class Handler(SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            requests.append(self.path)

    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(Handler, directory=str(folder)))
    url = f"http://127.0.0.1:{server.server_address[1]}"
    helm(tmp_path, "repo", "index", str(folder), "--url", url)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield Repo(url, requests)
    finally:
        server.shutdown()
        server.server_close()


def helm_env(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    for name in ("CACHE", "CONFIG", "DATA"):
        env[f"HELM_{name}_HOME"] = str(tmp_path / "helm" / name.lower())
    env["KYMAMESH_HELM"] = str(HELM)
    return env


def helm(tmp_path: Path, *args: str) -> None:
    assert HELM is not None
    done = subprocess.run(
        [HELM, *args], env=helm_env(tmp_path), capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr


def pull(tmp_path: Path, repo: Repo, dest: Path) -> dict[str, Any]:
    args = ["charts", "pull", "--dest", str(dest), "--repo", repo.url, "--istio", FIXTURE, "-o"]
    args.append("json")
    done = subprocess.run(
        [sys.executable, "-c", ENTRY, *args],
        env=helm_env(tmp_path) | {"KM_TEST_DEX_REPO": repo.url},
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return dict(json.loads(done.stdout))


def outcomes(result: dict[str, Any]) -> dict[str, str]:
    return {i["name"]: i["outcome"] for p in result["phases"] for i in p["items"]}


def test_pull_saves_istio_and_dex_and_a_rerun_downloads_nothing(tmp_path: Path, repo: Repo) -> None:
    dest = tmp_path / "charts"
    first = pull(tmp_path, repo, dest)
    assert outcomes(first) == {n: "changed" for n in ("base", "istiod", "gateway", "dex")}
    istio, dex = FIXTURE, dex_pinned().version
    assert sorted(p.name for p in dest.iterdir()) == sorted(
        [f"{c}-{istio}.tgz" for c in ("base", "istiod", "gateway")] + [f"dex-{dex}.tgz"]
    )
    assert f"/dex-{dex}.tgz" in repo.requests

    repo.requests.clear()
    again = pull(tmp_path, repo, dest)
    assert outcomes(again) == {n: "unchanged" for n in ("base", "istiod", "gateway", "dex")}
    assert not [r for r in repo.requests if r.endswith(".tgz")], repo.requests


def test_pulled_packages_are_taken_from_charts_dir_with_dex(
    cluster: Any, tmp_path: Path, repo: Repo
) -> None:
    """The pulled packages, Dex's among them, are what `install --charts-dir` installs
    from; without Dex's package, `--identity` is refused before any write."""
    dest = tmp_path / "charts"
    pull(tmp_path, repo, dest)
    identity = tmp_path / "identity.yaml"
    identity.write_text(
        "connectors: [{type: oidc, id: corp, issuer: https://login.example.com, "
        f"clientID: kyma, clientSecret: {{env: {APP_SECRET_ENV}}}}}]\n"
    )
    env = dict(cluster.env) | {"KYMAMESH_HELM": str(cluster.helm), APP_SECRET_ENV: "s3cret-x"}

    def install(charts: Path) -> subprocess.CompletedProcess[str]:
        args = ["install", "--charts-dir", str(charts), "--identity", str(identity)]
        return subprocess.run(
            [sys.executable, "-m", "kymamesh", *args, "--dry-run", "-o", "json"],
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
            stdin=subprocess.DEVNULL,
        )

    with cluster.audit.counting() as writes:
        planned = install(dest)
    assert writes.total == 0, writes.describe()
    assert planned.returncode == 0, planned.stdout + planned.stderr
    result = json.loads(planned.stdout)
    (step,) = [i for p in result["phases"] for i in p["items"] if i["name"] == "identity"]
    version = dex_pinned().version
    assert f"HelmRelease/kyma-system/dex: install dex {version}" in step["changes"], step
    assert "Deployment/kyma-system/dex" in step["diff"], step["diff"]  # rendered from it

    (dest / f"dex-{version}.tgz").unlink()
    with cluster.audit.counting() as writes:
        refused = install(dest)
    assert writes.total == 0, writes.describe()
    assert refused.returncode == 3, refused.stdout + refused.stderr
    error = json.loads(refused.stdout)["errors"][0]
    assert f"no chart 'dex' in {dest}" in error["message"], error
    assert "charts pull" in error["hint"], error
