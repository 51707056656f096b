"""Transient API faults between helm and the apiserver (connections reset, replies cut
mid-body), injected by a TCP proxy on loopback (tests/faultproxy.py) on a fixed schedule:
an install whose helm goes through it succeeds, because helm's reads and upgrades are
retried like the adapter's own calls, and a clean re-run afterwards writes nothing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from faultproxy import FaultProxy, upstream_of
from test_install_cluster import CHARTS, kymamesh

# Numbers of helm's connections, counted from the proxy's start. Three faults at most:
# fewer than the attempts any helm command gets, so the test cannot flake.
SCHEDULE = {2: "reset", 4: "cut", 7: "cut"}


def helm_through(proxy: FaultProxy, c: Any, tmp_path: Path) -> Path:
    """A `helm` that reaches the cluster through the proxy (kymamesh's own calls do not)."""
    kubeconfig = proxy.kubeconfig(c.kubeconfig, tmp_path / "through-proxy.kubeconfig")
    wrapper = tmp_path / "helm"
    wrapper.write_text(
        "#!/bin/sh\n"
        "swap=\n"
        'for a in "$@"; do\n'
        "  shift\n"
        f'  if [ -n "$swap" ]; then a="{kubeconfig}"; swap=; fi\n'
        '  if [ "$a" = "--kubeconfig" ]; then swap=1; fi\n'
        '  set -- "$@" "$a"\n'
        "done\n"
        f'KUBECONFIG="{kubeconfig}" exec "{c.helm}" "$@"\n'
    )
    wrapper.chmod(0o755)
    return wrapper


def test_install_with_faulty_helm_connections_converges(fresh_cluster: Any, tmp_path: Path) -> None:
    c = fresh_cluster()
    with FaultProxy(upstream_of(c.kubeconfig), schedule=SCHEDULE, max_faults=3) as proxy:
        helm = helm_through(proxy, c, tmp_path)
        code, doc, err = kymamesh(
            c, "install", "--charts-dir", str(CHARTS), "--helm", str(helm), "-y", "-v"
        )
    print(f"helm through the proxy: {proxy.stats}")
    assert code == 0, (doc["errors"], err)
    assert proxy.stats.resets >= 1 and proxy.stats.cuts >= 1, proxy.stats  # faults did happen
    assert "transient fault" in err  # and helm met them
    with c.audit.counting() as writes:
        code, doc, err = kymamesh(c, "install", "--charts-dir", str(CHARTS), "-y")
    assert code == 0, (doc["errors"], err)
    assert doc["changed"] is False
    assert writes.total == 0, writes.describe()
