"""The default revision tag (kymamesh.istio.tags) and which revision injects a Pod
(kymamesh.istio.revisions): pure logic."""

from __future__ import annotations

import json
from typing import Any

import pytest

from kymamesh.istio.revisions import injecting_revision, moved_pods
from kymamesh.istio.tags import (
    NEVER_MATCH,
    TagSource,
    all_deactivated,
    deactivated_webhooks,
    injector_webhook_name,
    istiod_release_name,
    revision_name,
    tag_differences,
    tag_revision,
    tag_webhook_name,
    wanted_tag,
)
from kymamesh.istio.versions import Version


def _hook(name: str, service: str = "istiod-1-30-3") -> dict[str, Any]:
    return {
        "name": name,
        "clientConfig": {
            "service": {"name": service, "namespace": "istio-system", "path": "/inject"},
            "caBundle": "Q0E=",
        },
        "rules": [{"operations": ["CREATE"], "apiGroups": [""], "resources": ["pods"]}],
        "failurePolicy": "Fail",
        "sideEffects": "None",
        "admissionReviewVersions": ["v1"],
        "namespaceSelector": {"matchExpressions": [{"key": "istio.io/rev", "operator": "In"}]},
        "objectSelector": {},
    }


def _injector(revision: str, service: str) -> dict[str, Any]:
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": injector_webhook_name(revision, "istio-system")},
        "webhooks": [
            _hook("rev.namespace.sidecar-injector.istio.io", service),
            _hook("rev.object.sidecar-injector.istio.io", service),
        ],
    }


def test_names_follow_istio() -> None:
    assert revision_name(Version.parse("1.30.3")) == "1-30-3"
    assert istiod_release_name("1-30-3") == "istiod-1-30-3"
    assert istiod_release_name("default") == "istiod"
    assert tag_webhook_name("istio-system") == "istio-revision-tag-default"
    assert tag_webhook_name("mesh") == "istio-revision-tag-default-mesh"
    assert injector_webhook_name("default", "istio-system") == "istio-sidecar-injector"
    assert injector_webhook_name("1-30-3", "istio-system") == "istio-sidecar-injector-1-30-3"


def test_wanted_tag_copies_the_client_and_sets_the_default_selectors() -> None:
    tag = wanted_tag(
        TagSource("1-30-3", "istio-system", _injector("1-30-3", "istiod-1-30-3")),
        {"app.kubernetes.io/managed-by": "kymamesh"},
    )
    assert tag["metadata"]["name"] == "istio-revision-tag-default"
    assert tag["metadata"]["labels"]["istio.io/tag"] == "default"
    assert tag_revision(tag) == "1-30-3"
    names = [h["name"] for h in tag["webhooks"]]
    assert names == [
        "rev.namespace.sidecar-injector.istio.io",
        "rev.object.sidecar-injector.istio.io",
        "namespace.sidecar-injector.istio.io",
        "object.sidecar-injector.istio.io",
    ]
    for hook in tag["webhooks"]:
        assert hook["clientConfig"]["service"]["name"] == "istiod-1-30-3"
        assert hook["clientConfig"]["caBundle"] == "Q0E="
        assert hook["failurePolicy"] == "Fail"
    by_name = {h["name"].split(".sidecar")[0]: h for h in tag["webhooks"]}
    assert by_name["namespace"]["namespaceSelector"]["matchExpressions"] == [
        {"key": "istio-injection", "operator": "In", "values": ["enabled"]}
    ]
    assert {"key": "istio.io/rev", "operator": "In", "values": ["default"]} in by_name[
        "rev.object"
    ]["objectSelector"]["matchExpressions"]


def test_tag_differences_ignore_the_ca_bundle_only() -> None:
    source = TagSource("1-30-3", "istio-system", _injector("1-30-3", "istiod-1-30-3"))
    wanted = wanted_tag(source, {})
    assert tag_differences(None, wanted) == [
        "create MutatingWebhookConfiguration istio-revision-tag-default"
    ]
    live = json.loads(json.dumps(wanted))
    for hook in live["webhooks"]:
        hook["clientConfig"]["caBundle"] = "b3RoZXI="  # istiod's to write
    assert tag_differences(live, wanted) == []
    back = wanted_tag(TagSource("default", "istio-system", _injector("default", "istiod")), {})
    found = tag_differences(live, back)
    assert found[0] == "label istio.io/rev: '1-30-3' -> 'default'"
    assert found[1].startswith("webhooks ")


def test_deactivation_switches_off_injector_webhooks_only() -> None:
    config = _injector("default", "istiod")
    config["webhooks"].append({"name": "other.example.com", "objectSelector": {"a": "b"}})
    assert not all_deactivated(config)
    hooks = deactivated_webhooks(config)
    assert hooks[0]["namespaceSelector"] == NEVER_MATCH == hooks[0]["objectSelector"]
    assert hooks[2] == {"name": "other.example.com", "objectSelector": {"a": "b"}}
    assert all_deactivated({**config, "webhooks": hooks})
    assert config["webhooks"][0]["namespaceSelector"] != NEVER_MATCH  # not changed in place
    assert not all_deactivated({"webhooks": []})


@pytest.mark.parametrize(
    ("namespace", "pod", "want"),
    [
        ({"istio-injection": "enabled"}, {}, "HOLDER"),
        ({"istio-injection": "enabled", "istio.io/rev": "1-29-4"}, {}, "HOLDER"),
        ({"istio-injection": "disabled"}, {"sidecar.istio.io/inject": "true"}, None),
        ({"istio.io/rev": "default"}, {}, "HOLDER"),
        ({"istio.io/rev": "1-30-3"}, {"istio.io/rev": "other"}, "1-30-3"),
        ({}, {"istio.io/rev": "canary"}, "canary"),
        ({}, {"istio.io/rev": "default"}, "HOLDER"),
        ({}, {"sidecar.istio.io/inject": "true"}, "HOLDER"),
        ({"istio-injection": "enabled"}, {"sidecar.istio.io/inject": "false"}, None),
        ({}, {}, None),
    ],
)
def test_injecting_revision(namespace: dict[str, str], pod: dict[str, str], want: Any) -> None:
    assert injecting_revision(namespace, pod, "HOLDER") == want


def _pod(name: str, ns: str, revision: str | None, **labels: str) -> dict[str, Any]:
    annotations = {}
    if revision is not None:
        annotations["sidecar.istio.io/status"] = json.dumps({"revision": revision})
    return {
        "metadata": {
            "name": name,
            "namespace": ns,
            "labels": labels,
            "annotations": annotations,
        },
        "status": {"phase": "Running"},
    }


def test_moved_pods_are_those_a_new_pod_would_not_match() -> None:
    namespaces = {
        "shop": {"istio-injection": "enabled"},
        "pinned": {"istio.io/rev": "default-old"},
        "canary": {"istio.io/rev": "1-30-3"},
    }
    pods = [
        _pod("a", "shop", "default"),  # default tag moved: moved
        _pod("b", "shop", "1-30-3"),  # already new
        _pod("c", "pinned", "default-old"),  # names its revision: stays
        _pod("d", "canary", "1-30-3"),
        _pod("e", "shop", None),  # no sidecar
        {**_pod("f", "shop", "default"), "status": {"phase": "Succeeded"}},
    ]
    moved = moved_pods(pods, namespaces, "1-30-3")
    assert [(p["metadata"]["name"], have, now) for p, have, now in moved] == [
        ("a", "default", "1-30-3")
    ]
    back = moved_pods(pods, namespaces, "default")
    assert sorted(p["metadata"]["name"] for p, _, _ in back) == ["b"]


# -- the canary state and restarts under way (kymamesh.workflows.canary, pure parts) ---------


def _plane(revision: str) -> Any:
    from kymamesh.istio.controlplane import ControlPlane

    return ControlPlane.named("istio-system", revision)


def test_canary_phases_follow_the_tag() -> None:
    from kymamesh.workflows.canary import CanaryState

    old = _injector("default", "istiod")
    tag = wanted_tag(TagSource("1-30-3", "istio-system", _injector("1-30-3", "x")), {})

    def state(**kw: Any) -> CanaryState:
        base: dict[str, Any] = {
            "namespace": "istio-system",
            "revision": "1-30-3",
            "canary": _plane("1-30-3"),
            "others": [_plane("default")],
            "tag": None,
            "default_injector": old,
        }
        return CanaryState(**{**base, **kw})

    assert (state().phase, state().holder) == ("canary", "default")
    assert (state(tag=tag).phase, state(tag=tag).holder) == ("promoted", "1-30-3")
    back = wanted_tag(TagSource("default", "istio-system", old), {})
    assert (state(tag=back).phase, state(tag=back).holder) == ("canary", "default")
    assert state(tag=tag, others=[], default_injector=None).phase == "finished"
    assert state(canary=None).phase == "none"
    off = {**old, "webhooks": deactivated_webhooks(old)}
    assert state(default_injector=off).holder is None  # switched off, and no tag
    assert state(tag=tag).to_json()["defaultTag"] == "1-30-3"
    assert state(tag=tag).problems() == []
    assert state(tag=tag).lines() == [
        "canary upgrade: promoted (revision 1-30-3)",
        "  default tag: 1-30-3",
        "  revision 1-30-3: istiod ?, release - (canary)",
        "  revision default: istiod ?, release -",
    ]
    assert state(canary=None).lines() == []  # nothing to show without a canary or a tag
    lost = state(tag=tag, canary=None)  # its istiod removed by hand
    assert "points at revision 1-30-3, which has no istiod" in lost.problems()[0]


def test_one_parser_of_a_sidecars_revision() -> None:
    """The injector's status annotation names the revision; without it in there, the Pod's
    istio.io/rev label (which Istio's templates set to the injecting revision)."""
    from kymamesh.istio.revisions import sidecar_revision

    def pod(status: str | None, labels: dict[str, str] | None = None) -> dict[str, Any]:
        annotations = {} if status is None else {"sidecar.istio.io/status": status}
        return {"metadata": {"annotations": annotations, "labels": labels or {}}}

    canary = {"istio.io/rev": "canary"}
    assert sidecar_revision(pod(None, canary)) is None  # no sidecar the injector put there
    assert sidecar_revision(pod('{"revision": "1-30-3"}', canary)) == "1-30-3"
    assert sidecar_revision(pod('{"revision": ""}', canary)) == "canary"
    assert sidecar_revision(pod("not json", canary)) == "canary"
    assert sidecar_revision(pod("[1]", canary)) == "canary"
    assert sidecar_revision(pod("{}")) == "default"
    assert sidecar_revision(pod("")) == "default"
