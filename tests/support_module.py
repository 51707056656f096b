"""An Istio as the Kyma Istio module leaves it, on a test cluster: the fixture of
`install --take-over`.

Facts read in kyma-project/istio (its `istio_install` binary and its manager) and in
Istio's installer library, which that binary calls (`operator/pkg/install`), carried over
as facts, no code:

- the objects are Istio's charts rendered and applied **server-side, with force, as the
  field manager `istio-operator`**, without Helm's labels and annotations;
- each carries the installer's labels: `operator.istio.io/component` (`Base`, `Pilot`,
  `IngressGateways`), `operator.istio.io/managed: Reconcile`, `operator.istio.io/version`,
  `install.operator.istio.io/owning-resource` (the module's IstioOperator is
  `default-operator`) and `...-namespace`, and `istio.io/rev: default`;
- the module's IstioOperator overlays add `kyma-project.io/module: istio` to the Pod
  templates of istiod and the gateway, sets istiod's env `PILOT_HTTP10=1` and a
  "DO NOT EDIT" disclaimer annotation on istiod's Pods, and gives the ingress gateway a
  PodDisruptionBudget with `maxUnavailable: 1`;
- the module's manager (binary `manager`, so field manager `manager`) then merge-patches
  `kyma-project.io/module: istio` onto the objects' labels;
- the manager runs as Deployment `kyma-system/istio-controller-manager`, labelled
  `app.kubernetes.io/component: istio-operator.kyma-project.io`.

The charts rendered are the project's fixture charts (tests/fixtures/charts), never
Istio's.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import yaml

from tests.support_lifecycle import CHARTS, NAMESPACE, RELEASES

INSTALLER = "istio-operator"
MANAGER = "manager"
OWNER = "default-operator"
COMPONENTS = {"istio-base": "Base", "istiod": "Pilot", "istio-ingressgateway": "IngressGateways"}
MODULE_LABEL = {"kyma-project.io/module": "istio"}
DISCLAIMER = "istios.operator.kyma-project.io/managed-by-disclaimer"
MODULE_ENV = {"name": "PILOT_HTTP10", "value": "1"}
HELM_LABELS = ("app.kubernetes.io/managed-by", "helm.sh/chart")
MANAGER_DEPLOYMENT = "istio-controller-manager"
PROBE_NAMESPACE = "takeover-probe"  # injection on: where the injector is probed


def installer_labels(component: str, version: str) -> dict[str, str]:
    return {
        "operator.istio.io/component": component,
        "operator.istio.io/managed": "Reconcile",
        "operator.istio.io/version": version,
        "install.operator.istio.io/owning-resource": OWNER,
        "install.operator.istio.io/owning-resource-namespace": NAMESPACE,
        "istio.io/rev": "default",
    }


def render(cluster: Any, release: str, chart: Path) -> list[dict[str, Any]]:
    args = ["template", release, str(chart), "-n", NAMESPACE]
    if release == "istio-ingressgateway":  # the module's IstioOperator: a PDB, maxUnavailable 1
        args += ["--set", "podDisruptionBudget.maxUnavailable=1"]
    out = cluster.helm_run(*args).stdout
    return [d for d in yaml.safe_load_all(out) if isinstance(d, dict) and d]


def module_shaped(obj: dict[str, Any], component: str, version: str) -> dict[str, Any]:
    """One rendered object as the module's installer applies it."""
    meta = obj.setdefault("metadata", {})
    labels = {k: v for k, v in (meta.get("labels") or {}).items() if k not in HELM_LABELS}
    labels.update(installer_labels(component, version))
    meta["labels"] = labels
    annotations = {
        k: v for k, v in (meta.get("annotations") or {}).items() if not k.startswith("meta.helm")
    }
    if annotations:
        meta["annotations"] = annotations
    else:
        meta.pop("annotations", None)
    if obj.get("kind") == "Deployment":
        template = obj["spec"]["template"].setdefault("metadata", {})
        template["labels"] = {
            **{k: v for k, v in (template.get("labels") or {}).items() if k not in HELM_LABELS},
            **MODULE_LABEL,
        }
        if meta.get("name") == "istiod":
            template.setdefault("annotations", {})[DISCLAIMER] = "DO NOT EDIT"
            for container in obj["spec"]["template"]["spec"]["containers"]:
                if container["name"] == "discovery":
                    container.setdefault("env", []).append(dict(MODULE_ENV))
    return obj


def manager_deployment(replicas: int) -> dict[str, Any]:
    labels = {"app.kubernetes.io/component": "istio-operator.kyma-project.io"}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": MANAGER_DEPLOYMENT, "namespace": "kyma-system", "labels": labels},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [{"name": "manager", "image": "example.com/manager:1"}]},
            },
        },
    }


def wait_injector(cluster: Any, timeout: float = 180) -> None:
    """Until istiod's injector answers (a dry-run Pod gets a sidecar)."""
    deadline = time.monotonic() + timeout
    while True:
        if injector_answers(cluster.api(), PROBE_NAMESPACE):
            return
        assert time.monotonic() < deadline, "istiod's injector does not answer"
        time.sleep(0.5)


def install_module_shaped(cluster: Any, charts: Path = CHARTS, manager_replicas: int = 0) -> None:
    """The three charts rendered and applied as the module's installer does, istiod ready
    and injecting before the gateway, the manager's labels, the manager's Deployment."""
    version = yaml.safe_load((charts / "istiod" / "Chart.yaml").read_text())["version"]
    cluster.kubectl("create", "namespace", NAMESPACE, check=False)
    cluster.kubectl("create", "namespace", "kyma-system", check=False)
    cluster.create_namespace(PROBE_NAMESPACE, labels={"istio-injection": "enabled"})
    for release, chart in RELEASES:
        rendered = render(cluster, release, charts / chart)
        objs = [module_shaped(o, COMPONENTS[release], version) for o in rendered]
        doc = json.dumps({"apiVersion": "v1", "kind": "List", "items": objs})
        cluster.kubectl(
            "apply", "--server-side", f"--field-manager={INSTALLER}", "--force-conflicts",
            "-n", NAMESPACE, "-f", "-", input=doc,
        )  # fmt: skip
        cluster.kubectl(
            "label", "--overwrite", f"--field-manager={MANAGER}", "-n", NAMESPACE, "-f", "-",
            "kyma-project.io/module=istio", input=doc,
        )  # fmt: skip
        if release == "istiod":
            cluster.kubectl(
                "rollout", "status", "deployment/istiod", "-n", NAMESPACE, "--timeout=300s",
                timeout=320,
            )  # fmt: skip
            wait_injector(cluster)
    cluster.kubectl(
        "rollout", "status", "deployment/istio-ingressgateway", "-n", NAMESPACE,
        "--timeout=300s", timeout=320,
    )  # fmt: skip
    cluster.kubectl("apply", "-f", "-", input=json.dumps(manager_deployment(manager_replicas)))


# -- the probes: do the validator and the injector answer? -----------------------------------

BAD_PEER_AUTHENTICATION = {
    "apiVersion": "security.istio.io/v1",
    "kind": "PeerAuthentication",
    "metadata": {"name": "probe-invalid", "namespace": "default"},
    "spec": {"mtls": {"mode": "STRICT"}, "portLevelMtls": {"8080": {"mode": "DISABLE"}}},
}


def validator_answers(api: Any) -> tuple[bool, str]:
    """An invalid PeerAuthentication (dry run) is denied by istiod's validator."""
    code, body = api.request(
        "POST",
        "/apis/security.istio.io/v1/namespaces/default/peerauthentications?dryRun=All",
        body=BAD_PEER_AUTHENTICATION,
        timeout=15,
    )
    message = body.get("message", "") if isinstance(body, dict) else str(body)
    return (400 <= code < 500 and "denied the request" in message), f"{code} {message[:200]}"


def probe_pod(namespace: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "generateName": "probe-",
            "namespace": namespace,
            "labels": {"sidecar.istio.io/inject": "true"},
        },
        "spec": {"containers": [{"name": "app", "image": "example.com/app:1"}]},
    }


def injector_answers(api: Any, namespace: str) -> bool:
    """A Pod asking for a sidecar (dry run, in a namespace with injection on) gets one."""
    return injector_probe(api, namespace)[0]


def injector_probe(api: Any, namespace: str) -> tuple[bool, str]:
    """`injector_answers`, and what the API server answered when it is not a sidecar."""
    code, body = api.request(
        "POST", f"/api/v1/namespaces/{namespace}/pods?dryRun=All", body=probe_pod(namespace),
        timeout=15,
    )  # fmt: skip
    if code != 201 or not isinstance(body, dict):
        message = body.get("message", "") if isinstance(body, dict) else str(body)
        return False, f"{code} {message[:200]}"
    names = [c.get("name") for c in body["spec"].get("containers") or []]
    return "istio-proxy" in names, f"201, containers {names}"
