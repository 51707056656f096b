"""What the benchmarks share: the test cluster, a fresh cluster per round, and one way to
run a command and measure it (wall time, peak memory, the requests it made).

Peak memory is read from the kernel, not sampled: a kymamesh command runs under
`peak.py`, which reports the command's own peak resident set (`getrusage(RUSAGE_SELF)`)
and that of its largest child process (helm); any other command is measured by
`wait4`, which gives the largest resident set of the process and of the children it
waited for (for the plain script: bash, helm, kubectl).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
CHARTS = ROOT / "tests" / "fixtures" / "charts"
TESTCLUSTER = ROOT / "tests" / "cluster" / "testcluster.py"
PEAK = ROOT / "benchmarks" / "peak.py"


def testcluster() -> Any:
    """tests/cluster/testcluster.py as a module (it is not a package)."""
    spec = importlib.util.spec_from_file_location("kymamesh_testcluster", TESTCLUSTER)
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.modules["kymamesh_testcluster"] = mod
    spec.loader.exec_module(mod)
    return mod


def build() -> None:
    subprocess.run([sys.executable, str(TESTCLUSTER), "build"], check=True, capture_output=True)


def cluster_env(directory: Path) -> dict[str, str]:
    """The environment a shell gets from the cluster's `env` file (KUBECONFIG, PATH)."""
    env = dict(os.environ)
    for line in (directory / "env").read_text().splitlines():
        if line.startswith("export "):
            key, _, value = line[len("export ") :].partition("=")
            env[key] = value.strip("'\"").replace("$PATH", env.get("PATH", ""))
    return env


@dataclass(frozen=True)
class Fresh:
    env: dict[str, str]  # KUBECONFIG and PATH of the cluster
    log: Any  # its audit log (testcluster.AuditLog)
    directory: Path


@contextlib.contextmanager
def fresh_cluster(tc: Any, prefix: str) -> Iterator[Fresh]:
    """A test cluster of its own, stopped again at the end."""
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        directory = Path(tmp) / "c"
        subprocess.run(
            [sys.executable, str(TESTCLUSTER), "up", "--dir", str(directory)],
            check=True,
            capture_output=True,
        )
        try:
            log = tc.AuditLog(directory / "audit.log", tc.Cluster.load(directory).api())
            yield Fresh(cluster_env(directory), log, directory)
        finally:
            subprocess.run(
                [sys.executable, str(TESTCLUSTER), "down", "--dir", str(directory)],
                capture_output=True,
            )


@dataclass(frozen=True)
class Measured:
    seconds: float
    peak_kib: int  # the command's own process (kymamesh) or its largest process (others)
    child_peak_kib: int  # kymamesh: its largest child (helm); others: 0
    stdout: str

    @property
    def peak_mib(self) -> float:
        return self.peak_kib / 1024

    @property
    def child_peak_mib(self) -> float:
        return self.child_peak_kib / 1024


def kymamesh(*args: str) -> list[str]:
    """argv for a kymamesh command measured by peak.py."""
    return [sys.executable, str(PEAK), *args]


def run(argv: list[str], env: dict[str, str], *, check: bool = True) -> Measured:
    """Run argv (not in a source tree: PYTHONPATH decides which kymamesh runs), timed."""
    with tempfile.NamedTemporaryFile(prefix="kymamesh-peak-") as report:
        env = {**env, "KYMAMESH_BENCH_MEMORY": report.name}
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            start = time.perf_counter()
            proc = subprocess.Popen(
                argv,
                env=env,
                cwd=tempfile.gettempdir(),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
            )
            _, status, usage = os.wait4(proc.pid, 0)
            seconds = time.perf_counter() - start
            proc.returncode = os.waitstatus_to_exitcode(status)
            out.seek(0)
            err.seek(0)
            stdout, stderr = out.read().decode(), err.read().decode()
        if check and proc.returncode != 0:
            raise SystemExit(f"{' '.join(argv)} failed ({proc.returncode}):\n{stderr[-3000:]}")
        reported = Path(report.name).read_text().split()
    if argv[:2] == [sys.executable, str(PEAK)] and len(reported) == 2:
        own, child = (int(v) for v in reported)
        return Measured(seconds, own, child, stdout)
    return Measured(seconds, usage.ru_maxrss, 0, stdout)
