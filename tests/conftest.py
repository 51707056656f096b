"""Shared pytest fixtures: the test cluster (tests/cluster/, see its README).

Fixtures:
    cluster         session-scoped TestCluster (started once, stopped at the end; or an
                    external one: KYMAMESH_TEST_KUBECONFIG_DIR=DIR of a running `up`)
    namespace       a fresh namespace (str) in `cluster`, deleted after the test
    fresh_cluster   factory: fresh_cluster() -> a new TestCluster of the test's own,
                    stopped after the test

TestCluster: .kubeconfig .restricted_kubeconfig .restricted_user .admin_user .server .node
.dir .bin_dir .helm (per KYMAMESH_TEST_HELM) .helm4 .helm3 .kubectl_bin .env (PATH with helm
and kubectl first, KUBECONFIG, HELM_*_HOME) .env_for(helm=4|3, restricted=False)
.kubectl(*args, check=True, input=None, restricted=False) .helm_run(*args, version=None)
.istioctl(*args, check=True) .analyze(*args, threshold="Warning") (istioctl analyze -A -o json:
the messages, [] when none)
.api(restricted=False) (stdlib client) .client(restricted=False) (kubernetes ApiClient)
.create_namespace(name, labels) .delete_namespace(name, wait=False) .wait_for(fn, timeout)
.healthy() .down(keep=True), and .audit, the write counter:

    mark = cluster.audit.mark()
    ...
    w = cluster.audit.writes_since(mark, user_agent_prefix=None, include_system=False,
                                   username=None, include_dry_run=True)
    w.total, w.by_user_agent, w.by_verb, w.by_user, w.events, print(w.describe())
    with cluster.audit.counting(user_agent_prefix="kymamesh") as w: ...

Writes by users named system:* (controllers, scheduler, kwok) are left out unless
include_system=True. Counts are exact right after the requests return (see AuditLog.settle).

Clusters are started ahead of need (tests/support_clusters.py): while a test runs, the next
one that starts a cluster (`fresh_cluster`, the session's `cluster`, a module fixture calling
`_start`) gets one started in the background, and a test's own clusters are stopped in the
background after it. KYMAMESH_TEST_PREFETCH=0 starts each when asked for, as before. The
files run longest first (their tests in order), which balances `pytest -n 2 --dist loadfile`
(scripts/test.sh); each xdist worker has its own session cluster.

Chart sources on loopback (tests/support_sources.py, imported here so every test can ask for
them): `chart_repo(*chart_dirs)` (a Helm repository over HTTP), `oci_registry(*chart_dirs)`
(an OCI registry, plain HTTP), `source_tools` (their helm and registry binaries).

Tests that use any of the cluster fixtures get the `cluster` marker automatically
(`-m "not cluster"` skips them). KYMAMESH_TEST_HELM=3 makes `cluster.env` / `cluster.helm` Helm 3 (a
compatibility run); Helm 4 otherwise.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
import secrets
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from support_clusters import pool
from support_sources import chart_repo, oci_registry, source_tools

TESTCLUSTER_PY = Path(__file__).resolve().parent / "cluster" / "testcluster.py"


def _load_testcluster():
    name = "kymamesh_testcluster"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, TESTCLUSTER_PY)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod  # dataclasses need the module registered
    spec.loader.exec_module(mod)
    return mod


testcluster = _load_testcluster()
CLUSTER_FIXTURES = {"cluster", "namespace", "fresh_cluster"}
ANALYZE_FOUND_ISSUES = 79  # istioctl analyze's exit code: a message at --failure-threshold
__all__ = ["chart_repo", "oci_registry", "source_tools"]  # fixtures of support_sources


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "cluster: talks to the test cluster (tests/cluster/)")


def _uses_a_cluster(item: pytest.Item) -> bool:
    return bool(CLUSTER_FIXTURES & set(getattr(item, "fixturenames", ())))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if _uses_a_cluster(item):
            item.add_marker(pytest.mark.cluster)
    _longest_files_first(items)


def _longest_files_first(items: list[pytest.Item]) -> None:
    """Order the files by their expected time, longest first (the tests of a file keep their
    order): with xdist (`-n 2 --dist loadfile`, scripts/test.sh) a worker takes the next file
    when it is nearly done with its own, so the short files fill the gaps at the end. The
    estimate counts the clusters a file starts and its tests on a cluster."""
    cost: dict[str, float] = {}
    module_fixtures: dict[str, set[str]] = {}
    for item in items:
        path = item.nodeid.split("::")[0]
        weight = 0.1
        if _uses_a_cluster(item):
            weight = 6.0
        if "fresh_cluster" in getattr(item, "fixturenames", ()):
            weight += 30.0
        for name in _own_cluster_fixtures(item):
            if name not in module_fixtures.setdefault(path, set()):
                module_fixtures[path].add(name)
                weight += 30.0
        cost[path] = cost.get(path, 0.0) + weight
    first = {path: i for i, path in enumerate(dict.fromkeys(cost))}
    items.sort(key=lambda it: (-cost[it.nodeid.split("::")[0]], first[it.nodeid.split("::")[0]]))


def _own_cluster_fixtures(item: pytest.Item) -> list[str]:
    """The fixtures of `item` other than the session's `cluster` that call `_start`."""
    names = set(getattr(item, "fixturenames", ())) - {"cluster"}
    defs = getattr(getattr(item, "_fixtureinfo", None), "name2fixturedefs", None) or {}
    found = []
    for name in sorted(names & set(defs)):
        code = getattr(getattr(defs[name][-1], "func", None), "__code__", None)
        if code is not None and "_start" in code.co_names:
            found.append(name)
    return found


# Clusters started ahead of need (support_clusters.py) --------------------------------------


def _starts_a_cluster(item: pytest.Item | None) -> bool:
    """Whether `item` starts a cluster: it uses `fresh_cluster`, or a fixture that calls
    `_start` (the session's `cluster`, a module's own cluster) and is not set up yet."""
    if item is None:
        return False
    names = set(getattr(item, "fixturenames", ()))
    if "fresh_cluster" in names:
        return True
    defs = getattr(getattr(item, "_fixtureinfo", None), "name2fixturedefs", None) or {}
    if os.environ.get("KYMAMESH_TEST_KUBECONFIG_DIR"):
        names.discard("cluster")  # an external cluster: nothing to start
    for name in names & set(defs):
        fixturedef = defs[name][-1]
        code = getattr(getattr(fixturedef, "func", None), "__code__", None)
        if (
            code is not None
            and "_start" in code.co_names
            and getattr(fixturedef, "cached_result", None) is None
        ):
            return True
    return False


_ahead: dict[str, Any] = {"item": None, "next": None, "first": True}


def _prefetch_for_what_comes() -> None:
    """Start a spare cluster when the next test, or a later one of the current test's file,
    starts one (the rest of a file runs in this process, with or without xdist)."""
    item, nextitem = _ahead["item"], _ahead["next"]
    if item is None:
        return
    if _starts_a_cluster(nextitem):
        pool.prefetch()
        return
    items = item.session.items
    here = item.nodeid.split("::")[0]
    index = _ahead.get("index")
    if index is None or _ahead.get("index_of") is not items:
        _ahead["index"] = index = {it.nodeid: i for i, it in enumerate(items)}
        _ahead["index_of"] = items
    for later in items[index.get(item.nodeid, len(items)) + 1 :]:
        if later.nodeid.split("::")[0] != here:
            break
        if _starts_a_cluster(later):
            pool.prefetch()
            return


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> None:
    _ahead["item"], _ahead["next"] = item, nextitem
    if pool.make_dir is None:
        factory = getattr(item.config, "_tmp_path_factory", None)  # what tmp_path_factory is
        if factory is not None:
            pool.make_dir = lambda: factory.mktemp("cluster")
    if _ahead["first"]:
        _ahead["first"] = False
        # the session's cluster starts while the tests that need none run
        if not os.environ.get("KYMAMESH_TEST_KUBECONFIG_DIR") and any(
            "cluster" in getattr(i, "fixturenames", ()) for i in item.session.items
        ):
            _build()
            pool.prefetch()
    _prefetch_for_what_comes()


def pytest_sessionfinish(session: pytest.Session) -> None:
    pool.close()


class TestCluster:
    """A running test cluster, as the tests see it."""

    __test__ = False  # not a test class

    def __init__(self, directory: str | os.PathLike, owned: bool):
        self._c = testcluster.Cluster.load(directory)
        self.owned = owned  # started by these fixtures (and stopped by them)
        self.dir: Path = self._c.dir
        self.kubeconfig: Path = self.dir / "kubeconfig"
        self.restricted_kubeconfig: Path = self.dir / "restricted.kubeconfig"
        self.restricted_user: str = self._c.state["restricted_user"]
        self.admin_user: str = self._c.state["admin_user"]
        self.server: str = self._c.server
        self.node: str = self._c.state["node"]
        self.bin_dir: Path = self._c.bin_dir
        self.helm4: Path = self.bin_dir / "helm"
        self.helm3: Path = self.bin_dir / "helm3"
        self.kubectl_bin: Path = self.bin_dir / "kubectl"
        self.helm_major: int = int(os.environ.get("KYMAMESH_TEST_HELM", "4"))
        self.helm: Path = self.helm3 if self.helm_major == 3 else self.helm4
        self.env: dict[str, str] = self.env_for(self.helm_major)
        self.audit = testcluster.AuditLog(self.dir / "audit.log", self._c.api())

    def __repr__(self) -> str:
        return f"TestCluster({self.server}, dir={self.dir})"

    # environment ---------------------------------------------------------------------------
    def env_for(self, helm: int = 4, restricted: bool = False) -> dict[str, str]:
        """os.environ plus KUBECONFIG, PATH (`helm` = Helm `helm`, kubectl) and HELM_*_HOME."""
        env = dict(os.environ)
        first = [str(self.bin_dir.parent / "helm3-bin")] if helm == 3 else []
        env["PATH"] = os.pathsep.join([*first, str(self.bin_dir), env.get("PATH", "")])
        env["KUBECONFIG"] = str(self.restricted_kubeconfig if restricted else self.kubeconfig)
        for k in ("CACHE", "CONFIG", "DATA"):
            env[f"HELM_{k}_HOME"] = str(self.dir / "helm" / k.lower())
        env.pop("HELM_KUBECONTEXT", None)
        env.pop("HELM_NAMESPACE", None)
        return env

    # command-line tools ------------------------------------------------------------------------
    def kubectl(
        self,
        *args: str,
        check: bool = True,
        input: str | None = None,
        restricted: bool = False,
        timeout: float = 120,
    ) -> subprocess.CompletedProcess:
        """Run kubectl against this cluster (text output captured)."""
        return self._run(
            [str(self.kubectl_bin), *args],
            check,
            input,
            self.env_for(self.helm_major, restricted),
            timeout,
        )

    def helm_run(
        self, *args: str, version: int | None = None, check: bool = True, timeout: float = 300
    ) -> subprocess.CompletedProcess:
        """Run helm (Helm 4 unless version=3 or KYMAMESH_TEST_HELM=3) against this cluster."""
        v = version or self.helm_major
        return self._run(
            [str(self.helm3 if v == 3 else self.helm4), *args],
            check,
            None,
            self.env_for(v),
            timeout,
        )

    def istioctl(
        self, *args: str, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess:
        """Run istioctl (Istio 1.31, from the module of the 1.31 istiod) against this cluster."""
        return self._run([str(self.bin_dir / "istioctl"), *args], check, None, self.env, timeout)

    def analyze(self, *args: str, threshold: str = "Warning") -> list[dict[str, Any]]:
        """`istioctl analyze -A` (or `args`, e.g. `-n NS`): its messages at `threshold` and
        above (code, level, message, origin); [] when it finds nothing."""
        scope = list(args) or ["-A"]
        r = self.istioctl(
            "analyze", *scope, "--output-threshold", threshold, "-o", "json", check=False
        )
        if r.returncode not in (0, ANALYZE_FOUND_ISSUES):
            raise AssertionError(f"istioctl analyze failed ({r.returncode}):\n{r.stderr}")
        return list(json.loads(r.stdout or "[]"))

    @staticmethod
    def _run(argv, check, input, env, timeout) -> subprocess.CompletedProcess:
        r = subprocess.run(
            argv, input=input, env=env, capture_output=True, text=True, timeout=timeout
        )
        if check and r.returncode != 0:
            raise AssertionError(
                f"{' '.join(argv)} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}"
            )
        return r

    # API clients -------------------------------------------------------------------------------
    def api(self, restricted: bool = False):
        """A tiny stdlib client: .request(method, path, body=None) -> (status, json)."""
        return self._c.api(restricted=restricted)

    def client(self, restricted: bool = False) -> Any:
        """A `kubernetes.client.ApiClient` for the admin (or the restricted user)."""
        from kubernetes import config as kconfig

        return kconfig.new_client_from_config(
            config_file=str(self.restricted_kubeconfig if restricted else self.kubeconfig)
        )

    # namespaces --------------------------------------------------------------------------------
    def create_namespace(
        self, name: str, labels: dict[str, str] | None = None, timeout: float = 30
    ) -> str:
        api = self.api()
        code, body = api.request(
            "POST",
            "/api/v1/namespaces",
            body={
                "apiVersion": "v1",
                "kind": "Namespace",
                "metadata": {"name": name, "labels": {"kymamesh-test": "true", **(labels or {})}},
            },
        )
        if code not in (200, 201):
            raise AssertionError(f"creating namespace {name}: {code} {body}")
        # Pods need the namespace's default ServiceAccount (made by the controller-manager).
        self.wait_for(
            lambda: api.get(f"/api/v1/namespaces/{name}/serviceaccounts/default")[0] == 200,
            timeout,
            f"ServiceAccount {name}/default",
        )
        return name

    def delete_namespace(self, name: str, wait: bool = False, timeout: float = 120) -> None:
        api = self.api()
        code, body = api.request("DELETE", f"/api/v1/namespaces/{name}")
        if code not in (200, 202, 404):
            raise AssertionError(f"deleting namespace {name}: {code} {body}")
        if wait:
            self.wait_for(
                lambda: api.get(f"/api/v1/namespaces/{name}")[0] == 404,
                timeout,
                f"namespace {name} to be gone",
            )

    @staticmethod
    def wait_for(
        fn: Callable[[], Any], timeout: float = 60, what: str = "condition", interval: float = 0.2
    ) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            r = fn()
            if r:
                return r
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout}s waiting for {what}")
            time.sleep(interval)

    # lifecycle ---------------------------------------------------------------------------------
    def healthy(self) -> bool:
        return self._c.healthy()

    def down(self, keep: bool = True) -> None:
        """Stop the cluster (only if these fixtures started it); keep=True keeps logs, audit.log."""
        if not self.owned:
            return
        _cli("down", "--dir", str(self.dir), *(["--keep"] if keep else []), timeout=120)


def _cli(*args: str, timeout: float) -> str:
    r = subprocess.run(
        [sys.executable, str(TESTCLUSTER_PY), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if r.returncode != 0:
        raise RuntimeError(
            f"testcluster.py {' '.join(args)} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}"
        )
    return r.stdout.strip()


_built = False


def _build() -> None:
    global _built
    if _built:
        return
    try:
        _cli("build", timeout=3600)  # instant when cached
    except RuntimeError as e:
        pytest.fail(f"could not build the test cluster: {e}", pytrace=False)
    _built = True


def _start(directory: Path) -> TestCluster:
    """A new cluster: the spare started in the background (support_clusters.py) if there is
    one, else one started now in `directory`."""
    _build()
    spare = pool.take()
    if spare is not None:
        _prefetch_for_what_comes()
        return TestCluster(spare, owned=True)
    for attempt in (1, 2):  # a second try, should another process take a port picked for us
        try:
            _cli("up", "--dir", str(directory), timeout=600)
            break
        except RuntimeError as e:
            with contextlib.suppress(RuntimeError):
                _cli("down", "--dir", str(directory), "--keep", timeout=120)
            if attempt == 2:
                pytest.fail(f"could not start the test cluster: {e}", pytrace=False)
            directory = directory.with_name(directory.name + "-retry")
    return TestCluster(directory, owned=True)


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestCluster]:
    external = os.environ.get("KYMAMESH_TEST_KUBECONFIG_DIR")
    if external:
        try:
            c = TestCluster(external, owned=False)
        except Exception as e:
            pytest.fail(f"KYMAMESH_TEST_KUBECONFIG_DIR={external}: {e}", pytrace=False)
        if not c.healthy():
            pytest.fail(
                f"KYMAMESH_TEST_KUBECONFIG_DIR={external}: the cluster there is not running/ready",
                pytrace=False,
            )
        yield c
        return
    c = _start(tmp_path_factory.mktemp("testcluster"))
    try:
        yield c
    finally:
        c.down(keep=True)


@pytest.fixture
def fresh_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[], TestCluster]]:
    """Factory for clusters of the test's own: `c = fresh_cluster()`; all stopped after the test."""
    started: list[TestCluster] = []

    def make() -> TestCluster:
        c = _start(tmp_path_factory.mktemp("fresh-cluster"))
        started.append(c)
        return c

    yield make
    for c in started:
        pool.stop_later(c.dir)  # `down --keep` in the background


def _ns_name(nodeid: str) -> str:
    base = re.sub(r"[^a-z0-9]+", "-", nodeid.split("::")[-1].lower()).strip("-")[:40].strip("-")
    return f"t-{base}-{secrets.token_hex(3)}"


@pytest.fixture
def namespace(cluster: TestCluster, request: pytest.FixtureRequest) -> Iterator[str]:
    """A new namespace (labelled kymamesh-test=true), deleted after the test (not waited for)."""
    name = cluster.create_namespace(_ns_name(request.node.nodeid))
    yield name
    with contextlib.suppress(Exception):
        cluster.delete_namespace(name)
