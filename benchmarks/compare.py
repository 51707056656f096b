"""Benchmark: `kymamesh install` side by side with a plain helm + kubectl script.

The plain script is benchmarks/plain-install.sh (three `helm upgrade --install --wait`
with the Kyma settings as values, then `kubectl apply`). Each round starts a fresh test
cluster for each of the two, one after the other (which goes first alternates from round
to round), and times there a fresh install and then a re-run on the same cluster (wall time,
and the CPU time of the command with the processes it ran: on a busy machine the wall time
follows the CPU time more than the waits). Writes
and reads (API requests, helm's included) come from the cluster's audit log (requests by
the admin user; controllers left out); on kymamesh's cluster, `status` after the re-run.
Then `kymamesh --help` and `kymamesh version`, without a cluster. Prints each figure's
median, the ratio kymamesh / plain, the request counts of every round, and the peak
memory (benchmarks/bench.py: kymamesh's own process and its largest helm child; the plain
script's largest process).

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
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench import CHARTS, ROOT, build, fresh_cluster, kymamesh, run, testcluster

PLAIN = ROOT / "benchmarks" / "plain-install.sh"
TOOLS = ("plain", "kymamesh")


def _install(tool: str, charts: Path) -> list[str]:
    if tool == "plain":
        return ["bash", str(PLAIN), str(charts)]
    return kymamesh("install", "--charts-dir", str(charts), "-y")


def _round(tc, tool: str, charts: Path, base_env: dict[str, str]) -> dict[str, float]:  # type: ignore[no-untyped-def]
    """One fresh cluster: a fresh install, then a re-run; seconds, memory and requests."""
    figures: dict[str, float] = {}
    with fresh_cluster(tc, f"kymamesh-compare-{tool}-") as fresh:
        env, log = {**fresh.env, **base_env}, fresh.log
        for label in ("fresh install", "re-run"):
            mark = log.mark()
            measured = run(_install(tool, charts), env)
            figures[f"{label} (s)"] = measured.seconds
            # CPU of the command and every process it waited for (helm, kubectl): what it
            # cost, whatever else the shared machine did at the time
            figures[f"{label} CPU (s)"] = measured.cpu_seconds
            figures[f"{label} peak (MiB)"] = measured.peak_mib
            if tool == "kymamesh":
                figures[f"{label} helm peak (MiB)"] = measured.helm_peak_mib
            figures[f"{label} writes"] = log.writes_since(mark).total
            figures[f"{label} reads"] = log.writes_since(mark, verbs=tc.READ_VERBS).total
        if tool == "kymamesh":
            measured = run(kymamesh("status"), env)
            figures["status (s)"] = measured.seconds
            figures["status peak (MiB)"] = measured.peak_mib
    return figures


def _cell(label: str, values: list[float]) -> tuple[str, float]:
    median = statistics.median(values)
    if label.endswith("(s)"):
        return f"{median:7.2f} s median", median
    if label.endswith("(MiB)"):
        return f"{max(values):6.0f} MiB max", median
    return "/".join(str(int(v)) for v in values), median


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--charts-dir", type=Path, default=CHARTS)
    parser.add_argument("--code", type=Path, default=None)
    parser.add_argument("--only", choices=TOOLS, default=None)
    args = parser.parse_args()
    charts = args.charts_dir.resolve()
    base_env: dict[str, str] = {}
    if args.code:
        base_env["PYTHONPATH"] = str(args.code.resolve())
    tc = testcluster()
    build()
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
        for command in ("--help", "version"):
            runs = [run(kymamesh(command), env) for _ in range(max(args.runs, 5))]
            results["kymamesh"][f"{command} (s)"] = [m.seconds for m in runs]
            results["kymamesh"][f"{command} peak (MiB)"] = [m.peak_mib for m in runs]

    print(f"\nruns: {args.runs}, charts: {charts}")
    print(f"{'':32s} {'plain':>16s} {'kymamesh':>16s} {'ratio':>7s}")
    labels = list(dict.fromkeys(k for t in tools for k in results[t]))
    for label in labels:
        cells = []
        medians = {}
        for tool in TOOLS:
            values = results.get(tool, {}).get(label)
            if not values:
                cells.append(f"{'':>16s}")
                continue
            text, medians[tool] = _cell(label, values)
            cells.append(f"{text:>16s}")
        ratio = ""
        if label.endswith("(s)") and len(medians) == 2 and medians["plain"] > 0:
            ratio = f"{medians['kymamesh'] / medians['plain']:6.2f}x"
        print(f"{label:32s} {cells[0]} {cells[1]} {ratio:>7s}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
