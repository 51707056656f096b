"""Benchmark: kymamesh on many objects. `inject-namespace --all` (without --wait) on a
namespace of N Deployments, then `status` with M Pods over K namespaces; time, writes and
reads (audit log: requests of the admin group) of each, on one fresh test cluster with
the mesh installed from the stand-in charts.

    python benchmarks/scale.py [--deployments 300] [--pods 2000] [--namespaces 50] [--code DIR]

The Deployments have 0 replicas (the patches and rollouts are measured, not Pods).
The test cluster's one simulated node takes 250 Pods: the others stay Pending, which is
enough for `status` (it lists Pods, scheduled or not). --pods 0 skips the status case.
`status` runs twice: right after the Pods are made, and again.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench import CHARTS, build, fresh_cluster, kymamesh, run, testcluster


def _apply(objects: list[dict[str, object]], env: dict[str, str]) -> None:
    """Create objects with kubectl, a few hundred at a time."""
    for start in range(0, len(objects), 250):
        doc = {"apiVersion": "v1", "kind": "List", "items": objects[start : start + 250]}
        subprocess.run(
            ["kubectl", "create", "-f", "-", "-o", "name"],
            input=json.dumps(doc),
            env=env,
            check=True,
            capture_output=True,
            text=True,
        )


def _deployment(name: str, namespace: str, replicas: int) -> dict[str, object]:
    labels = {"app": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [{"name": "app", "image": "example/app:1"}]},
            },
        },
    }


def _pod(name: str, namespace: str) -> dict[str, object]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": {"app": name}},
        "spec": {"containers": [{"name": "app", "image": "example/app:1"}]},
    }


def _namespace(name: str) -> dict[str, object]:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}


def _measure(log, tc, argv: list[str], env: dict[str, str]) -> str:  # type: ignore[no-untyped-def]
    mark = log.mark()
    measured = run(argv, env)
    writes = log.writes_since(mark).total
    reads = log.writes_since(mark, verbs=tc.READ_VERBS).total
    return (
        f"{measured.seconds:6.2f} s, {writes} writes, {reads} reads, "
        f"peak {measured.peak_mib:.0f} MiB"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deployments", type=int, default=300)
    parser.add_argument("--pods", type=int, default=2000)
    parser.add_argument("--namespaces", type=int, default=50)
    parser.add_argument("--code", type=Path, default=None)
    args = parser.parse_args()
    tc = testcluster()
    build()
    with fresh_cluster(tc, "kymamesh-scale-") as fresh:
        env, log = fresh.env, fresh.log
        if args.code:
            env["PYTHONPATH"] = str(args.code.resolve())
        run(kymamesh("install", "--charts-dir", str(CHARTS), "-y", "-o", "json"), env)
        if args.deployments:
            _apply([_namespace("scale")], env)
            _apply([_deployment(f"d{i:04d}", "scale", 0) for i in range(args.deployments)], env)
            argv = kymamesh("inject-namespace", "scale", "--all", "-y", "-o", "json")
            shown = _measure(log, tc, argv, env)
            print(f"inject-namespace --all, {args.deployments} Deployments: {shown}")
            shown = _measure(log, tc, argv, env)
            print(f"  the same again (nothing to do):     {shown}", flush=True)
        if args.pods:
            names = [f"pods-{n:03d}" for n in range(args.namespaces)]
            _apply([_namespace(n) for n in names], env)
            pods = [_pod(f"p{i:05d}", names[i % len(names)]) for i in range(args.pods)]
            _apply(pods, env)
            shown = _measure(log, tc, kymamesh("status", "-o", "json"), env)
            print(f"status, {args.pods} Pods in {args.namespaces} namespaces: {shown}")
            # The first run meets the cluster still busy with the new Pods (scheduling,
            # status updates); the second, a settled one.
            shown = _measure(log, tc, kymamesh("status", "-o", "json"), env)
            print(f"  the same again:                     {shown}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
