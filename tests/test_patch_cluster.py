"""Steps 1-5 and `kymamesh patch` on the test cluster: `install` leaves each state in
place, re-runs write nothing, `--dry-run` writes nothing, a foreign Istio installed by plain
helm is adopted (asked, refused, converged), bad clusters are refused without a write, and a
`patch` killed in the middle converges on the re-run to the state of an uninterrupted run."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import yaml

from tests.support_patch import KILLER

if TYPE_CHECKING:
    from tests.conftest import TestCluster

REPO = Path(__file__).resolve().parents[1]
CHARTS = REPO / "tests" / "fixtures" / "charts"
CHARTS_129 = REPO / "tests" / "fixtures" / "charts-1.29"
ADDONS = REPO / "tests" / "fixtures" / "addons"
NS = "istio-system"
MANAGED = "app.kubernetes.io/managed-by"

PROXY = {"requests": {"cpu": "10m", "memory": "128Mi"}, "limits": {"cpu": "1", "memory": "1024Mi"}}
PROXY_INIT = {
    "requests": {"cpu": "10m", "memory": "10Mi"},
    "limits": {"cpu": "100m", "memory": "50Mi"},
}
KYMA_ZIPKIN = {
    "name": "kyma-zipkin",
    "zipkin": {"service": "zipkin.kyma-system.svc.cluster.local", "port": 9411},
}
KYMA_WEBHOOK = {
    "name": "kyma-webhook",
    "envoyExtAuthzHttp": {
        "service": "kyma-webhook.kyma-system.svc.cluster.local",
        "port": 8443,
        "timeout": "5s",
        "includeRequestHeadersInCheck": ["authorization", "cookie"],
        "headersToUpstreamOnAllow": ["authorization"],
    },
}

# A foreign Istio's values: other sidecar resources, injection on by default, tracing to
# the legacy Zipkin addon in istio-system, and providers of its own.
FOREIGN_VALUES = {
    "global": {
        "proxy": {
            "autoInject": "enabled",
            "tracer": "zipkin",
            "resources": {
                "requests": {"cpu": "50m", "memory": "64Mi"},
                "limits": {"cpu": "500m", "memory": "256Mi"},
            },
        }
    },
    "meshConfig": {
        "accessLogFile": "/dev/stdout",
        "defaultProviders": {"tracing": ["zipkin"]},
        "extensionProviders": [
            {
                "name": "zipkin",
                "zipkin": {"service": "zipkin.istio-system.svc.cluster.local", "port": 9411},
            },
            {
                "name": "otel",
                "opentelemetry": {
                    "service": "otel-collector.observability.svc.cluster.local",
                    "port": 4317,
                },
            },
        ],
    },
}

WEAK_POLICIES = """\
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system}
spec: {mtls: {mode: PERMISSIVE}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: legacy-mesh-policy, namespace: istio-system}
spec: {mtls: {mode: DISABLE}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: one-workload, namespace: istio-system}
spec:
  selector: {matchLabels: {app: legacy}}
  mtls: {mode: DISABLE}
"""


# -- helpers ----------------------------------------------------------------------------------


def km(
    c: TestCluster, *args: str, env: dict[str, str] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """The real entry point, with no terminal (stdin is not a TTY)."""
    return subprocess.run(
        [sys.executable, "-m", "kymamesh", *args],
        cwd=REPO,
        env={**c.env, **(env or {})},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def ok(result: subprocess.CompletedProcess[str], code: int = 0) -> subprocess.CompletedProcess[str]:
    assert result.returncode == code, f"exit {result.returncode}:\n{result.stdout}\n{result.stderr}"
    return result


def get(c: TestCluster, path: str) -> dict[str, Any] | None:
    code, body = c.api().get(path)
    if code == 404:
        return None
    assert code == 200, (path, code, body)
    return body  # type: ignore[no-any-return]


def cm_data(c: TestCluster, name: str) -> dict[str, str]:
    obj = get(c, f"/api/v1/namespaces/{NS}/configmaps/{name}")
    assert obj is not None, f"ConfigMap {name} missing"
    return dict(obj["data"])


def policies(c: TestCluster) -> dict[str, dict[str, Any]]:
    body = get(c, f"/apis/security.istio.io/v1/namespaces/{NS}/peerauthentications") or {
        "items": []
    }
    return {p["metadata"]["name"]: p for p in body["items"]}


def install_foreign(c: TestCluster, tmp_path: Path, charts: Path = CHARTS, *sets: str) -> None:
    """Istio installed by plain helm with other values, weak mTLS and legacy addons."""
    values = tmp_path / "foreign-values.yaml"
    values.write_text(yaml.safe_dump(FOREIGN_VALUES))
    c.helm_run("install", "istio-base", str(charts / "base"), "-n", NS, "--create-namespace")
    c.helm_run("install", "istiod", str(charts / "istiod"), "-n", NS, "-f", str(values), *sets)
    c.helm_run("install", "istio-ingressgateway", str(charts / "gateway"), "-n", NS)
    c.kubectl("apply", "-f", "-", input=WEAK_POLICIES)
    c.kubectl("apply", "-f", str(ADDONS / "legacy-addons.yaml"))
    c.kubectl("apply", "-f", str(ADDONS / "look-alikes.yaml"))


def assert_kyma_state(c: TestCluster, foreign: dict[str, str] | None = None) -> None:
    """Steps 1-5's state, field by field; with the foreign ConfigMaps, what must be kept."""
    pas = policies(c)
    default = pas["default"]
    assert default["spec"]["mtls"] == {"mode": "STRICT"}
    assert "selector" not in default["spec"]
    assert default["metadata"]["labels"][MANAGED] == "kymamesh"
    for name, pa in pas.items():
        if not (pa["spec"].get("selector") or {}).get("matchLabels"):
            assert pa["spec"]["mtls"]["mode"] == "STRICT", name

    injector = cm_data(c, "istio-sidecar-injector")
    values = json.loads(injector["values"])
    assert values["global"]["proxy"]["resources"] == PROXY
    assert values["global"]["proxy_init"]["resources"] == PROXY_INIT
    config = yaml.safe_load(injector["config"])
    assert config["policy"] == "disabled"
    assert set(config["templates"]) >= {"sidecar", "gateway"}

    mesh_text = cm_data(c, "istio")["mesh"]
    mesh = yaml.safe_load(mesh_text)
    assert mesh["defaultConfig"]["tracing"] == {"zipkin": {"address": "zipkin.kyma-system:9411"}}
    providers = mesh["extensionProviders"]
    assert KYMA_ZIPKIN in providers and KYMA_WEBHOOK in providers
    assert mesh["defaultProviders"]["tracing"] == ["kyma-zipkin"]  # tracing is active
    assert "zipkin.istio-system" not in mesh_text
    for provider in providers:
        if "zipkin" in provider:
            assert provider == KYMA_ZIPKIN
    assert mesh["defaultConfig"]["discoveryAddress"] == "istiod.istio-system.svc:15012"

    if foreign is not None:
        old_config, new_config = foreign["config"].splitlines(), injector["config"].splitlines()
        assert [(a, b) for a, b in zip(old_config, new_config, strict=True) if a != b] == [
            ("policy: enabled", "policy: disabled")
        ]
        old_values = json.loads(foreign["values"])
        for key in ("proxy", "proxy_init"):
            old_values["global"][key].pop("resources", None)
            values["global"][key].pop("resources")
        # the foreign 1.30 charts' sidecars come from the retired hub: moved to the release's
        assert old_values["global"].pop("hub") == "registry.istio.io/release"
        assert values["global"].pop("hub") == "docker.io/istio"
        assert values == old_values
        old_mesh = yaml.safe_load(foreign["mesh"])
        assert mesh["accessLogFile"] == "/dev/stdout"
        assert mesh["defaultProviders"] == {"tracing": ["kyma-zipkin"]}
        assert [p["name"] for p in providers] == ["otel", "kyma-zipkin", "kyma-webhook"]
        for key in set(old_mesh) - {"defaultConfig", "defaultProviders", "extensionProviders"}:
            assert mesh[key] == old_mesh[key], key


def foreign_configmaps(c: TestCluster) -> dict[str, str]:
    return {**cm_data(c, "istio-sidecar-injector"), **cm_data(c, "istio")}


def no_writes(c: TestCluster, mark: int) -> None:
    writes = c.audit.writes_since(mark)
    assert writes.total == 0, writes.describe()


# -- install, re-runs, dry run -----------------------------------------------------------------


def test_install_leaves_steps_in_place_and_reruns_write_nothing(fresh_cluster: Any) -> None:
    c = fresh_cluster()
    doc = json.loads(ok(km(c, "install", "--charts-dir", str(CHARTS), "-y", "-o", "json")).stdout)
    items = {i["name"]: i for p in doc["phases"] for i in p["items"]}
    for step in (
        "mtls-strict",
        "sidecar-resources",
        "injection-policy",
        "tracing-kyma-zipkin",
        "pilot-webhook",
    ):
        assert items[step]["outcome"] == "changed", items[step]
    assert_kyma_state(c)

    mark = c.audit.mark()
    ok(km(c, "install", "--charts-dir", str(CHARTS), "-y"))
    no_writes(c, mark)

    mark = c.audit.mark()
    doc = json.loads(
        ok(km(c, "patch", "-o", "json")).stdout
    )  # kymamesh's own Istio: no flag needed
    no_writes(c, mark)
    assert doc["data"]["istio"]["patchedByKymamesh"] is True
    assert doc["data"]["istio"]["version"] == "1.30.3"
    assert {i["outcome"] for i in doc["phases"][0]["items"]} == {"unchanged"}


def test_dry_run_shows_diffs_then_patch_repairs_drift(fresh_cluster: Any) -> None:
    c = fresh_cluster()
    ok(km(c, "install", "--charts-dir", str(CHARTS), "-y"))
    # Drift: someone turns injection back on and weakens mTLS.
    c.kubectl(
        "-n",
        NS,
        "patch",
        "configmap",
        "istio-sidecar-injector",
        "--type=merge",
        "-p",
        json.dumps(
            {
                "data": {
                    "config": cm_data(c, "istio-sidecar-injector")["config"].replace(
                        "policy: disabled", "policy: enabled"
                    )
                }
            }
        ),
    )
    c.kubectl(
        "-n",
        NS,
        "patch",
        "peerauthentication",
        "default",
        "--type=merge",
        "-p",
        '{"spec": {"mtls": {"mode": "PERMISSIVE"}}}',
    )

    mark = c.audit.mark()
    result = ok(km(c, "patch", "--dry-run"))
    no_writes(c, mark)
    assert "-policy: enabled" in result.stdout and "+policy: disabled" in result.stdout
    assert "-    mode: PERMISSIVE" in result.stdout and "+    mode: STRICT" in result.stdout
    assert "dry run: nothing was written" in result.stdout

    mark = c.audit.mark()
    result = ok(km(c, "patch"), code=6)  # PERMISSIVE -> STRICT needs a yes; no terminal
    no_writes(c, mark)
    assert "mesh-wide mTLS is PERMISSIVE" in result.stderr and "--yes" in result.stderr

    ok(km(c, "patch", "-y"))
    assert_kyma_state(c)
    mark = c.audit.mark()
    ok(km(c, "patch"))
    no_writes(c, mark)

    # As if `install` had stopped after phase 1: no object with kymamesh's label is left,
    # but its Helm release marker tells `patch` that this Istio is kymamesh's.
    c.kubectl("-n", NS, "delete", "peerauthentication,secret", "-l", f"{MANAGED}=kymamesh")
    result = ok(km(c, "patch", "-y"))
    assert "created with mtls.mode STRICT" in result.stdout
    assert_kyma_state(c)


def test_upgrade_with_other_values_then_patch_again(fresh_cluster: Any) -> None:
    """Phase 1 takes back (Helm 4: --force-conflicts) the ConfigMap fields the patch owns."""
    c = fresh_cluster()
    ok(km(c, "install", "--charts-dir", str(CHARTS), "-y"))
    ok(
        km(
            c,
            "install",
            "--charts-dir",
            str(CHARTS),
            "-y",
            "--set",
            "istiod.global.logging.level=default:debug",
        )
    )
    assert_kyma_state(c)


def test_missing_injector_configmap_fails_its_steps_and_settings_apply(
    fresh_cluster: Any, tmp_path: Path
) -> None:
    c = fresh_cluster()
    c.helm_run("install", "istio-base", str(CHARTS / "base"), "-n", NS, "--create-namespace")
    c.helm_run(
        "install",
        "istiod",
        str(CHARTS / "istiod"),
        "-n",
        NS,
        "--set",
        "global.omitSidecarInjectorConfigMap=true",
    )
    config = tmp_path / "kyma.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "steps": {
                    "sidecar-resources": {"proxy": {"limits": {"memory": "512Mi", "cpu": None}}},
                    "pilot-webhook": {"enabled": False},
                }
            }
        )
    )

    doc = json.loads(
        ok(
            km(c, "patch", "--existing-istio", "-y", "-o", "json", "--config", str(config)), 5
        ).stdout
    )
    items = {i["name"]: i for i in doc["phases"][0]["items"]}
    for step in ("sidecar-resources", "injection-policy"):
        assert items[step]["outcome"] == "failed"
        assert (
            "ConfigMap istio-system/istio-sidecar-injector does not exist" in items[step]["error"]
        )
    assert items["mtls-strict"]["outcome"] == items["tracing-kyma-zipkin"]["outcome"] == "changed"
    assert items["pilot-webhook"]["outcome"] == "unchanged"  # disabled, and not there

    conflicts = ["--force-conflicts"] if c.helm_major == 4 else []  # the patch owns .data.mesh
    c.helm_run(
        "upgrade",
        "istiod",
        str(CHARTS / "istiod"),
        "-n",
        NS,
        *conflicts,
        "--set",
        "global.omitSidecarInjectorConfigMap=false",
    )
    ok(km(c, "patch", "-y", "--config", str(config)))
    values = json.loads(cm_data(c, "istio-sidecar-injector")["values"])
    assert values["global"]["proxy"]["resources"] == {
        "requests": {"cpu": "10m", "memory": "128Mi"},
        "limits": {"memory": "512Mi"},
    }
    mesh = yaml.safe_load(cm_data(c, "istio")["mesh"])
    assert [p["name"] for p in mesh["extensionProviders"]] == ["kyma-zipkin"]
    mark = c.audit.mark()
    ok(km(c, "patch", "--config", str(config)))
    no_writes(c, mark)

    ok(km(c, "patch"))  # the settings are remembered: nothing reverts
    no_writes(c, mark)
    ok(km(c, "patch", "--reset-settings"))  # back to the defaults: webhook again, 1024Mi
    assert_kyma_state(c)
    ok(km(c, "patch", "--config", str(config)))  # removable again
    mesh = yaml.safe_load(cm_data(c, "istio")["mesh"])
    assert KYMA_WEBHOOK not in mesh["extensionProviders"]


# -- adopting a foreign Istio -------------------------------------------------------------------


def test_adopt_foreign_istio(fresh_cluster: Any, tmp_path: Path) -> None:
    c = fresh_cluster()
    mark = c.audit.mark()
    result = ok(km(c, "patch", "--existing-istio", "-y"), code=3)
    assert "namespace istio-system does not exist" in result.stderr
    no_writes(c, mark)

    install_foreign(c, tmp_path)
    foreign = foreign_configmaps(c)

    mark = c.audit.mark()
    result = ok(km(c, "patch", "-y"), code=3)  # not kymamesh's: needs --existing-istio
    assert "not set up by kymamesh" in result.stderr and "--existing-istio" in result.stderr
    assert "Helm release istio-system/istiod" in result.stderr
    result = ok(km(c, "install", "--charts-dir", str(CHARTS), "-y"), code=3)  # nor install's
    assert "not installed by kymamesh" in result.stderr, result.stderr
    assert "patch --existing-istio" in result.stderr
    for release in ("istio-base", "istiod", "istio-ingressgateway"):
        assert f"istio-system/{release} (" in result.stderr, release
    result = ok(km(c, "patch", "--existing-istio"), code=6)  # weak mTLS, no terminal, no --yes
    assert "DISABLE in PeerAuthentication istio-system/legacy-mesh-policy" in result.stderr
    assert "PERMISSIVE in PeerAuthentication istio-system/default" in result.stderr
    doc = json.loads(ok(km(c, "patch", "--existing-istio", "--dry-run", "-o", "json")).stdout)
    no_writes(c, mark)
    items = {i["name"]: i for i in doc["phases"][0]["items"]}
    for step in (
        "mtls-strict",
        "sidecar-resources",
        "injection-policy",
        "tracing-kyma-zipkin",
        "pilot-webhook",
    ):
        assert items[step]["outcome"] == "would-change" and items[step]["diff"], step
    assert "-      address: zipkin.istio-system:9411" in items["tracing-kyma-zipkin"]["diff"]
    assert doc["data"]["istio"]["installedBy"] == "Helm release istio-system/istiod"
    assert doc["data"]["istio"]["patchedByKymamesh"] is False

    doc = json.loads(ok(km(c, "patch", "--existing-istio", "-y", "-o", "json")).stdout)
    items = {i["name"]: i for i in doc["phases"][0]["items"]}
    assert (
        "removed extension provider zipkin (Zipkin in istio-system"
        in items["tracing-kyma-zipkin"]["summary"]
    )
    assert "legacy-mesh-policy: mtls.mode DISABLE -> STRICT" in " ".join(
        items["mtls-strict"]["changes"]
    )
    assert_kyma_state(c, foreign)
    pas = policies(c)
    assert pas["one-workload"]["spec"]["mtls"]["mode"] == "DISABLE"  # not mesh-wide: untouched
    assert MANAGED not in (pas["legacy-mesh-policy"]["metadata"].get("labels") or {})
    mark = c.audit.mark()  # adopted, but its releases are still not install's to take over
    result = ok(km(c, "install", "--charts-dir", str(CHARTS), "-y"), code=3)
    assert "not installed by kymamesh" in result.stderr, result.stderr
    no_writes(c, mark)
    assert get(c, f"/apis/apps/v1/namespaces/{NS}/deployments/istiod") is not None

    mark = c.audit.mark()
    ok(km(c, "patch", "--existing-istio", "-y"))
    ok(km(c, "patch"))  # adopted now: the flag is no longer needed
    no_writes(c, mark)


def test_preflight_refusals_then_older_minor_adopted(fresh_cluster: Any, tmp_path: Path) -> None:
    c = fresh_cluster()
    # istiod without the CRDs of the base chart.
    c.helm_run("install", "istiod", str(CHARTS / "istiod"), "-n", NS, "--create-namespace")
    mark = c.audit.mark()
    result = ok(km(c, "patch", "--existing-istio", "-y"), code=3)
    assert "the Istio security CRDs are not in place" in result.stderr
    assert "peerauthentications.security.istio.io (not found)" in result.stderr
    no_writes(c, mark)

    c.helm_run("install", "istio-base", str(CHARTS / "base"), "-n", NS)
    c.helm_run("upgrade", "istiod", str(CHARTS / "istiod"), "-n", NS, "--set", "global.tag=1.27.0")
    mark = c.audit.mark()
    result = ok(km(c, "patch", "--existing-istio", "-y", "-o", "json"), code=3)
    doc = json.loads(result.stdout)
    assert doc["status"] == "refused" and doc["errors"][0]["code"] == "precondition"
    assert "istiod runs Istio 1.27.0" in doc["errors"][0]["message"]
    # the image comes from the 1.30 fixture charts' default hub, as the published ones'
    assert "registry.istio.io/release/pilot:1.27.0" in doc["errors"][0]["message"]
    no_writes(c, mark)

    # One minor below, from a mirror with a port, pinned by digest, distroless: adopted.
    image = "registry.local:5000/istio/pilot:1.29.4-distroless@sha256:" + "ab" * 32
    c.helm_run("upgrade", "istiod", str(CHARTS_129 / "istiod"), "-n", NS, "--set", f"image={image}")
    doc = json.loads(ok(km(c, "patch", "--existing-istio", "-y", "-o", "json")).stdout)
    assert doc["data"]["istio"]["version"] == "1.29.4" and doc["data"]["istio"]["image"] == image
    assert_kyma_state(c)


# -- interrupted runs ---------------------------------------------------------------------------


def snapshot(c: TestCluster) -> dict[str, Any]:
    """What the patch leaves, minus what differs by nature (certificate bytes, timestamps)."""
    secret = get(c, f"/api/v1/namespaces/{NS}/secrets/kyma-gateway-certs") or {}
    gateway = (
        get(c, "/apis/networking.istio.io/v1/namespaces/kyma-system/gateways/kyma-gateway") or {}
    )
    left = {}
    for kind, path in (
        ("Deployment", "/apis/apps/v1"),
        ("Service", "/api/v1"),
        ("ConfigMap", "/api/v1"),
    ):
        body = get(c, f"{path}/namespaces/{NS}/{kind.lower()}s") or {"items": []}
        left[kind] = sorted(o["metadata"]["name"] for o in body["items"])
    return {
        "configmaps": foreign_configmaps(c),
        "policies": {
            n: (p["spec"], (p["metadata"].get("labels") or {}).get(MANAGED))
            for n, p in policies(c).items()
        },
        "secret": (secret.get("type"), sorted(secret.get("data") or {})),
        "gateway": gateway.get("spec"),
        "left in istio-system": left,
    }


_REFERENCE: dict[str, Any] = {}


def reference_state(fresh_cluster: Any, tmp_path: Path) -> dict[str, Any]:
    """The state an uninterrupted `patch --existing-istio` leaves (computed once)."""
    if not _REFERENCE:
        c = fresh_cluster()
        install_foreign(c, tmp_path)
        ok(km(c, "patch", "--existing-istio", "-y"))
        _REFERENCE.update(snapshot(c))
        c.down()
    return _REFERENCE


@pytest.mark.parametrize("kill_after", [1, 4, 8, 11], ids=lambda n: f"after-write-{n}")
def test_killed_patch_converges(fresh_cluster: Any, tmp_path: Path, kill_after: int) -> None:
    reference = reference_state(fresh_cluster, tmp_path)
    c = fresh_cluster()
    install_foreign(c, tmp_path)

    mark = c.audit.mark()
    killed = subprocess.run(
        [sys.executable, "-c", KILLER, "patch", "--existing-istio", "-y"],
        cwd=REPO,
        env={**c.env, "KYMAMESH_TEST_KILL_AFTER": str(kill_after)},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    writes = c.audit.writes_since(mark, user_agent_prefix="kymamesh")
    assert writes.total >= kill_after, writes.describe()
    lease = get(c, f"/apis/coordination.k8s.io/v1/namespaces/{NS}/leases/kymamesh-lock")
    assert lease is not None  # the killed run's lock is left behind
    assert snapshot(c) != reference  # interrupted for real

    started = time.monotonic()
    ok(km(c, "patch", "--existing-istio", "-y", "--lock-wait", "40"))
    waited = time.monotonic() - started
    assert snapshot(c) == reference
    assert_kyma_state(c)
    mark = c.audit.mark()
    ok(km(c, "patch"))
    no_writes(c, mark)
    print(f"killed after:\n{writes.describe()}\nre-run took {waited:.1f}s (lock expiry included)")
