"""Measure: how many installs succeed through transient API faults.

Starts a test cluster per run and puts a TCP fault proxy (tests/faultproxy.py) in front
of its apiserver, on loopback: it resets a share of new connections and cuts a share of
replies mid-body, drawn from a seeded random generator (run N uses seed N), with no cap.
Every call of the run (kymamesh's own and helm's) goes through it. Then a clean re-run
without the proxy, and one more whose writes are counted (a converged state writes none).

    python benchmarks/faults.py [--runs 7] [--reset 0.075] [--cut 0.2] [--code DIR]

--code DIR runs the kymamesh package found in DIR instead (to compare two versions).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench import CHARTS, build, fresh_cluster, kymamesh, testcluster  # noqa: E402
from faultproxy import FaultProxy, upstream_of  # noqa: E402


def _install(env: dict[str, str]) -> tuple[int, str, bool]:
    run = subprocess.run(
        kymamesh("install", "--charts-dir", str(CHARTS), "-y", "-o", "json"),
        env=env,
        cwd="/",  # not a source tree: --code decides which kymamesh runs
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=900,
    )
    try:
        doc = json.loads(run.stdout)
    except json.JSONDecodeError:
        return run.returncode, (run.stderr.strip().splitlines() or [""])[-1][:160], False
    errors = doc.get("errors") or [{}]
    return run.returncode, str(errors[0].get("message", ""))[:160], bool(doc.get("changed"))


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--reset", type=float, default=0.075)
    parser.add_argument("--cut", type=float, default=0.2)
    parser.add_argument("--code", type=Path, default=None)
    args = parser.parse_args()
    tc = testcluster()
    build()
    ok = 0
    for seed in range(1, args.runs + 1):
        with fresh_cluster(tc, "kymamesh-faults-") as fresh:
            env = dict(fresh.env)
            if args.code:
                env["PYTHONPATH"] = str(args.code.resolve())
            kubeconfig = fresh.directory / "kubeconfig"
            with FaultProxy(
                upstream_of(kubeconfig), seed=seed, reset_rate=args.reset, cut_rate=args.cut
            ) as proxy:
                faulty = proxy.kubeconfig(kubeconfig, fresh.directory.parent / "faulty.kubeconfig")
                code, error, _ = _install({**env, "KUBECONFIG": str(faulty)})
            rerun, _, _ = _install(env)
            mark = fresh.log.mark()
            again, _, _ = _install(env)
            writes = fresh.log.writes_since(mark).total
            ok += code == 0
            print(
                f"seed {seed}: exit {code} ({proxy.stats})"
                + (f" error: {error}" if code else "")
                + f"; clean re-run exit {rerun}; then exit {again}, {writes} writes",
                flush=True,
            )
    print(f"{ok} of {args.runs} installs succeeded through the faults", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
