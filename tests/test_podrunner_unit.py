"""Which istiod build the test cluster runs for an image (tests/cluster/podrunner.py), and
the cache parts of tests/cluster/testcluster.py: pure logic, no cluster."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import testcluster

PODRUNNER_PY = Path(__file__).resolve().parent / "cluster" / "podrunner.py"


def _podrunner() -> Any:
    name = "kymamesh_podrunner"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, PODRUNNER_PY)
        assert spec is not None and spec.loader is not None
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        spec.loader.exec_module(mod)
    return sys.modules[name]


podrunner = _podrunner()
BUILDS = {"1.30": Path("/b/pilot-discovery-1.30"), "1.31": Path("/b/pilot-discovery-1.31")}


@pytest.mark.parametrize(
    ("image", "minor"),
    [
        ("docker.io/istio/pilot:1.31.1", "1.31"),
        ("docker.io/istio/pilot:1.30.3-distroless", "1.30"),
        ("localhost:5000/istio/pilot:1.31.1", "1.31"),
        ("localhost:5000/istio/pilot:1.30.5@sha256:" + "a" * 64, "1.30"),
        ("registry.istio.io/release/pilot:1.30.3", "1.30"),
        ("pilot:v1.31.0", "1.31"),
        ("pilot:1.31-dev", "1.31"),
        ("localhost:5000/istio/pilot", None),
        ("localhost:5000/istio/pilot@sha256:" + "a" * 64, None),
        ("docker.io/istio/pilot:latest", None),
        ("docker.io/istio/pilot:1", None),
    ],
)
def test_image_minor(image: str, minor: str | None) -> None:
    assert podrunner.image_minor(image) == minor


@pytest.mark.parametrize(
    ("image", "build", "why"),
    [
        ("docker.io/istio/pilot:1.31.1", "1.31", "is Istio 1.31: running the 1.31 build"),
        ("docker.io/istio/pilot:1.30.3", "1.30", "is Istio 1.30: running the 1.30 build"),
        ("docker.io/istio/pilot:1.29.4", "1.30", "Istio 1.29, which has no build here"),
        ("docker.io/istio/pilot:1.32.0", "1.31", "the nearest, the 1.31 build"),
        ("docker.io/istio/pilot:2.0.0", "1.31", "the nearest, the 1.31 build"),
        ("docker.io/istio/pilot:latest", "1.31", "names no Istio version"),
    ],
)
def test_choose_istiod_takes_the_minor_or_the_nearest(image: str, build: str, why: str) -> None:
    got, line = podrunner.choose_istiod(image, BUILDS)
    assert got == build
    assert why in line and image in line


def test_choose_istiod_between_two_builds_takes_the_nearer_then_the_newer() -> None:
    builds = {"1.28": Path("a"), "1.30": Path("b"), "1.33": Path("c")}
    assert podrunner.choose_istiod("p:1.29.0", builds)[0] == "1.30"  # a tie: the newer
    assert podrunner.choose_istiod("p:1.31.0", builds)[0] == "1.30"
    assert podrunner.choose_istiod("p:1.32.0", builds)[0] == "1.33"


def test_every_istio_minor_has_its_own_part_and_bin_name() -> None:
    parts = testcluster.parts()
    for minor, b in testcluster.ISTIO_BUILDS.items():
        assert f"istio.io/istio {b.module_version}" in (b.module / "go.mod").read_text()
        assert b.version.startswith(f"{minor}-dev+")
        assert parts[f"istiod-{minor}"].files == [b.module / "go.mod", b.module / "go.sum"]
        assert f"pilot-discovery-{minor}" in testcluster.BINARIES
    assert {"istioctl", testcluster.REGISTRY_BINARY} <= set(testcluster.BINARIES)


def test_a_part_key_changes_with_its_own_inputs_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Changing one go.sum changes that part's folder, not the others' (no full rebuild)."""
    mod = tmp_path / "mod"
    mod.mkdir()
    (mod / "go.mod").write_text("module x\n")
    (mod / "go.sum").write_text("")
    monkeypatch.setenv("KYMAMESH_TESTCLUSTER_CACHE", str(tmp_path / "cache"))
    files = [mod / "go.mod", mod / "go.sum"]
    a = testcluster.Part("a", "a-1", ["out"], lambda d: None, files=files)
    others = {n: p.key() for n, p in testcluster.parts().items()}
    before = a.key()
    (mod / "go.sum").write_text("x v1 h1:abc\n")
    assert a.key() != before
    assert {n: p.key() for n, p in testcluster.parts().items()} == others
    assert a.dir.parent == tmp_path / "cache" / "parts" / "a"


def test_a_part_is_built_once_into_place_and_a_failed_build_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KYMAMESH_TESTCLUSTER_CACHE", str(tmp_path / "cache"))
    calls: list[Path] = []

    def make(d: Path) -> None:
        calls.append(d)
        (d / "out").write_text("built")

    p = testcluster.Part("p", "p-1", ["out"], make)
    assert p.ensure() == p.dir and (p.dir / "out").read_text() == "built"
    assert p.ensure() == p.dir and len(calls) == 1  # cached
    assert (p.dir / "part.json").is_file()

    def broken(d: Path) -> None:
        (d / "half").write_text("")
        raise RuntimeError("compiler crashed")

    q = testcluster.Part("q", "q-1", ["out"], broken)
    with pytest.raises(RuntimeError):
        q.ensure()
    assert not q.dir.exists()
    assert [x.name for x in q.dir.parent.iterdir()] == [".lock"]


def test_cri_log_lines_are_what_the_kubelet_writes() -> None:
    """kwok's server reads container logs in the CRI format: time, stream, tag, line."""
    ns = 1_764_931_200_123_456_789  # 2025-12-05T10:40:00.123456789Z
    line = podrunner.cri_line(b"2025-12-05T10:40:00Z\tinfo\tads\tpush\n", ns)
    assert (
        line == b"2025-12-05T10:40:00.123456789Z stdout F 2025-12-05T10:40:00Z\tinfo\tads\tpush\n"
    )
    assert (
        podrunner.cri_line(b"no newline", 0)
        == b"1970-01-01T00:00:00.000000000Z stdout F no newline\n"
    )


class _Store:
    def __init__(self, pods: list[dict[str, Any]]) -> None:
        self.pods = pods

    def list(self, kind: str) -> list[dict[str, Any]]:
        return self.pods if kind == "pods" else []


def _runner_owner(kubelet: str | None) -> Any:
    owner = podrunner.PodRunner(Path("/nonexistent"), None, BUILDS, "kwok-node-0", kubelet)
    pod = {
        "metadata": {"namespace": "istio-system", "name": "istiod-x"},
        "status": {"podIP": "10.244.0.7"},
    }
    owner.store = _Store([pod])
    return owner


def test_the_egress_proxy_passes_the_kubelet_endpoint_and_says_why_a_pod_address_fails() -> None:
    owner = _runner_owner("127.0.0.1:40123")
    assert owner.resolve("127.0.0.1:40123") == (40123, "")
    port, why = owner.resolve("10.244.0.7:15014")
    assert port is None and "Pod address 10.244.0.7 (istio-system/istiod-x) leads nowhere" in why
    assert _runner_owner(None).resolve("127.0.0.1:40123") == (None, "no Service for 127.0.0.1")


def test_kubelet_objects_map_every_istiod_port_to_its_loopback_port(tmp_path: Path) -> None:
    """The PortForward and Logs that kwok's server reads for an istiod Pod, owned by it."""
    runner = object.__new__(podrunner.Runner)
    runner.ns, runner.name, runner.uid = "istio-system", "istiod-x", "u-1"
    runner.container = {"name": "discovery"}
    runner.ports = {15014: 41000, 15017: 41001}
    runner.ctrlz_port = 41002
    runner.cri_log = tmp_path / "istio-system_istiod-x_discovery.log"
    pf, logs = runner.kubelet_objects()
    assert pf["kind"] == "PortForward" and logs["kind"] == "Logs"
    assert pf["metadata"]["ownerReferences"][0] == {
        "apiVersion": "v1", "kind": "Pod", "name": "istiod-x", "uid": "u-1"
    }  # fmt: skip
    assert {f["ports"][0]: f["target"] for f in pf["spec"]["forwards"]} == {
        15014: {"address": "127.0.0.1", "port": 41000},
        15017: {"address": "127.0.0.1", "port": 41001},
        9876: {"address": "127.0.0.1", "port": 41002},
    }
    (entry,) = logs["spec"]["logs"]
    assert entry["containers"] == ["discovery"] and entry["logsFile"] == str(runner.cri_log)
    assert entry["previousLogsFile"].endswith("istiod-x_discovery.previous.log")
