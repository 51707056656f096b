"""Benchmark: kymamesh on many objects. `inject-namespace --all` (without --wait) on a
namespace of N Deployments, then `status` with M Pods over K namespaces; time, writes and
reads (audit log: requests of the admin group) of each, on one fresh test cluster with
the mesh installed from the stand-in charts. Then, on a second cluster, sidecar restarts.

    python benchmarks/scale.py [--deployments 300] [--pods 2000] [--namespaces 50]
        [--outdated 300,3000] [--roll 1000] [--batch 10%] [--code DIR] [--before DIR]
        [--repeat 1]

The Deployments have 0 replicas (the patches and rollouts are measured, not Pods).
The test cluster's one simulated node takes 250 Pods: the others stay Pending, which is
enough for `status` (it lists Pods, scheduled or not). --pods 0 skips the status case.
`status` runs twice: right after the Pods are made, and again.
Each figure comes with kymamesh's own CPU seconds, the CPU seconds the test cluster's
processes (API server, etcd, controllers, kwok) used meanwhile, and the load average:
on one machine both share the cores, so the two CPU figures bound the wall time.
With --repeat N, `inject-namespace --all` runs N times (undone with `--disable` in
between) and the median is printed. With --before, `inject-namespace` is undone
(`--disable`) and done again by that tree, and `status` and the restart planning run
again with it, on the same cluster.

Restarts (--outdated, --roll; 0 skips them): Deployments of one replica each, spread over
10 namespaces with injection on, so that istiod really injects every Pod (kwok runs them
on simulated nodes the benchmark adds); then the sidecars' memory limit changes (`patch
--config`), which makes every sidecar out of date. For each count of --outdated it times
the planning of the restarts (`patch --restart-proxies --dry-run`) and counts its
requests; at the count --roll it then restarts them for real, in batches of --batch
(`--restart-batch`), and times until every rollout is finished. That cluster's
controller-manager and scheduler make up to 500 requests a second (`testcluster.py up
--api-qps`), so that making thousands of Pods takes minutes, not an hour.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench import CHARTS, build, cluster_cpu_seconds, fresh_cluster, kymamesh, run, testcluster


def _apply(objects: list[dict[str, object]], env: dict[str, str]) -> None:
    """Create objects with kubectl, a few hundred at a time (a failed call is tried again:
    a busy test cluster can time one out)."""
    for start in range(0, len(objects), 250):
        doc = {"apiVersion": "v1", "kind": "List", "items": objects[start : start + 250]}
        for attempt in range(3):
            done = subprocess.run(
                ["kubectl", "create", "-f", "-", "-o", "name"],
                input=json.dumps(doc),
                env=env,
                capture_output=True,
                text=True,
            )
            if done.returncode == 0 or ("AlreadyExists" in done.stderr and attempt):
                break
            print(f"kubectl create failed ({done.returncode}): {done.stderr[-500:]}", flush=True)
            time.sleep(5)
        else:
            raise SystemExit("kubectl create kept failing")


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


def _load() -> str:
    return f"load {os.getloadavg()[0]:.1f}"


def _measure(fresh, tc, argv: list[str], env: dict[str, str], extra=None) -> str:  # type: ignore[no-untyped-def]
    """Time, kymamesh's own CPU, the test cluster's CPU meanwhile (the API server and the
    controllers run on the same machine), requests, peak memory and the load average;
    `extra(measured)`: more of the run's figures, shown before the load."""
    return _timed(fresh, tc, argv, env, extra)[0]


def _timed(fresh, tc, argv: list[str], env: dict[str, str], extra=None) -> tuple[str, float]:  # type: ignore[no-untyped-def]
    """`_measure`'s line and the wall time."""
    log = fresh.log
    mark = log.mark()
    cluster_cpu = cluster_cpu_seconds(fresh.directory)
    measured = run(argv, env)
    cluster_cpu = cluster_cpu_seconds(fresh.directory) - cluster_cpu
    writes = log.writes_since(mark).total
    reads = log.writes_since(mark, verbs=tc.READ_VERBS).total
    line = (
        f"{measured.seconds:6.2f} s ({measured.cpu_seconds:.2f} s CPU, cluster "
        f"{cluster_cpu:.2f} s CPU), {writes} writes, {reads} reads, "
        f"peak {measured.peak_mib:.0f} MiB, " + (f"{extra(measured)}, " if extra else "") + _load()
    )
    return line, measured.seconds


# -- restarts ----------------------------------------------------------------------

SPREAD = 10  # namespaces the outdated Deployments are spread over
NODE_PODS = 1000  # Pods each added simulated node takes
BENCH_LABEL = "kymamesh-bench"


def _node(tc, name: str) -> dict[str, object]:  # type: ignore[no-untyped-def]
    """A simulated node kwok runs, like the test cluster's own (more Pods)."""
    pods = str(NODE_PODS)
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": {tc.NODE_ANNOTATION: "fake", "node.alpha.kubernetes.io/ttl": "0"},
            "labels": {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux", "type": "kwok"},
        },
        "spec": {},
        "status": {
            "allocatable": {"cpu": "1000", "memory": "4Ti", "pods": pods},
            "capacity": {"cpu": "1000", "memory": "4Ti", "pods": pods},
            "nodeInfo": {
                "architecture": "amd64",
                "operatingSystem": "linux",
                "kubeletVersion": tc.K8S_VERSION,
                "kubeProxyVersion": tc.K8S_VERSION,
                **{
                    k: "kwok"
                    for k in ("machineID", "systemUUID", "bootID", "kernelVersion", "osImage")
                },
                "containerRuntimeVersion": "kwok",
            },
        },
    }


def _meshed_deployment(name: str, namespace: str) -> dict[str, object]:
    labels = {"app": name, BENCH_LABEL: "outdated"}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {**labels, "sidecar.istio.io/inject": "true"}},
                "spec": {"containers": [{"name": "app", "image": "example/app:1"}]},
            },
        },
    }


def _kubectl(env: dict[str, str], *args: str) -> str:
    done = subprocess.run(["kubectl", *args], env=env, check=True, capture_output=True, text=True)
    return done.stdout


def _running_pods(env: dict[str, str]) -> int:
    out = _kubectl(
        env, "get", "pods", "-A", "-l", f"{BENCH_LABEL}=outdated",
        "--field-selector=status.phase=Running", "-o", "name",
    )  # fmt: skip
    return len(out.split())


def _wait_for(what: str, check, timeout: float = 1800) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(2)


def _memory_limit(env: dict[str, str], mib: int) -> None:
    """Every sidecar's memory limit changed: step sidecar-resources, through `patch --config`."""
    config = {
        "steps": {
            "sidecar-resources": {
                "proxy": {
                    "requests": {"cpu": "10m", "memory": "128Mi"},
                    "limits": {"cpu": "1", "memory": f"{mib}Mi"},
                }
            }
        }
    }
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as f:
        json.dump(config, f)
        f.flush()
        run(kymamesh("patch", "--config", f.name, "-y", "-o", "json"), env)


def _injector_gives(env: dict[str, str], mib: int) -> bool:
    """A dry-run Pod in a meshed namespace gets a sidecar with this memory limit."""
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "generateName": "probe-",
            "namespace": "outdated-0",
            "labels": {"sidecar.istio.io/inject": "true"},
        },
        "spec": {"containers": [{"name": "app", "image": "example/app:1"}]},
    }
    done = subprocess.run(
        ["kubectl", "create", "--dry-run=server", "-f", "-", "-o", "json"],
        input=json.dumps(pod), env=env, capture_output=True, text=True,
    )  # fmt: skip
    if done.returncode != 0:
        return False
    for container in json.loads(done.stdout)["spec"].get("containers") or []:
        if container["name"] == "istio-proxy":
            limit = str((container.get("resources") or {}).get("limits", {}).get("memory"))
            return _mib(limit) == mib  # the API server spells 2048Mi as 2Gi
    return False


def _mib(quantity: str) -> float:
    for suffix, factor in (("Gi", 1024), ("Mi", 1), ("Ki", 1 / 1024)):
        if quantity.endswith(suffix):
            return float(quantity[: -len(suffix)]) * factor
    return float(quantity) / 2**20 if quantity.replace(".", "").isdigit() else -1


def _planned(stdout: str) -> int:
    """How many restarts a `patch -o json` result names."""
    result = json.loads(stdout)
    return sum(
        len(item.get("changes") or [])
        for phase in result.get("phases") or []
        for item in phase.get("items") or []
        if item.get("name") == "restart-proxies"
    )


def _use(env: dict[str, str], tree: Path | None) -> None:
    """Run the kymamesh of `tree` (None: the one installed)."""
    if tree:
        env["PYTHONPATH"] = str(tree.resolve())
    else:
        env.pop("PYTHONPATH", None)


def _restarts(tc, args: argparse.Namespace) -> None:  # type: ignore[no-untyped-def]
    sizes = sorted({int(n) for n in args.outdated.split(",") if int(n)} | {args.roll} - {0})
    if not sizes:
        return
    with fresh_cluster(tc, "kymamesh-restarts-", "--api-qps", "500") as fresh:
        env, log = fresh.env, fresh.log
        if args.code:
            env["PYTHONPATH"] = str(args.code.resolve())
        run(
            kymamesh(
                "install", "--charts-dir", str(CHARTS), "-y", "--timeout", "900", "-o", "json"
            ),
            env,
        )
        nodes = math.ceil(max(sizes) / NODE_PODS)
        _apply([_node(tc, f"kwok-bench-{i}") for i in range(nodes)], env)
        spaces = [f"outdated-{i}" for i in range(SPREAD)]
        _apply([_namespace(n) for n in spaces], env)
        for n in spaces:
            _kubectl(env, "label", "namespace", n, "istio-injection=enabled")
        made, mib = 0, 1024
        for size in sizes:
            _apply(
                [_meshed_deployment(f"w{i:05d}", spaces[i % SPREAD]) for i in range(made, size)],
                env,
            )
            made = size
            _wait_for(f"{size} Pods running", lambda n=size: _running_pods(env) >= n)
            mib += 512
            _memory_limit(env, mib)  # every sidecar is out of date now
            argv = kymamesh("patch", "--restart-proxies", "--dry-run", "-o", "json")
            trees = [("", args.code)] + ([("before: ", args.before)] if args.before else [])
            for who, tree in trees:  # the same cluster for both, one after the other
                _use(env, tree)
                mark = log.mark()
                cluster_cpu = cluster_cpu_seconds(fresh.directory)
                measured = run(argv, env, check=False)
                cluster_cpu = cluster_cpu_seconds(fresh.directory) - cluster_cpu
                writes = log.writes_since(mark).total
                reads = log.writes_since(mark, verbs=tc.READ_VERBS).total
                print(
                    f"{who}planning restarts, {size} outdated Deployments: "
                    f"{measured.seconds:6.2f} s ({measured.cpu_seconds:.2f} s CPU, cluster "
                    f"{cluster_cpu:.2f} s CPU), "
                    f"{reads + writes} requests ({reads} reads, {writes} dry-run creates), "
                    f"peak {measured.peak_mib:.0f} MiB, {_planned(measured.stdout)} restarts "
                    f"planned, {_load()}",
                    flush=True,
                )
            _use(env, args.code)
            if size != args.roll:
                continue
            _wait_for(
                "istiod's injector to give the new limit", lambda m=mib: _injector_gives(env, m)
            )
            argv = kymamesh(
                "patch", "--restart-proxies", "--restart-batch", args.batch, "-y", "-o", "json"
            )
            shown = _measure(fresh, tc, argv, env, lambda m: f"{_planned(m.stdout)} restarted")
            print(
                f"restarting {size} outdated Deployments in batches of {args.batch}: {shown}",
                flush=True,
            )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deployments", type=int, default=300)
    parser.add_argument("--pods", type=int, default=2000)
    parser.add_argument("--namespaces", type=int, default=50)
    parser.add_argument("--outdated", default="300,3000")
    parser.add_argument("--roll", type=int, default=1000)
    parser.add_argument("--batch", default="10%")
    parser.add_argument("--code", type=Path, default=None)
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="inject-namespace --all this many times (--disable between), with the median",
    )
    parser.add_argument(
        "--before",
        type=Path,
        default=None,
        help="another kymamesh tree whose restart planning is measured on the same cluster",
    )
    args = parser.parse_args()
    tc = testcluster()
    build()
    if args.deployments or args.pods:
        _mesh_cases(tc, args)
    _restarts(tc, args)
    return 0


def _mesh_cases(tc, args: argparse.Namespace) -> None:  # type: ignore[no-untyped-def]
    with fresh_cluster(tc, "kymamesh-scale-") as fresh:
        env = fresh.env
        if args.code:
            env["PYTHONPATH"] = str(args.code.resolve())
        run(
            kymamesh(
                "install", "--charts-dir", str(CHARTS), "-y", "--timeout", "900", "-o", "json"
            ),
            env,
        )
        if args.deployments:
            _apply([_namespace("scale")], env)
            _apply([_deployment(f"d{i:04d}", "scale", 0) for i in range(args.deployments)], env)
            argv = kymamesh("inject-namespace", "scale", "--all", "-y", "-o", "json")
            off = kymamesh("inject-namespace", "scale", "--disable", "-y", "-o", "json")
            shown, seconds = _timed(fresh, tc, argv, env)
            print(f"inject-namespace --all, {args.deployments} Deployments: {shown}")
            shown = _measure(fresh, tc, argv, env)
            print(f"  the same again (nothing to do):     {shown}", flush=True)
            times = [seconds]
            for _ in range(args.repeat - 1):  # out again, and in again: one more sample
                _measure(fresh, tc, off, env)
                shown, seconds = _timed(fresh, tc, argv, env)
                times.append(seconds)
                print(f"  again after --disable:              {shown}", flush=True)
            if len(times) > 1:
                print(f"  median of {len(times)}: {statistics.median(times):.2f} s", flush=True)
            if args.before:  # out again, then in with the other tree, on the same cluster
                shown = _measure(fresh, tc, off, env)
                print(f"  --disable:                          {shown}", flush=True)
                _use(env, args.before)
                shown = _measure(fresh, tc, argv, env)
                print(f"  before: inject-namespace --all:     {shown}", flush=True)
                _use(env, args.code)
        if args.pods:
            names = [f"pods-{n:03d}" for n in range(args.namespaces)]
            _apply([_namespace(n) for n in names], env)
            pods = [_pod(f"p{i:05d}", names[i % len(names)]) for i in range(args.pods)]
            _apply(pods, env)
            shown = _measure(fresh, tc, kymamesh("status", "-o", "json"), env)
            print(f"status, {args.pods} Pods in {args.namespaces} namespaces: {shown}")
            # The first run meets the cluster still busy with the new Pods (scheduling,
            # status updates); the second, a settled one.
            shown = _measure(fresh, tc, kymamesh("status", "-o", "json"), env)
            print(f"  the same again:                     {shown}", flush=True)
            if args.before:
                _use(env, args.before)
                shown = _measure(fresh, tc, kymamesh("status", "-o", "json"), env)
                print(f"  before:                             {shown}", flush=True)
                _use(env, args.code)


if __name__ == "__main__":
    raise SystemExit(main())
