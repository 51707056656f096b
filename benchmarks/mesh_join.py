"""Benchmark: `kymamesh mesh join` of N test clusters (default 3, then 5), each with the
mesh installed from the stand-in charts with an intermediate of one root: the time of
the join (with its verification that every istiod sees every peer synced), of a re-run
(nothing to do), and the writes and reads each made on each cluster (audit log).

    python benchmarks/mesh_join.py [--clusters 3 5] [--code DIR ...]

Each round starts its own clusters and stops them at the end (about 1 GB of memory per
cluster). The clusters start one after another; the installs run two at a time. With
several --code DIR (kymamesh trees, e.g. before and after a change), each joins the same
clusters in turn (join, re-run, then `mesh leave` of every cluster for the next).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench import CHARTS, build, fresh_cluster, kymamesh, run, testcluster


def _counts(tc, clusters, marks) -> list[tuple[int, int]]:  # type: ignore[no-untyped-def]
    out = []
    for fresh, mark in zip(clusters, marks, strict=True):
        writes = fresh.log.writes_since(mark).total
        reads = fresh.log.writes_since(mark, verbs=tc.READ_VERBS).total
        out.append((writes, reads))
    return out


def round_of(tc, n: int, codes: list[Path | None]) -> None:  # type: ignore[no-untyped-def]
    with contextlib.ExitStack() as stack, tempfile.TemporaryDirectory() as tmp:
        clusters = [stack.enter_context(fresh_cluster(tc, f"kymamesh-join{i}-")) for i in range(n)]
        ca = Path(tmp) / "ca"
        run(kymamesh("ca", "create", "--out", str(ca)), dict(clusters[0].env))

        def envs(code: Path | None) -> list[dict[str, str]]:
            out = [dict(f.env) for f in clusters]
            for env in out:
                if code:
                    env["PYTHONPATH"] = str(code.resolve())
            return out

        def install(i: int) -> None:
            argv = ["install", "--charts-dir", str(CHARTS), "-y", "-o", "json", "--ca", str(ca)]
            argv += ["--mesh-id", "bench", "--cluster-name", f"c{i}", "--network", "net1"]
            run(kymamesh(*argv), envs(codes[0])[i])

        with ThreadPoolExecutor(max_workers=2) as pool:
            list(pool.map(install, range(n)))
        names = []
        for f in clusters:
            names += ["--kubeconfig", str(f.directory / "kubeconfig")]
        for code in codes:
            env = envs(code)[0]
            where = f" [{code}]" if code else ""
            for label in ("join", "re-run"):
                marks = [f.log.mark() for f in clusters]
                measured = run(
                    kymamesh("mesh", "join", "-o", "json", "--timeout", "600", *names), env
                )
                counts = _counts(tc, clusters, marks)
                per = ", ".join(f"c{i} {w} writes/{r} reads" for i, (w, r) in enumerate(counts))
                print(
                    f"{n} clusters, {label:6}: {measured.seconds:6.2f} s, peak "
                    f"{measured.peak_mib:.0f} MiB; {per}{where}",
                    flush=True,
                )
            if len(codes) > 1:  # every cluster leaves, for the next code's join
                for i in range(n - 1):
                    rest = names[2 * i :]
                    run(kymamesh("mesh", "leave", "-o", "json", "--timeout", "600", *rest), env)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clusters", type=int, nargs="+", default=[3, 5])
    parser.add_argument("--code", type=Path, action="append", default=None)
    args = parser.parse_args()
    tc = testcluster()
    build()
    for n in args.clusters:
        round_of(tc, n, args.code or [None])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
