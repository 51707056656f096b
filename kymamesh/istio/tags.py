"""Istio's default revision tag: pure logic (which revision injects a Pod under it:
`kymamesh.istio.revisions`).

A canary upgrade runs two istiod revisions side by side. Which one injects the
Pods that ask for "the default" (namespace `istio-injection=enabled`, namespace
or Pod `istio.io/rev=default`, Pod `sidecar.istio.io/inject=true`) is decided by
the *default tag*: the MutatingWebhookConfiguration `istio-revision-tag-default`,
labelled `istio.io/tag=default` and `istio.io/rev=<the revision it points at>`,
whose webhooks call that revision's istiod. This is how Istio's own tooling
(`istioctl tag set default`, the istiod chart's `revisionTags`) shapes it. While
the tag exists, the webhooks of the unnamed revision's own injector
(`istio-sidecar-injector`) are switched off with a selector that never matches
(`istio.io/deactivated: never-match`), as istioctl does, so that one revision,
not two, injects a Pod.

kymamesh builds the tag from the injector webhook of the revision it points at:
the same client configuration (Service `istiod-REV`, path, CA bundle), rules and
policies, with the selectors Istio gives the default tag. Nothing here reads a
chart: it works on whatever chart rendered that injector webhook.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kymamesh.istio.controlplane import (
    DEFAULT_REVISION,
    INJECT_LABEL,
    INJECTION_LABEL,
    INJECTOR_CONFIGMAP,
    REVISION_LABEL,
    suffix_of,
)
from kymamesh.istio.versions import Version

WEBHOOK_API = "admissionregistration.k8s.io/v1"
MUTATING = "MutatingWebhookConfiguration"
TAG_LABEL = "istio.io/tag"
DEFAULT_TAG = "default"
TAG_WEBHOOK = "istio-revision-tag-default"
DEACTIVATED_LABEL = "istio.io/deactivated"
NEVER_MATCH: Mapping[str, Any] = {"matchLabels": {DEACTIVATED_LABEL: "never-match"}}
HOOK_SUFFIX = "sidecar-injector.istio.io"

_NOT_DISABLED = {"key": INJECT_LABEL, "operator": "NotIn", "values": ["false"]}
_NO_INJECTION_LABEL = {"key": INJECTION_LABEL, "operator": "DoesNotExist"}
_NO_REV_LABEL = {"key": REVISION_LABEL, "operator": "DoesNotExist"}
_TAGGED = {"key": REVISION_LABEL, "operator": "In", "values": [DEFAULT_TAG]}

# The webhooks of the default tag, by name prefix: (namespace selector, object selector),
# as Istio's chart renders them for the tag `default`.
TAG_SELECTORS: tuple[tuple[str, list[Mapping[str, Any]], list[Mapping[str, Any]]], ...] = (
    ("rev.namespace.", [_TAGGED, _NO_INJECTION_LABEL], [_NOT_DISABLED]),
    ("rev.object.", [_NO_REV_LABEL, _NO_INJECTION_LABEL], [_NOT_DISABLED, _TAGGED]),
    (
        "namespace.",
        [{"key": INJECTION_LABEL, "operator": "In", "values": ["enabled"]}],
        [_NOT_DISABLED],
    ),
    (
        "object.",
        [_NO_INJECTION_LABEL, _NO_REV_LABEL],
        [{"key": INJECT_LABEL, "operator": "In", "values": ["true"]}, _NO_REV_LABEL],
    ),
)
# Fields of a webhook that its istiod (the CA bundle) or the API server (defaults) own:
# not compared when judging whether the tag is as wanted.
_OWNED_ELSEWHERE = ("caBundle",)


def revision_name(version: Version) -> str:
    """The revision a canary of this Istio version gets: 1.30.3 -> `1-30-3`."""
    return f"{version.major}-{version.minor}-{version.patch}"


def istiod_release_name(revision: str) -> str:
    """The Helm release of a canary revision, named like its Deployment: `istiod-1-30-3`."""
    return f"istiod{suffix_of(revision)}"


def tag_webhook_name(namespace: str) -> str:
    """`istio-revision-tag-default`, with `-NAMESPACE` outside istio-system (as Istio names it)."""
    return TAG_WEBHOOK if namespace == "istio-system" else f"{TAG_WEBHOOK}-{namespace}"


def injector_webhook_name(revision: str, namespace: str) -> str:
    """The injector MutatingWebhookConfiguration a revision's istiod chart renders."""
    base = INJECTOR_CONFIGMAP + suffix_of(revision)
    return base if namespace == "istio-system" else f"{base}-{namespace}"


def labels_of(obj: Mapping[str, Any] | None) -> dict[str, str]:
    return dict(((obj or {}).get("metadata") or {}).get("labels") or {})


def tag_revision(tag: Mapping[str, Any] | None) -> str | None:
    """The revision a default-tag webhook points at (None: no tag)."""
    if not tag:
        return None
    return labels_of(tag).get(REVISION_LABEL) or DEFAULT_REVISION


def is_deactivated(hook: Mapping[str, Any]) -> bool:
    return (hook.get("namespaceSelector") or {}) == NEVER_MATCH and (
        hook.get("objectSelector") or {}
    ) == NEVER_MATCH


def injector_webhooks(config: Mapping[str, Any] | None) -> list[Mapping[str, Any]]:
    """The sidecar-injector webhooks of a MutatingWebhookConfiguration."""
    return [
        h
        for h in (config or {}).get("webhooks") or []
        if str(h.get("name") or "").endswith(HOOK_SUFFIX)
    ]


def all_deactivated(config: Mapping[str, Any] | None) -> bool:
    hooks = injector_webhooks(config)
    return bool(hooks) and all(is_deactivated(h) for h in hooks)


def deactivated_webhooks(config: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The webhooks of `config` with every injector webhook switched off (never matches)."""
    result = []
    for hook in config.get("webhooks") or []:
        hook = copy.deepcopy(dict(hook))
        if str(hook.get("name") or "").endswith(HOOK_SUFFIX):
            hook["namespaceSelector"] = copy.deepcopy(dict(NEVER_MATCH))
            hook["objectSelector"] = copy.deepcopy(dict(NEVER_MATCH))
        result.append(hook)
    return result


@dataclass(frozen=True)
class TagSource:
    """The revision the tag is to point at, and its injector webhook configuration."""

    revision: str
    namespace: str
    injector: Mapping[str, Any]  # the live MutatingWebhookConfiguration of that revision


def wanted_tag(source: TagSource, managed_by: Mapping[str, str]) -> dict[str, Any]:
    """The default tag pointing at `source.revision`, built from its injector webhook.

    Every webhook of the tag copies the client configuration (with the CA bundle
    istiod patched in), rules, policies and timeouts of the revision's first injector
    webhook, and takes the selectors Istio gives the default tag.
    """
    hooks = injector_webhooks(source.injector)
    if not hooks:
        name = source.injector["metadata"]["name"]
        raise ValueError(f"{MUTATING} {name} has no injector webhook")
    model = hooks[0]
    webhooks = []
    for prefix, namespace_selector, object_selector in TAG_SELECTORS:
        hook = {k: copy.deepcopy(v) for k, v in model.items()}
        hook["name"] = prefix + HOOK_SUFFIX
        hook["namespaceSelector"] = {"matchExpressions": copy.deepcopy(namespace_selector)}
        hook["objectSelector"] = {"matchExpressions": copy.deepcopy(object_selector)}
        webhooks.append(hook)
    return {
        "apiVersion": WEBHOOK_API,
        "kind": MUTATING,
        "metadata": {
            "name": tag_webhook_name(source.namespace),
            "labels": {
                TAG_LABEL: DEFAULT_TAG,
                REVISION_LABEL: source.revision,
                "app": "sidecar-injector",
                **managed_by,
            },
        },
        "webhooks": webhooks,
    }


def _comparable(hook: Mapping[str, Any]) -> dict[str, Any]:
    result = copy.deepcopy(dict(hook))
    client = dict(result.get("clientConfig") or {})
    for key in _OWNED_ELSEWHERE:
        client.pop(key, None)
    result["clientConfig"] = client
    return result


def tag_differences(live: Mapping[str, Any] | None, wanted: Mapping[str, Any]) -> list[str]:
    """What differs between the live default tag and the wanted one ([] when the same).

    The CA bundle is istiod's to write and is not compared."""
    if live is None:
        return [f"create {MUTATING} {wanted['metadata']['name']}"]
    found = []
    want_labels = labels_of(wanted)
    have_labels = labels_of(live)
    for key, value in want_labels.items():
        if have_labels.get(key) != value:
            found.append(f"label {key}: {have_labels.get(key)!r} -> {value!r}")
    have = {str(h.get("name")): _comparable(h) for h in live.get("webhooks") or []}
    want = {str(h.get("name")): _comparable(h) for h in wanted.get("webhooks") or []}
    if have != want:
        changed = sorted(n for n in set(have) | set(want) if have.get(n) != want.get(n))
        found.append("webhooks " + ", ".join(changed))
    return found
