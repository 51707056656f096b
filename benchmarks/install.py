"""Benchmark: how long `kymamesh install` takes, how much it writes, how much memory it uses.

Starts its own test cluster (tests/cluster/), then measures, each N times:
a fresh install (phase 1 + phase 2) into a clean cluster, a converged re-run
(should write nothing), `status`, and `--help`. Prints one line per figure.

    python benchmarks/install.py [--runs 3]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHARTS = ROOT / "tests" / "fixtures" / "charts"
TESTCLUSTER = ROOT / "tests" / "cluster" / "testcluster.py"


def _testcluster():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("kymamesh_testcluster", TESTCLUSTER)
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.modules["kymamesh_testcluster"] = mod
    spec.loader.exec_module(mod)
    return mod


def _env(directory: Path) -> dict[str, str]:
    import os

    env = dict(os.environ)
    for line in (directory / "env").read_text().splitlines():
        if line.startswith("export "):
            key, _, value = line[len("export ") :].partition("=")
            env[key] = value.strip("'\"").replace("$PATH", env.get("PATH", ""))
    return env


def _run(argv: list[str], env: dict[str, str]) -> tuple[float, int, dict[str, object]]:
    """Wall seconds, peak RSS of the child in KiB, the JSON result (if any)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    start = time.perf_counter()
    run = subprocess.run(argv, env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    elapsed = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    if run.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({run.returncode}):\n{run.stderr}")
    try:
        doc = json.loads(run.stdout)
    except json.JSONDecodeError:
        doc = {}
    return elapsed, max(peak, before), doc


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    tc = _testcluster()
    subprocess.run([sys.executable, str(TESTCLUSTER), "build"], check=True, capture_output=True)
    km = [sys.executable, "-m", "kymamesh"]
    figures: dict[str, list[float]] = {}
    writes: dict[str, list[int]] = {}
    peak_kib = 0
    for _ in range(args.runs):
        with tempfile.TemporaryDirectory(prefix="kymamesh-bench-") as tmp:
            directory = Path(tmp) / "c"
            t0 = time.perf_counter()
            subprocess.run(
                [sys.executable, str(TESTCLUSTER), "up", "--dir", str(directory)],
                check=True,
                capture_output=True,
            )
            figures.setdefault("cluster up (s)", []).append(time.perf_counter() - t0)
            try:
                env = _env(directory)
                audit = tc.Cluster.load(directory)
                log = tc.AuditLog(directory / "audit.log", audit.api())
                install = [*km, "install", "--charts-dir", str(CHARTS), "-y", "-o", "json"]
                for label in ("fresh install (s)", "converged re-run (s)"):
                    mark = log.mark()
                    elapsed, peak, _ = _run(install, env)
                    figures.setdefault(label, []).append(elapsed)
                    writes.setdefault(label.replace(" (s)", " writes"), []).append(
                        log.writes_since(mark).total
                    )
                    peak_kib = max(peak_kib, peak)
                elapsed, _, _ = _run([*km, "status", "-o", "json"], env)
                figures.setdefault("status (s)", []).append(elapsed)
                elapsed, _, _ = _run([*km, "--help"], env)
                figures.setdefault("--help (s)", []).append(elapsed)
            finally:
                subprocess.run(
                    [sys.executable, str(TESTCLUSTER), "down", "--dir", str(directory)],
                    capture_output=True,
                )
    print(f"runs: {args.runs}")
    for label, values in figures.items():
        print(
            f"{label:28s} median {statistics.median(values):7.2f}  "
            f"min {min(values):7.2f}  max {max(values):7.2f}"
        )
    for label, counts in writes.items():
        print(f"{label:28s} {counts}")
    print(f"{'peak RSS of a kymamesh run':28s} {peak_kib / 1024:.0f} MiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
