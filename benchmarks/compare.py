"""Benchmark: `kymamesh install` side by side with a plain helm + kubectl script.

The plain script is benchmarks/plain-install.sh (three `helm upgrade --install --wait`
with the Kyma settings as values, then `kubectl apply`). Each round starts a fresh test
cluster for each of the two, one after the other (which goes first alternates from round
to round), and times there a fresh install and then a re-run on the same cluster. Writes
and reads (API requests, helm's included) come from the cluster's audit log (requests by
the admin user; controllers left out).
Then `kymamesh --help` and `kymamesh version`, without a cluster. Prints each figure's
median, the ratio kymamesh / plain, and the request counts of every round.

    python benchmarks/compare.py [--runs 3] [--charts-dir DIR] [--code DIR] [--only kymamesh]

--charts-dir: other charts (e.g. Istio's official ones from `kymamesh charts pull`) instead
of the stand-ins in tests/fixtures/charts. --code DIR: run the kymamesh package found in
DIR (a checkout or an extracted tree) instead of the installed one, to compare versions.
--only kymamesh: skip the plain script (quicker before/after figures of one change).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

from install import TESTCLUSTER, _env, _testcluster  # noqa: E402

PLAIN = ROOT / "benchmarks" / "plain-install.sh"
TOOLS = ("plain", "kymamesh")


def _timed(argv: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    run = subprocess.run(
        argv,
        env=env,
        cwd=tempfile.gettempdir(),  # not a source tree: --code decides which kymamesh runs
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=900,
    )
    elapsed = time.perf_counter() - start
    if run.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({run.returncode}):\n{run.stderr[-3000:]}")
    return elapsed


def _commands(tool: str, charts: Path) -> list[str]:
    if tool == "plain":
        return ["bash", str(PLAIN), str(charts)]
    return [sys.executable, "-m", "kymamesh", "install", "--charts-dir", str(charts), "-y"]


def _round(tc, tool: str, charts: Path, base_env: dict[str, str]) -> dict[str, float]:  # type: ignore[no-untyped-def]
    """One fresh cluster: a fresh install, then a re-run; seconds and writes of each."""
    figures: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix=f"kymamesh-compare-{tool}-") as tmp:
        directory = Path(tmp) / "c"
        subprocess.run(
            [sys.executable, str(TESTCLUSTER), "up", "--dir", str(directory)],
            check=True,
            capture_output=True,
        )
        try:
            env = {**_env(directory), **base_env}
            cluster = tc.Cluster.load(directory)
            log = tc.AuditLog(directory / "audit.log", cluster.api())
            for label in ("fresh install", "re-run"):
                mark = log.mark()
                figures[f"{label} (s)"] = _timed(_commands(tool, charts), env)
                figures[f"{label} writes"] = log.writes_since(mark).total
                if hasattr(tc, "READ_VERBS"):  # clusters that log reads (admin group only)
                    reads = log.writes_since(mark, verbs=tc.READ_VERBS).total
                    figures[f"{label} reads"] = reads
        finally:
            subprocess.run(
                [sys.executable, str(TESTCLUSTER), "down", "--dir", str(directory)],
                capture_output=True,
            )
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--charts-dir", type=Path, default=ROOT / "tests" / "fixtures" / "charts")
    parser.add_argument("--code", type=Path, default=None)
    parser.add_argument("--only", choices=TOOLS, default=None)
    args = parser.parse_args()
    charts = args.charts_dir.resolve()
    base_env: dict[str, str] = {}
    if args.code:
        base_env["PYTHONPATH"] = str(args.code.resolve())
    tc = _testcluster()
    subprocess.run([sys.executable, str(TESTCLUSTER), "build"], check=True, capture_output=True)
    tools = [t for t in TOOLS if args.only in (None, t)]
    results: dict[str, dict[str, list[float]]] = {t: {} for t in tools}
    for n in range(args.runs):
        order = tools if n % 2 == 0 else list(reversed(tools))
        for tool in order:
            figures = _round(tc, tool, charts, base_env)
            for key, value in figures.items():
                results[tool].setdefault(key, []).append(value)
            shown = ", ".join(
                f"{k} {v:.2f}" if k.endswith("(s)") else f"{k} {v:.0f}" for k, v in figures.items()
            )
            print(f"round {n + 1} {tool}: {shown}", flush=True)
    if "kymamesh" in tools:
        env = {**os.environ, **base_env}
        km = [sys.executable, "-m", "kymamesh"]
        for label, argv in (("--help (s)", [*km, "--help"]), ("version (s)", [*km, "version"])):
            results["kymamesh"][label] = [_timed(argv, env) for _ in range(max(args.runs, 5))]

    print(f"\nruns: {args.runs}, charts: {charts}")
    print(f"{'':20s} {'plain':>16s} {'kymamesh':>16s} {'ratio':>7s}")
    labels = list(dict.fromkeys(k for t in tools for k in results[t]))
    for label in labels:
        cells = []
        medians = {}
        for tool in TOOLS:
            values = results.get(tool, {}).get(label)
            if not values:
                cells.append(f"{'':>16s}")
                continue
            medians[tool] = statistics.median(values)
            if label.endswith("(s)"):
                cells.append(f"{medians[tool]:7.2f} s median")
            else:
                cells.append(f"{'/'.join(str(int(v)) for v in values):>16s}")
        ratio = ""
        if label.endswith("(s)") and len(medians) == 2 and medians["plain"] > 0:
            ratio = f"{medians['kymamesh'] / medians['plain']:6.2f}x"
        print(f"{label:20s} {cells[0]} {cells[1]} {ratio:>7s}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
