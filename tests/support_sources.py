"""Chart sources on loopback for the tests: a Helm chart repository and an OCI registry.

Both serve charts packaged by the real helm, on a free port of 127.0.0.1, and can be made
to refuse, so a test can check that a client falls back to its next source.

Fixtures (use them from a test module with `from support_sources import chart_repo,
oci_registry`, or ask for them in a conftest):

    chart_repo      factory: chart_repo(*chart_dirs) -> ChartRepo, serving at once;
                    every repository it made is stopped after the test
    oci_registry    factory: oci_registry(*chart_dirs) -> OciRegistry, serving at once
                    (the charts pushed under `istio/release/charts`); stopped after the test
    source_tools    session-wide SourceTools: .helm (4), .helm3, .registry, the binaries of the test
                    cluster's cache (parts `helm` and `registry` of testcluster.py, built if
                    missing), .home and .env (HELM_*_HOME under .home)

ChartRepo (an HTTP Helm repository, `index.yaml` made by `helm repo index`):
    .url ("http://127.0.0.1:PORT"), .port, .dir (the served folder), .requests (the paths
    asked for, in order, refused ones too), .add(chart_dir, version=None, app_version=None)
    -> the package (packaged with `helm package`, index rebuilt), .index() -> the parsed
    index.yaml, .versions(chart) -> its versions in the index, .refuse(status=503)
    (every request answered with that status; status=None: the port is closed, so
    connections are refused), .serve() (serve again, on the same port), .stop()

OciRegistry (go-containerregistry's `registry`, bin name `oci-registry`):
    .host ("127.0.0.1:PORT"), .port, .url(path="istio/release/charts") ->
    "oci://127.0.0.1:PORT/istio/release/charts", .push(chart, version=None,
    path="istio/release/charts") -> that URL (chart: a chart folder or a packaged .tgz),
    .pushed (the packages pushed, per path), .refuse() (the process is stopped:
    connections are refused), .serve() (started again on the same port and every pushed
    package pushed again: it keeps what it stores in memory), .stop()

Module-level helpers: package(helm, chart_dir, dest, version=None, app_version=None,
env=None) -> Path (`helm package`), helm_env(home) -> dict (os.environ with HELM_*_HOME
under `home`).

Plain HTTP and helm, which the product code needs to know:
- A Helm repository on plain HTTP needs nothing special: `helm pull CHART --repo
  http://127.0.0.1:PORT --version V`, `helm show chart CHART --repo URL`, `helm install
  --repo URL` work as with https (pyhelm3's `repo=` works unchanged).
- An OCI registry on plain HTTP needs `--plain-http` on every Helm 4 command that reaches
  it: `helm push X.tgz oci://HOST/PATH --plain-http`, `helm pull oci://HOST/PATH/CHART
  --version V --plain-http`, and likewise `helm show chart|values`, `helm template`, `helm
  install`, `helm upgrade` of an `oci://` reference. Without it Helm 4.1.4 speaks https, to
  127.0.0.1 and `localhost` too, and fails with `http: server gave HTTP response to HTTPS
  client`; there is no environment variable for it (`helm env` lists none). Helm 3.19.0
  falls back to plain HTTP by itself for a loopback host (127.0.0.1, localhost) and accepts
  `--plain-http` too (all the commands above have the flag in both majors): so pass it,
  whichever helm runs.
- pyhelm3 0.5.8 has no parameter for it: `Client.get_chart`, `Client.pull_chart`,
  `Command.pull`, `Command.show_chart` and `Command.install_or_upgrade` build their argument
  lists themselves. So, for a loopback (plain HTTP) registry, run helm through
  `Command.run([..., "--plain-http"])` (as kymamesh's helm adapter already runs
  `pull`), or pull the chart once with `--plain-http` into a folder and give pyhelm3 that
  folder (a local chart needs no flag).
- `helm pull --destination DIR` needs DIR to exist (Helm 4 fails with "no such file").
- The registry answers about 1 request in 100 with an HTTP `Warning` header (a joke of
  go-containerregistry's `registry` command); helm prints it on stderr and goes on.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

TESTCLUSTER_PY = Path(__file__).resolve().parent / "cluster" / "testcluster.py"
OCI_PATH = "istio/release/charts"  # where Istio publishes its charts (oci://ghcr.io/...)


def _testcluster() -> Any:
    """tests/cluster/testcluster.py as a module (the one conftest.py loads, if loaded)."""
    name = "kymamesh_testcluster"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, TESTCLUSTER_PY)
        assert spec is not None and spec.loader is not None
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        spec.loader.exec_module(mod)
    return sys.modules[name]


def helm_env(home: Path) -> dict[str, str]:
    """os.environ with helm's cache, config (registry logins too) and data under `home`."""
    env = dict(os.environ)
    for k in ("CACHE", "CONFIG", "DATA"):
        env[f"HELM_{k}_HOME"] = str(home / k.lower())
    return env


def _helm(helm: Path, *args: str, env: dict[str, str] | None = None) -> str:
    r = subprocess.run(
        [str(helm), *args], capture_output=True, text=True, env=env, timeout=120, check=False
    )
    if r.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed ({r.returncode}):\n{r.stderr}")
    return r.stdout


def package(
    helm: Path,
    chart_dir: Path,
    dest: Path,
    version: str | None = None,
    app_version: str | None = None,
    env: dict[str, str] | None = None,
) -> Path:
    """`helm package` a chart folder into `dest` (as `version`/`app_version` if given)."""
    dest.mkdir(parents=True, exist_ok=True)
    args = ["package", str(chart_dir), "--destination", str(dest)]
    args += ["--version", version] if version else []
    args += ["--app-version", app_version] if app_version else []
    out = _helm(helm, *args, env=env)
    # "Successfully packaged chart and saved it to: DEST/NAME-VERSION.tgz"
    return Path(out.strip().rpartition(": ")[2])


@dataclass
class SourceTools:
    helm: Path  # Helm 4
    helm3: Path
    registry: Path
    home: Path  # HELM_*_HOME go under it

    @property
    def env(self) -> dict[str, str]:
        return helm_env(self.home)


def find_tools(home: Path) -> SourceTools:
    """The helm and registry binaries of the test cluster's cache (built if missing)."""
    tc = _testcluster()
    try:
        helm_dir, registry_dir = tc.build_parts(["helm", "registry"])
    except Exception as e:
        pytest.fail(f"could not build helm and the OCI registry (tests/cluster/): {e}")
    return SourceTools(helm_dir / "helm", helm_dir / "helm3", registry_dir / "registry", home)


# ------------------------------------------------------------------------- chart repository


class ChartRepo:
    """A Helm chart repository over HTTP on 127.0.0.1: packages and `index.yaml`."""

    def __init__(self, tools: SourceTools, folder: Path) -> None:
        self.tools = tools
        self.dir = folder
        self.dir.mkdir(parents=True, exist_ok=True)
        self.requests: list[str] = []
        self.status: int | None = None  # when set, every request gets this status
        self._server: ThreadingHTTPServer | None = None
        self.port = 0
        self.serve()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _handler(self) -> type[SimpleHTTPRequestHandler]:
        repo = self

        class Handler(SimpleHTTPRequestHandler):
            def do_GET(self) -> None:
                repo.requests.append(self.path)
                if repo.status is not None:
                    self.send_error(repo.status, "refused by the test (ChartRepo.refuse)")
                    return
                super().do_GET()

            def do_HEAD(self) -> None:
                repo.requests.append(self.path)
                if repo.status is not None:
                    self.send_error(repo.status, "refused by the test (ChartRepo.refuse)")
                    return
                super().do_HEAD()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler

    def serve(self) -> None:
        """Serve (again): on the same port as before, answering normally."""
        self.status = None
        if self._server is not None:
            return
        server = ThreadingHTTPServer(
            ("127.0.0.1", self.port), partial(self._handler(), directory=str(self.dir))
        )
        server.daemon_threads = True
        self.port = int(server.server_address[1])
        threading.Thread(target=server.serve_forever, daemon=True).start()
        self._server = server
        if not (self.dir / "index.yaml").exists():
            self.reindex()

    def refuse(self, status: int | None = 503) -> None:
        """Answer every request with `status`; with None, close the port (connection refused)."""
        if status is not None:
            self.status = status
            return
        self.stop()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def add(
        self, chart_dir: Path, version: str | None = None, app_version: str | None = None
    ) -> Path:
        """Package a chart folder into the repository (as `version`) and rebuild the index."""
        tgz = package(
            self.tools.helm, chart_dir, self.dir, version, app_version, env=self.tools.env
        )
        self.reindex()
        return tgz

    def reindex(self) -> None:
        _helm(
            self.tools.helm, "repo", "index", str(self.dir), "--url", self.url, env=self.tools.env
        )

    def index(self) -> dict[str, Any]:
        return dict(yaml.safe_load((self.dir / "index.yaml").read_text()))

    def versions(self, chart: str) -> list[str]:
        return [str(e["version"]) for e in self.index().get("entries", {}).get(chart, [])]


# ------------------------------------------------------------------------- OCI registry


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    """SIGKILL the registry when the test process dies, even by SIGKILL."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(ctypes.c_int(1), ctypes.c_ulong(signal.SIGKILL), *[ctypes.c_ulong(0)] * 3)


class OciRegistry:
    """go-containerregistry's registry on 127.0.0.1 (plain HTTP, storage in memory)."""

    def __init__(self, tools: SourceTools, folder: Path) -> None:
        self.tools = tools
        self.dir = folder  # its log; the registry keeps what it stores in memory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.pushed: dict[str, list[Path]] = {}  # path -> packages, in push order
        self.serve()

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def url(self, path: str = OCI_PATH) -> str:
        return f"oci://{self.host}/{path.strip('/')}"

    def serve(self, timeout: float = 20) -> None:
        """Start the registry (again, on the same port) and push what was pushed before."""
        if self.proc is not None and self.proc.poll() is None:
            return
        log = self.dir / "registry.log"
        start = log.stat().st_size if log.exists() else 0
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(
                [str(self.tools.registry), "-port", str(self.port)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent,
            )
        deadline = time.monotonic() + timeout
        marker = "serving on port "
        while True:
            text = log.read_bytes()[start:].decode(errors="replace")
            if marker in text:
                self.port = int(text.split(marker, 1)[1].split()[0])
                break
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"the OCI registry did not start:\n{text}")
            time.sleep(0.05)
        try:  # it listens on "localhost": make sure that is 127.0.0.1 here
            socket.create_connection(("127.0.0.1", self.port), timeout=5).close()
        except OSError as e:
            self.stop()
            raise AssertionError(f"the OCI registry is not on 127.0.0.1:{self.port}: {e}") from e
        for path, packages in self.pushed.items():
            for tgz in packages:
                self._push(tgz, path)

    def refuse(self) -> None:
        """Stop the registry: connections to its port are refused until `serve()`."""
        self.stop()

    def stop(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.terminate()
                try:
                    self.proc.wait(5)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(5)
            self.proc = None

    def push(self, chart: Path, version: str | None = None, path: str = OCI_PATH) -> str:
        """Push a chart (a folder, packaged first, or a .tgz) to oci://HOST/PATH/NAME:VERSION;
        returns `url(path)`, the reference to give helm: `url(path)/NAME`."""
        if chart.is_dir() or version:
            if not chart.is_dir():
                raise ValueError("version= needs a chart folder, not a package")
            chart = package(
                self.tools.helm, chart, self.dir / "packages", version, env=self.tools.env
            )
        self._push(chart, path)
        self.pushed.setdefault(path, []).append(chart)
        return self.url(path)

    def _push(self, tgz: Path, path: str) -> None:
        _helm(self.tools.helm, "push", str(tgz), self.url(path), "--plain-http", env=self.tools.env)


# ------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def source_tools(tmp_path_factory: pytest.TempPathFactory) -> SourceTools:
    return find_tools(tmp_path_factory.mktemp("source-helm"))


@pytest.fixture
def chart_repo(
    source_tools: SourceTools, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[..., ChartRepo]]:
    """Factory: chart_repo(*chart_dirs) -> a ChartRepo serving their packages."""
    made: list[ChartRepo] = []

    def make(*chart_dirs: Path) -> ChartRepo:
        repo = ChartRepo(source_tools, tmp_path_factory.mktemp("chart-repo"))
        made.append(repo)
        for d in chart_dirs:
            repo.add(d)
        return repo

    yield make
    for r in made:
        with contextlib.suppress(Exception):
            r.stop()


@pytest.fixture
def oci_registry(
    source_tools: SourceTools, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[..., OciRegistry]]:
    """Factory: oci_registry(*chart_dirs) -> an OciRegistry with them under OCI_PATH."""
    made: list[OciRegistry] = []

    def make(*chart_dirs: Path) -> OciRegistry:
        reg = OciRegistry(source_tools, tmp_path_factory.mktemp("oci-registry"))
        made.append(reg)
        for d in chart_dirs:
            reg.push(d)
        return reg

    yield make
    for r in made:
        with contextlib.suppress(Exception):
            r.stop()
