"""What the benchmarks share: the test cluster, a fresh cluster per round, and one way to
run a command and measure it (wall time, peak memory, the requests it made).

Peak memory is read from the kernel, not sampled. A process's ru_maxrss (getrusage,
wait4) starts from what its parent had resident when it forked, so every figure is
taken with a small parent or from the process's own address space:
- a kymamesh command runs under `peak.py`, which reports its own VmHWM;
- helm, when kymamesh runs it, runs under `helm-peak.sh` (GNU time is its parent);
- any other command (the plain script) runs under GNU time, whose figure is the largest
  process of the command's tree (bash, helm, kubectl).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
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
HELM_PEAK = ROOT / "benchmarks" / "helm-peak.sh"
TIME = shutil.which("time", path="/usr/bin:/bin")  # GNU time (Debian package `time`)


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
def fresh_cluster(tc: Any, prefix: str, *up_args: str) -> Iterator[Fresh]:
    """A test cluster of its own (`up_args`: more options of `testcluster.py up`), stopped
    again at the end."""
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        directory = Path(tmp) / "c"
        subprocess.run(
            [sys.executable, str(TESTCLUSTER), "up", "--dir", str(directory), *up_args],
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


def cluster_cpu_seconds(directory: Path) -> float:
    """CPU seconds (user and system) the test cluster's own processes (API server, etcd,
    controller-manager, scheduler, kwok, ...) have used so far: taken before and after a
    command, what the cluster spent on it (and on whatever else it did meanwhile). On a
    machine that runs both, this bounds the command's wall time as much as its own CPU."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pidfile in (directory / "pids").glob("*.pid"):
        try:
            stat = Path(f"/proc/{int(pidfile.read_text())}/stat").read_text()
        except (OSError, ValueError):
            continue
        fields = stat.rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime
    return total


@dataclass(frozen=True)
class Measured:
    seconds: float
    peak_kib: int  # kymamesh: its own process; other commands: their largest process
    helm_peak_kib: int  # kymamesh: its largest helm run (0: it ran none)
    stdout: str
    # CPU seconds (user and system) of the command and the processes it waited for: what
    # it cost itself, unlike `seconds`, whatever else the machine was doing
    cpu_seconds: float = 0.0

    @property
    def peak_mib(self) -> float:
        return self.peak_kib / 1024

    @property
    def helm_peak_mib(self) -> float:
        return self.helm_peak_kib / 1024


def kymamesh(*args: str) -> list[str]:
    """argv for a kymamesh command measured by peak.py."""
    return [sys.executable, str(PEAK), *args]


def _kib(path: Path) -> list[int]:
    """The figures GNU time or peak.py wrote (other lines: time's notes on exit codes)."""
    if not path.exists():
        return []
    return [int(line) for line in path.read_text().split() if line.isdigit()]


_COMPILED: set[str] = set()


def _byte_compile(env: dict[str, str]) -> None:
    """Byte-compile the kymamesh package that `env` imports (PYTHONPATH decides), once per
    tree, as pip does when it installs a wheel: an editable install or a source tree under
    PYTHONDONTWRITEBYTECODE would otherwise compile every module again on each run, a cost
    (0.2 s of CPU for `status`) no installed kymamesh pays."""
    key = env.get("PYTHONPATH", "")
    if key in _COMPILED:
        return
    script = (
        "import compileall, importlib.util, os, sys\n"
        "spec = importlib.util.find_spec('kymamesh')\n"
        "sys.exit(0 if compileall.compile_dir(os.path.dirname(spec.origin), quiet=1) else 1)"
    )
    # (from "/": `python -c` looks in its working directory first)
    subprocess.run(
        [sys.executable, "-c", script], env=env, cwd="/", check=True, capture_output=True
    )
    _COMPILED.add(key)


def run(argv: list[str], env: dict[str, str], *, check: bool = True) -> Measured:
    """Run argv (not in a source tree: PYTHONPATH decides which kymamesh runs), timed.
    A kymamesh command runs from byte-compiled modules (`_byte_compile`)."""
    is_kymamesh = argv[:2] == [sys.executable, str(PEAK)]
    if is_kymamesh:
        _byte_compile(env)
    with tempfile.TemporaryDirectory(prefix="kymamesh-bench-") as tmp:
        own, helm_peaks, tree = Path(tmp) / "own", Path(tmp) / "helm", Path(tmp) / "tree"
        env = dict(env)
        if is_kymamesh:
            env["KYMAMESH_BENCH_MEMORY"] = str(own)
            helm = shutil.which("helm", path=env.get("PATH"))
            if helm and TIME and "KYMAMESH_HELM" not in env:
                env.update(
                    KYMAMESH_HELM=str(HELM_PEAK),
                    KYMAMESH_BENCH_HELM=helm,
                    KYMAMESH_BENCH_HELM_PEAKS=str(helm_peaks),
                )
        elif TIME:
            argv = [TIME, "-f", "%M", "-o", str(tree), *argv]
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            start = time.perf_counter()
            proc = subprocess.Popen(
                argv,
                env=env,
                cwd=tmp,
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
        if is_kymamesh:
            return Measured(
                seconds,
                max(_kib(own), default=0),
                max(_kib(helm_peaks), default=0),
                stdout,
                usage.ru_utime + usage.ru_stime,
            )
        return Measured(
            seconds,
            max(_kib(tree), default=usage.ru_maxrss),
            0,
            stdout,
            usage.ru_utime + usage.ru_stime,
        )
