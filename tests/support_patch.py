"""Helpers for the cluster tests of the TLS, addon, proxy and inject-namespace work.

`kymamesh(...)` runs the real entry point against the test cluster; `ensure_istio`
installs the fixture charts once (a re-run of `install` is cheap and converges);
`run_steps` runs chosen patch steps in-process, for focused step tests; `KILLER` is a
kymamesh that kills itself right after its N-th write (the killed-run tests of patch and
mesh join).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from kymamesh.context import Options, RunContext
from kymamesh.output import Progress, Result
from kymamesh.workflows import patching

ROOT = Path(__file__).resolve().parent.parent
CHARTS = ROOT / "tests" / "fixtures" / "charts"
ADDONS = ROOT / "tests" / "fixtures" / "addons"

# Runs the real CLI, SIGKILLing itself right after its N-th write that is not the lock
# Lease has returned: an interruption at an exact point between two writes.
KILLER = """
import os, signal, sys
from kymamesh.adapters import cluster as c

limit = int(os.environ["KYMAMESH_TEST_KILL_AFTER"])
count = [0]

def wrap(name):
    original = getattr(c.Cluster, name)
    def method(self, target, *args, **kwargs):
        result = original(self, target, *args, **kwargs)
        kind = target.kind if isinstance(target, c.Ref) else target.get("kind")
        if kind != "Lease":
            count[0] += 1
            if count[0] >= limit:
                os.kill(os.getpid(), signal.SIGKILL)
        return result
    setattr(c.Cluster, name, method)

for name in ("apply", "create", "replace", "merge_patch", "delete"):
    wrap(name)
sys.argv = ["kymamesh", *sys.argv[1:]]
from kymamesh.cli.app import main
main()
"""


def kymamesh(cluster: Any, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """Run `python -m kymamesh ARGS` against the test cluster (output captured)."""
    return subprocess.run(
        [sys.executable, "-m", "kymamesh", *args],
        env=cluster.env,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )


def kymamesh_json(cluster: Any, *args: str) -> tuple[int, dict[str, Any], str]:
    """Run with `-o json`: exit code, the parsed result, stderr."""
    done = kymamesh(cluster, *args, "-o", "json")
    try:
        result = json.loads(done.stdout)
    except ValueError:
        raise AssertionError(f"no JSON on stdout:\n{done.stdout}\n{done.stderr}") from None
    return done.returncode, result, done.stderr


def ensure_istio(cluster: Any) -> None:
    """Istio from the fixture charts, patched (install is idempotent)."""
    have = cluster.kubectl("get", "deploy", "istiod", "-n", "istio-system", check=False)
    crd = cluster.kubectl("get", "crd", "gateways.networking.istio.io", check=False)
    if have.returncode == 0 and crd.returncode == 0:
        return
    done = kymamesh(cluster, "install", "--charts-dir", str(CHARTS), "-y")
    assert done.returncode == 0, done.stdout + done.stderr


def run_steps(
    cluster: Any,
    names: list[str],
    overrides: dict[str, dict[str, Any]] | None = None,
    dry_run: bool = False,
) -> Result:
    """Preflight and run the named patch steps in-process; raises what they raise."""
    specs = [s for s in patching.load_patch_list(overrides) if s.name in names]
    options = Options(kubeconfig=str(cluster.kubeconfig), yes=True, dry_run=dry_run)
    ctx = RunContext(options=options, result=Result(command="patch"), progress=Progress(quiet=True))
    inputs = patching.PatchInputs()
    with ctx.session():
        patching.preflight(ctx, inputs, specs)
        patching.run_patch(ctx, inputs, specs)
    return ctx.result


def get_json(cluster: Any, *args: str) -> dict[str, Any] | None:
    """`kubectl get ... -o json`, or None when not found."""
    done = cluster.kubectl("get", *args, "-o", "json", check=False)
    if done.returncode != 0:
        if "NotFound" in done.stderr or "not found" in done.stderr:
            return None
        raise AssertionError(done.stderr)
    parsed: dict[str, Any] = json.loads(done.stdout)
    return parsed


def apply_manifest(cluster: Any, path: Path | str, server_side: bool = False) -> None:
    args = ["apply", "-f", str(path)]
    if server_side:
        args.append("--server-side")
    cluster.kubectl(*args)
