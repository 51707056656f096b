"""Steps 2 and 3: the sidecar injector's settings in ConfigMap `istio-sidecar-injector`.

istiod re-reads the ConfigMap by itself; Pods injected from then on get the new
resources and policy (running ones keep theirs until re-created, see step 8).
A Helm upgrade of istiod rewrites the ConfigMap from the chart, and the next
patch run puts these settings back: by design, the chart stays unmodified.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from typing import Any, ClassVar

from kymamesh.errors import PreconditionError, UsageError
from kymamesh.istio import controlplane
from kymamesh.istio.controlplane import ControlPlane
from kymamesh.istio.release import catalog
from kymamesh.steps._configmaps import (
    INJECTOR_CONFIGMAP,
    Editor,
    KeyEdit,
    dump_json,
    dump_yaml,
    key_changes,
    parse_json_map,
    parse_yaml_map,
    plane_key_changes,
)
from kymamesh.steps.base import ONCE_CONFIG_WRITTEN, Change, StepContext
from kymamesh.units import quantity, same_resources

VALUES_KEY = "values"
CONFIG_KEY = "config"
POLICIES = ("enabled", "disabled")

# params name -> the key under `global` in the injector's values
_RESOURCE_KEYS = (("proxy", "proxy"), ("proxyInit", "proxy_init"))


def wanted_resources(params: Mapping[str, Any], name: str) -> dict[str, dict[str, Any]] | None:
    """The resources block a param names, without null entries; None when not managed."""
    raw = params.get(name)
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        raise UsageError(f"sidecar-resources: `{name}` must be a map with requests and limits")
    result: dict[str, dict[str, Any]] = {}
    for section, entries in raw.items():
        if entries is None:
            continue
        if section not in ("requests", "limits") or not isinstance(entries, Mapping):
            raise UsageError(
                f"sidecar-resources: `{name}.{section}` is not a requests or limits map",
                hint="write e.g. `proxy: {limits: {memory: 1024Mi}}`",
            )
        kept = {str(k): v for k, v in entries.items() if v is not None}
        for resource, value in kept.items():
            try:
                amount = quantity(value)
            except UsageError as exc:
                raise UsageError(
                    f"sidecar-resources: {name}.{section}.{resource}: {exc.message}", exc.hint
                ) from None
            if amount < 0:
                raise UsageError(
                    f"sidecar-resources: {name}.{section}.{resource} is {value}, below zero",
                    hint="Kubernetes refuses negative requests and limits; write e.g. 128Mi",
                )
        if kept:
            result[str(section)] = kept
    requests = result.get("requests", {})
    limits = result.get("limits", {})
    for resource, request in requests.items():
        if resource in limits and quantity(request) > quantity(limits[resource]):
            raise UsageError(
                f"sidecar-resources: {name} requests {resource} {request} above its limit "
                f"{limits[resource]}",
                hint="Kubernetes refuses such Pods; lower the request or raise the limit",
            )
    return result


def describe_resources(resources: Mapping[str, Mapping[str, Any]]) -> str:
    parts = []
    for section in ("limits", "requests"):
        entries = resources.get(section) or {}
        if entries:
            parts.append(section + " " + " ".join(f"{k}={v}" for k, v in entries.items()))
    return ", ".join(parts) or "none"


def resources_editor(wanted: Mapping[str, Mapping[str, Any] | None]) -> Editor:
    """Sets global.<key>.resources in the injector's values JSON; keeps everything else."""

    def edit(text: str) -> KeyEdit | None:
        values = parse_json_map(text, f"ConfigMap {INJECTOR_CONFIGMAP} key `{VALUES_KEY}`")
        summaries = []
        for key, resources in wanted.items():
            if resources is None:
                continue
            glob = values.get("global")
            section = glob.get(key) if isinstance(glob, dict) else None
            if isinstance(section, dict) and same_resources(section.get("resources"), resources):
                continue
            if not isinstance(glob, dict):
                glob = values["global"] = {}
            if not isinstance(glob.get(key), dict):
                glob[key] = {}
            glob[key]["resources"] = copy.deepcopy(dict(resources))
            summaries.append(f"global.{key}.resources: {describe_resources(resources)}")
        if not summaries:
            return None
        return KeyEdit(dump_json(values), tuple(summaries))

    return edit


class SidecarResourcesStep:
    """Every injected sidecar (and its init container) gets requests and a memory limit."""

    PARAMS: ClassVar[frozenset[str]] = frozenset({"proxy", "proxyInit"})
    RUNS_ONCE: ClassVar[str] = ONCE_CONFIG_WRITTEN

    def _wanted(self, ctx: StepContext) -> dict[str, dict[str, dict[str, Any]] | None]:
        return {key: wanted_resources(ctx.params, name) for name, key in _RESOURCE_KEYS}

    def preflight(self, ctx: StepContext) -> str | None:
        self._wanted(ctx)  # refuse bad quantities before anything is written
        return None

    def check(self, ctx: StepContext) -> list[Change]:
        return key_changes(
            ctx,
            INJECTOR_CONFIGMAP,
            VALUES_KEY,
            resources_editor(self._wanted(ctx)),
            lambda text: parse_json_map(text, VALUES_KEY),
        )


def set_top_level_key(text: str, key: str, value: str) -> str:
    """Set one top-level scalar of a YAML document, keeping every other byte when it can.

    The injector's `config` holds the injection templates as multi-line strings;
    rewriting the whole document would restyle them. The line edit is verified by
    parsing; when the document has no editable line for it, it is re-written whole.
    """
    before = parse_yaml_map(text, f"key `{CONFIG_KEY}`")
    wanted = dict(before)
    wanted[key] = value
    matches = list(_top_level_line(key).finditer(text))
    candidates = []
    if len(matches) == 1:
        match = matches[0]
        line = f"{key}:{match['space'] or ' '}{value}{match['rest']}"
        candidates.append(text[: match.start()] + line + text[match.end() :])
    elif not matches and key not in before:
        candidates.append(
            text + ("" if text.endswith("\n") or not text else "\n") + f"{key}: {value}\n"
        )
    for candidate in candidates:
        try:
            if parse_yaml_map(candidate, "") == wanted:
                return candidate
        except PreconditionError:
            continue
    return dump_yaml(wanted)


def _top_level_line(key: str) -> re.Pattern[str]:
    """`key: scalar  # comment` at column 0: a top-level key, not a line inside a template."""
    return re.compile(
        rf"^{re.escape(key)}:(?P<space>[ \t]*)(?P<value>\"[^\"\n]*\"|'[^'\n]*'|[^\s#]*)"
        r"(?P<rest>[ \t]*(?:#.*)?)$",
        re.MULTILINE,
    )


def policy_editor(policy: str) -> Editor:
    def edit(text: str) -> KeyEdit | None:
        config = parse_yaml_map(text, f"ConfigMap {INJECTOR_CONFIGMAP} key `{CONFIG_KEY}`")
        current = config.get("policy")
        if current == policy:
            return None
        return KeyEdit(
            set_top_level_key(text, "policy", policy),
            (f"injection policy {current or 'unset'} -> {policy}",),
        )

    return edit


class InjectionPolicyStep:
    """Opt-in injection: with policy `disabled`, only Pods labelled
    `sidecar.istio.io/inject: "true"` in an `istio-injection=enabled` namespace get a sidecar."""

    PARAMS: ClassVar[frozenset[str]] = frozenset({"policy"})
    RUNS_ONCE: ClassVar[str] = ONCE_CONFIG_WRITTEN

    @staticmethod
    def _policy(ctx: StepContext) -> str:
        policy = str(ctx.params.get("policy", "disabled"))
        if policy not in POLICIES:
            raise UsageError(
                f"injection-policy: policy '{policy}' is not one of {', '.join(POLICIES)}"
            )
        return policy

    def preflight(self, ctx: StepContext) -> str | None:
        self._policy(ctx)
        return None

    def check(self, ctx: StepContext) -> list[Change]:
        return key_changes(
            ctx,
            INJECTOR_CONFIGMAP,
            CONFIG_KEY,
            policy_editor(self._policy(ctx)),
            lambda text: parse_yaml_map(text, CONFIG_KEY),
        )


# the injector's image settings that may name a registry: global.hub, and a full image
# reference in global.proxy.image / global.proxy_init.image
_IMAGE_KEYS = ("proxy", "proxy_init")


def hub_editor(wanted: str | None, fallback: str) -> Editor:
    """Sets global.hub to `wanted`; without one, moves a hub (or a full proxy image) off a
    switched-off registry to `fallback` and leaves any other hub (a user's mirror) alone."""

    def edit(text: str) -> KeyEdit | None:
        values = parse_json_map(text, f"ConfigMap {INJECTOR_CONFIGMAP} key `{VALUES_KEY}`")
        glob = values.get("global")
        if not isinstance(glob, dict):
            glob = values["global"] = {}
        summaries = []
        current = glob.get("hub")
        target = wanted or (fallback if catalog().retired_registry(str(current or "")) else None)
        if target and current != target:
            glob["hub"] = target
            summaries.append(f"global.hub {current or 'unset'} -> {target}")
        for key in _IMAGE_KEYS:
            section = glob.get(key)
            image = section.get("image") if isinstance(section, dict) else None
            retired = catalog().retired_registry(image) if isinstance(image, str) else None
            if isinstance(section, dict) and isinstance(image, str) and retired:
                section["image"] = (target or fallback) + image[len(retired) :]
                summaries.append(f"global.{key}.image {image} -> {section['image']}")
        if not summaries:
            return None
        return KeyEdit(dump_json(values), tuple(summaries))

    return edit


class ImageHubStep:
    """Sidecars from where Istio's images live: the injector's hub is the one asked for
    (`hub`, set by --hub) or, by default, never a registry Istio has switched off (it
    moves to the catalog's hub for the revision's Istio minor). Running sidecars keep
    their image until restarted (step restart-proxies lists them)."""

    PARAMS: ClassVar[frozenset[str]] = frozenset({"hub"})
    RUNS_ONCE: ClassVar[str] = ONCE_CONFIG_WRITTEN

    @staticmethod
    def _wanted(ctx: StepContext) -> str | None:
        hub = ctx.params.get("hub")
        if hub is None:
            return None
        if not isinstance(hub, str) or not hub.strip():
            raise UsageError(
                "sidecar-image-hub: `hub` must be a registry path such as docker.io/istio"
            )
        if catalog().retired_registry(hub):
            raise UsageError(
                f"sidecar-image-hub: hub {hub} is a registry Istio has switched off",
                hint="use docker.io/istio or a mirror of it",
            )
        return hub.strip().rstrip("/")

    def preflight(self, ctx: StepContext) -> str | None:
        self._wanted(ctx)
        return None

    def check(self, ctx: StepContext) -> list[Change]:
        wanted = self._wanted(ctx)
        table = catalog()

        def editor_for(plane: ControlPlane) -> Editor:
            version = controlplane.istiod_version(plane.deployment) if plane.deployment else None
            line = table.line_of(version) if version else None
            default = table.resolve(None).line
            return hub_editor(wanted, (line or default).hub)

        return plane_key_changes(
            ctx,
            INJECTOR_CONFIGMAP,
            VALUES_KEY,
            editor_for,
            lambda text: parse_json_map(text, VALUES_KEY),
        )
