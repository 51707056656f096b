"""`install --take-over` on the test cluster (real istiod, real Helm 4): an Istio applied the
way the Kyma Istio module leaves it (tests/support_module.py) is refused while the module's
manager runs, then brought under kymamesh's Helm releases with istiod's validator and
injector answering at every poll of a thread that probes them all through the move; the
installer's fields and labels are gone from the live objects, a re-run writes nothing, and
`uninstall` removes it all."""

from __future__ import annotations

import threading
import time
from typing import Any

from tests.support_lifecycle import CHARTS, NAMESPACE, RELEASES, get, istio_crds, kymamesh
from tests.support_module import (
    DISCLAIMER,
    INSTALLER,
    MANAGER_DEPLOYMENT,
    MODULE_ENV,
    PROBE_NAMESPACE,
    injector_answers,
    injector_probe,
    install_module_shaped,
    validator_answers,
)


class Prober(threading.Thread):
    """Probes the validator and the injector, one after the other, until stopped; every
    probe that does not get istiod's answer is a miss."""

    def __init__(self, cluster: Any) -> None:
        super().__init__(daemon=True)
        self.api = cluster.api()
        self.stop = threading.Event()
        self.polls = 0
        self.misses: list[str] = []

    def run(self) -> None:
        while not self.stop.is_set():
            at = time.strftime("%H:%M:%S")
            try:
                ok, seen = validator_answers(self.api)
                if not ok:
                    self.misses.append(f"{at} validator: {seen}")
                ok, seen = injector_probe(self.api, PROBE_NAMESPACE)
                if not ok:
                    self.misses.append(f"{at} injector: no sidecar ({seen})")
            except Exception as exc:  # a probe that cannot be made is a miss too
                self.misses.append(f"{at} {type(exc).__name__}: {exc}")
            self.polls += 1
            self.stop.wait(0.2)


def _release_objects(c: Any, release: str) -> list[dict[str, Any]]:
    import yaml

    out = c.helm_run("get", "manifest", release, "-n", NAMESPACE).stdout
    return [d for d in yaml.safe_load_all(out) if isinstance(d, dict) and d]


def _live(c: Any, obj: dict[str, Any]) -> dict[str, Any]:
    kind = obj["kind"].lower()
    group = obj["apiVersion"].split("/")[0] if "/" in obj["apiVersion"] else ""
    resource = f"{kind}.{group}" if group else kind
    args = [resource, obj["metadata"]["name"]]
    if obj["kind"] not in (
        "CustomResourceDefinition",
        "ClusterRole",
        "ClusterRoleBinding",
        "MutatingWebhookConfiguration",
        "ValidatingWebhookConfiguration",
    ):
        args += ["-n", NAMESPACE]
    live = get(c, *args, "--show-managed-fields")
    assert live is not None, args
    return live


def test_take_over_a_module_shaped_istio(fresh_cluster: Any) -> None:
    c = fresh_cluster()
    install_module_shaped(c, manager_replicas=1)
    istiod_uid = get(c, "deployment", "istiod", "-n", NAMESPACE)["metadata"]["uid"]

    # while the module's manager runs: refused, nothing written
    mark = c.audit.mark()
    run = kymamesh(c, "install", "--charts-dir", str(CHARTS), "--take-over", "-y")
    assert run.code == 3, str(run)
    assert MANAGER_DEPLOYMENT in run.stderr
    assert c.audit.writes_since(mark, include_dry_run=False).total == 0

    # without --take-over: refused, and the message names --take-over
    c.kubectl("scale", "deployment", MANAGER_DEPLOYMENT, "-n", "kyma-system", "--replicas=0")
    mark = c.audit.mark()
    run = kymamesh(c, "install", "--charts-dir", str(CHARTS), "-y")
    assert run.code == 3, str(run)
    assert "--take-over" in run.stderr, str(run)
    assert c.audit.writes_since(mark, include_dry_run=False).total == 0

    # an object another Helm release owns is not taken from it: refused, nothing written
    c.kubectl(
        "annotate", "service", "istio-ingressgateway", "-n", NAMESPACE,
        "meta.helm.sh/release-name=someone-else",
    )  # fmt: skip
    mark = c.audit.mark()
    run = kymamesh(c, "install", "--charts-dir", str(CHARTS), "--take-over", "-y")
    assert run.code == 3, str(run)
    assert "Service/istio-system/istio-ingressgateway (Helm release someone-else" in run.stderr
    assert c.audit.writes_since(mark, include_dry_run=False).total == 0
    c.kubectl(
        "annotate", "service", "istio-ingressgateway", "-n", NAMESPACE,
        "meta.helm.sh/release-name-",
    )  # fmt: skip

    # Helm 3 merges client-side: refused, nothing written
    mark = c.audit.mark()
    run = kymamesh(
        c, "install", "--charts-dir", str(CHARTS), "--take-over", "-y", "--helm", str(c.helm3)
    )
    assert run.code == 3, str(run)
    assert "Helm 4" in run.stderr, str(run)
    assert c.audit.writes_since(mark, include_dry_run=False).total == 0

    # a dry run: what would change, nothing written
    mark = c.audit.mark()
    run = kymamesh(
        c, "install", "--charts-dir", str(CHARTS), "--take-over", "--dry-run", "-o", "json"
    )
    assert run.code == 0, str(run)
    items = {i["name"]: i for p in run.doc["phases"] for i in p["items"]}
    assert items["istiod"]["outcome"] == "would-change", items["istiod"]
    assert c.audit.writes_since(mark, include_dry_run=False).total == 0

    # the move, probed all along
    prober = Prober(c)
    prober.start()
    try:
        run = kymamesh(c, "install", "--charts-dir", str(CHARTS), "--take-over", "-y", "-o", "json")
    finally:
        prober.stop.set()
        prober.join(30)
    assert run.code == 0, str(run)
    assert prober.polls >= 10, prober.polls
    assert prober.misses == [], "\n".join(prober.misses[:20])
    assert run.doc["data"]["takeOver"] == {"leftovers": []}

    # the releases own the objects; nothing of the installer is left on them
    for release, _chart in RELEASES:
        objs = _release_objects(c, release)
        assert objs, release
        for obj in objs:
            live = _live(c, obj)
            meta = live["metadata"]
            assert meta["annotations"]["meta.helm.sh/release-name"] == release, meta["name"]
            managers = {(e["manager"], e["operation"]) for e in meta.get("managedFields") or []}
            assert (INSTALLER, "Apply") not in managers, (meta["name"], managers)
            assert ("helm", "Apply") in managers, (meta["name"], managers)
            labels = meta.get("labels") or {}
            rendered = obj["metadata"].get("labels") or {}
            installer = ("operator.istio.io/", "install.operator")
            stray = [k for k in labels if k.startswith(installer) and rendered.get(k) != labels[k]]
            assert stray == [], (meta["name"], stray)
            assert "kyma-project.io/module" not in labels, meta["name"]
    istiod = get(c, "deployment", "istiod", "-n", NAMESPACE)
    assert istiod["metadata"]["uid"] == istiod_uid  # updated in place, never made again
    pod = istiod["spec"]["template"]
    assert DISCLAIMER not in (pod["metadata"].get("annotations") or {})
    assert "kyma-project.io/module" not in pod["metadata"]["labels"]
    env = pod["spec"]["containers"][0].get("env") or []
    assert MODULE_ENV["name"] not in [e["name"] for e in env]
    pdb = get(c, "pdb", "istio-ingressgateway", "-n", NAMESPACE)  # the module's, adopted
    assert pdb is not None and pdb["metadata"]["annotations"]["meta.helm.sh/release-name"] == (
        "istio-ingressgateway"
    )

    # status: installed by kymamesh
    run = kymamesh(c, "status", "-o", "json")
    assert run.code == 0, str(run)
    assert run.doc["data"]["istio"]["installedBy"] == "kymamesh", run.doc["data"]["istio"]

    # a re-run (with or without --take-over) writes nothing
    for extra in (("--take-over",), ()):
        mark = c.audit.mark()
        run = kymamesh(c, "install", "--charts-dir", str(CHARTS), "-y", *extra)
        assert run.code == 0, str(run)
        writes = c.audit.writes_since(mark, include_dry_run=False)
        assert writes.total == 0, writes.describe()

    # the probes do see a gap when there is one: with istiod scaled to zero, neither answers
    c.kubectl("scale", "deployment", "istiod", "-n", NAMESPACE, "--replicas=0")
    api = c.api()
    c.wait_for(
        lambda: not validator_answers(api)[0] and not injector_answers(api, PROBE_NAMESPACE),
        120,
        "the probes to miss with istiod gone",
    )

    # uninstall removes it cleanly (CRDs kept unless --purge)
    run = kymamesh(c, "uninstall", "-y", "--purge")
    assert run.code == 0, str(run)
    for kind in ("deployment", "service", "serviceaccount", "role", "rolebinding", "hpa", "pdb"):
        left = get(c, kind, "-n", NAMESPACE)
        names = [o["metadata"]["name"] for o in (left or {"items": []})["items"]]
        assert [n for n in names if n != "default"] == [], (kind, names)
    # ConfigMaps: only what istiod itself made while it ran (its CA root, leader election)
    left = get(c, "configmap", "-n", NAMESPACE, "-l", "install.operator.istio.io/owning-resource")
    assert left is not None and left["items"] == [], left
    left = get(c, "configmap", "-n", NAMESPACE, "-l", "kyma-project.io/module")
    assert left is not None and left["items"] == [], left
    for name in ("istio", "istio-sidecar-injector", "values"):
        assert get(c, "configmap", name, "-n", NAMESPACE) is None, name
    assert istio_crds(c) == []
    for kind in ("mutatingwebhookconfiguration", "validatingwebhookconfiguration"):
        left = get(c, kind)
        names = [o["metadata"]["name"] for o in left["items"]]
        assert [n for n in names if "istio" in n] == [], names
