"""The patch settings kymamesh remembers in the cluster.

A user who installs with `--domain example.com` or a `--config` that raises the
sidecar memory limit expects a later `kymamesh patch`, `install` or `status`
without those flags to keep them, not to put the defaults back. So after a run
that applied the patch, the settings the user gave (merged over the ones stored
before) are kept in ConfigMap `istio-system/kymamesh-settings`, and every
command starts from them: defaults < remembered < `--config` < flags.

Paths of a user's certificate and key are not remembered (they name files on one
machine); the certificate itself lives in its Secret, and the TLS step keeps it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import yaml

from kymamesh import owned_configmap
from kymamesh.adapters.cluster import Cluster, Ref
from kymamesh.errors import PreconditionError, yaml_problem
from kymamesh.istio.values import deep_merge

NAME = "kymamesh-settings"
KEY = "settings.yaml"
_NOT_REMEMBERED = {
    "ingress-gateway-tls": ("certFile", "keyFile"),
    "restart-proxies": ("restart", "batchSize"),  # how to restart is for one run
    "remove-legacy-addons": ("deleteVolumeClaims",),  # a yes to losing data is for one run
}

Overrides = dict[str, dict[str, Any]]


def ref(namespace: str) -> Ref:
    return Ref("v1", "ConfigMap", NAME, namespace)


def load(cluster: Cluster, namespace: str) -> Overrides:
    """The remembered settings; {} when there are none (or the namespace does not exist)."""
    return _parse(cluster.get(ref(namespace)), namespace)


def _parse(live: Mapping[str, Any] | None, namespace: str) -> Overrides:
    if not live:
        return {}
    text = (live.get("data") or {}).get(KEY) or ""
    hint = (
        f"fix or delete it (kubectl -n {namespace} delete configmap {NAME}); "
        "then give the settings again"
    )
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise PreconditionError(
            f"ConfigMap {ref(namespace)} key {KEY} is not valid YAML: {yaml_problem(exc)}",
            hint=hint,
        ) from None
    steps = raw.get("steps", {}) if isinstance(raw, dict) else None
    steps = {} if steps is None else steps
    bad = (
        f"a YAML {type(raw).__name__}"
        if not isinstance(raw, dict)
        else f"`steps` is a YAML {type(steps).__name__}"
        if not isinstance(steps, dict)
        else next(
            (
                f"steps.{k} is a YAML {type(v).__name__}"
                for k, v in steps.items()
                if not isinstance(v, dict)
            ),
            None,
        )
    )
    if bad is not None:
        raise PreconditionError(
            f"ConfigMap {ref(namespace)} key {KEY} is not `steps: {{STEP: {{PARAM: VALUE}}}}` "
            f"(found {bad})",
            hint=hint,
        )
    return {str(k): dict(v) for k, v in steps.items()}


def effective(remembered: Mapping[str, Any], given: Mapping[str, Any]) -> Overrides:
    """What a run uses: the remembered settings with the ones given now on top."""
    return {k: dict(v) for k, v in deep_merge(remembered, given).items()}


def to_remember(merged: Mapping[str, Mapping[str, Any]]) -> Overrides:
    result: Overrides = {}
    for step, params in merged.items():
        kept = {k: v for k, v in params.items() if k not in _NOT_REMEMBERED.get(step, ())}
        if kept:
            result[step] = kept
    return result


def desired(namespace: str, settings: Overrides) -> dict[str, Any]:
    body = yaml.safe_dump({"steps": settings}, sort_keys=True)
    return owned_configmap(NAME, namespace, {KEY: body})


def differs(cluster: Cluster, namespace: str, settings: Overrides) -> bool:
    """Whether storing `settings` would change anything (no ConfigMap is made for none)."""
    live = cluster.get(ref(namespace))
    if live is None:
        return bool(settings)
    return _parse(live, namespace) != settings


def remember(cluster: Cluster, namespace: str, settings: Overrides) -> None:
    cluster.apply(desired(namespace, settings))
